//! The human summary of a run: each eBPF number beside its `/proc` ground
//! truth and their difference, the requests, one row per phase, and k6's
//! client-side numbers beside the agent's. Each part is one function.

use std::fmt::Write as _;

use super::{RunReport, dropped_events};
use crate::{
    percentile::Percentiles,
    phases::PhaseReport,
    probes::stats::FLOOR_PROGRAM,
    procfs,
    units::{human_bytes, human_ns, relative_diff},
};

/// The whole summary.
pub fn render(r: &RunReport) -> String {
    let mut out = String::new();
    header(&mut out, r);
    ground_truth_table(&mut out, r);
    requests(&mut out, r);
    super::delivery::summary(&mut out, r);
    kernel_events(&mut out, r);
    program_costs(&mut out, r);
    if !r.phases.is_empty() {
        out.push_str(&phase_table(&r.phases));
    }
    if r.phases.iter().any(|p| p.client.is_some()) {
        out.push_str(&client_table(&r.phases));
    }
    load_totals(&mut out, r);
    out
}

/// Who was measured, for how long, how the run ended; the startup milestones.
fn header(out: &mut String, r: &RunReport) {
    let _ = writeln!(
        out,
        "perf-agent: pid {} ({}), window {}, {}{}",
        r.pid,
        r.comm,
        human_ns(r.window.duration_ns as f64),
        r.end.describe(),
        r.target_status.as_ref().map_or(String::new(), |s| format!("; target {s}"))
    );
    let Some(s) = &r.startup else { return };
    let steps: Vec<String> = s
        .durations()
        .iter()
        .map(|(id, ns)| {
            format!("{} {}", id.trim_start_matches("startup/to_"), human_ns(*ns as f64))
        })
        .collect();
    let _ = writeln!(
        out,
        "startup from exec: {}{}",
        if steps.is_empty() { "no milestone reached".into() } else { steps.join(" → ") },
        if s.listen_ns.is_some() { format!(" (port {})", s.listen_port) } else { String::new() }
    );
}

/// CPU, memory and faults: the agent's number, `/proc`'s, their difference.
fn ground_truth_table(out: &mut String, r: &RunReport) {
    let w = &r.window;
    let _ = writeln!(
        out,
        "{:<22} {:>14}  {:>22}  {:>9}",
        "metric", "agent (eBPF)", "ground truth (/proc)", "diff"
    );
    let mut row = |name: &str, agent: String, truth: String, d: String| {
        let _ = writeln!(out, "{name:<22} {agent:>14}  {truth:>22}  {d:>9}");
    };
    row(
        "cpu/percent",
        format!("{:.2} %", w.cpu_percent),
        format!("{:.2} % stat", w.proc_cpu_percent),
        diff_beyond(
            w.cpu_percent,
            w.proc_cpu_percent,
            proc_cpu_resolution_ns() * 100.0 / w.duration_ns.max(1) as f64,
        ),
    );
    row(
        "cpu/time",
        human_ns(w.cpu_ns as f64),
        format!("{} utime+stime", human_ns(w.proc_cpu_ns as f64)),
        diff_beyond(w.cpu_ns as f64, w.proc_cpu_ns as f64, proc_cpu_resolution_ns()),
    );
    row(
        "memory/rss",
        human_bytes(w.rss_bytes),
        format!("{} VmRSS", human_bytes(w.proc_rss_bytes)),
        relative_diff(w.rss_bytes as f64, w.proc_rss_bytes as f64),
    );
    row(
        "memory/peak_rss",
        human_bytes(w.peak_rss_bytes),
        format!("{} VmHWM", human_bytes(w.proc_hwm_bytes)),
        String::new(), // VmHWM is the lifetime peak, not the window's.
    );
    row(
        "memory/page_faults",
        w.page_faults().to_string(),
        format!("{} min+majflt", w.proc_page_faults()),
        relative_diff(w.page_faults() as f64, w.proc_page_faults() as f64),
    );
    row(
        "  minor / major",
        format!("{} / {}", w.minor_faults, w.major_faults),
        format!("{} / {}", w.proc_minor_faults, w.proc_major_faults),
        String::new(),
    );
    if out.contains(WITHIN_RESOLUTION) {
        let _ = writeln!(
            out,
            "  ({WITHIN_RESOLUTION}: within /proc's resolution: utime and stime each count \
             whole {:.0} ms clock ticks, so a window's CPU time is off by up to {:.0} ms)",
            proc_cpu_resolution_ns() / 2e6,
            proc_cpu_resolution_ns() / 1e6
        );
    }
}

/// What a window's `/proc` CPU time can be off by: utime and stime each
/// count whole clock ticks (truncated), at both ends of the window.
fn proc_cpu_resolution_ns() -> f64 {
    2e9 / procfs::clock_ticks_per_sec() as f64
}

/// [`relative_diff`], unless agent and truth differ by no more than the
/// ground truth's own `resolution`: then "within res".
fn diff_beyond(agent: f64, truth: f64, resolution: f64) -> String {
    if (agent - truth).abs() <= resolution {
        return WITHIN_RESOLUTION.into();
    }
    relative_diff(agent, truth)
}

const WITHIN_RESOLUTION: &str = "within res";

fn percentiles_row(p: &Percentiles) -> String {
    format!("p50 {}  p95 {}  p99 {}", human_ns(p.p50), human_ns(p.p95), human_ns(p.p99))
}

/// Requests, errors, latency and, for a proxy, upstream calls and overhead.
fn requests(out: &mut String, r: &RunReport) {
    let (q, resets) = (&r.requests, r.window.resets);
    let _ = writeln!(
        out,
        "requests: {} ({:.1}/s), errors {} (4xx {}, 5xx {}, resets {}), {} in flight at the end",
        q.count,
        if q.rps.is_finite() { q.rps } else { 0.0 },
        q.http_errors() + resets,
        q.status_4xx,
        q.status_5xx,
        resets,
        r.in_flight
    );
    if q.count > 0 {
        let _ = writeln!(out, "  latency   {}", percentiles_row(&q.latency));
        let _ = writeln!(out, "  ttfb      {}", percentiles_row(&q.ttfb));
    }
    if q.upstream_calls > 0 {
        let _ = writeln!(
            out,
            "  upstream  {}  ({} calls)",
            percentiles_row(&q.upstream),
            q.upstream_calls
        );
        let _ = writeln!(
            out,
            "  overhead  {}  ({} proxied requests)",
            percentiles_row(&q.overhead),
            q.with_upstream
        );
    }
}

/// Connections by kind, dropped events, and what the hooks saw.
fn kernel_events(out: &mut String, r: &RunReport) {
    let n = &r.kernel.net.stats;
    let m = &r.kernel.memory;
    let _ = writeln!(
        out,
        "connections: {} inbound, {} outbound, {} opened before attach; dropped events {}",
        n.inbound_conns,
        n.outbound_conns,
        n.adopted_conns,
        dropped_events(r)
    );
    // Which losses, when there are any: a recursion miss (a program the
    // kernel skipped because it was already running on that CPU) and a full
    // ring call for different remedies.
    let misses: Vec<String> = r
        .programs
        .iter()
        .filter(|p| p.recursion_misses > 0 && p.name != FLOOR_PROGRAM)
        .map(|p| format!("{} {}", p.name, p.recursion_misses))
        .collect();
    if dropped_events(r) > 0 {
        let _ = writeln!(
            out,
            "  dropped: {} lost in the kernel (ring full, storage or map full), {} rejected, \
             recursion misses: {}",
            r.window.lost_events,
            r.rejected_events,
            if misses.is_empty() { "none".to_string() } else { misses.join(", ") }
        );
    }
    let _ = writeln!(
        out,
        "events: {} rss_stat from the target, {} from other contexts \
         (+{} ignored before the target's mm was known)",
        m.own_updates, m.foreign_updates, m.unattributed,
    );
}

/// Each program's mean cost and run count, while `kernel.bpf_stats_enabled`
/// counts them, and the statistics' own cost (the floor program).
fn program_costs(out: &mut String, r: &RunReport) {
    let costs: Vec<String> = r
        .programs
        .iter()
        .filter(|p| p.run_count > 0)
        .map(|p| format!("{} {:.0} ns × {}", p.name, p.ns_per_run(), p.run_count))
        .collect();
    if costs.is_empty() {
        return;
    }
    let _ = writeln!(out, "program cost (kernel.bpf_stats_enabled): {}", costs.join(", "));
    if let Some(floor) = r.programs.iter().find(|p| p.name == FLOOR_PROGRAM) {
        let _ = writeln!(
            out,
            "  ({} is an empty program: {:.0} ns per run is the statistics' own cost, \
             included in every number above)",
            floor.name,
            floor.ns_per_run()
        );
    }
}

/// k6's total against the agent's, and which phase stands for "under load".
fn load_totals(out: &mut String, r: &RunReport) {
    if let Some((http_reqs, malformed)) = r.client_total {
        let _ = writeln!(
            out,
            "k6 http_reqs {http_reqs}, agent requests {}{}{}",
            r.requests.count,
            if malformed > 0 {
                format!(", {malformed} malformed k6 result lines skipped")
            } else {
                String::new()
            },
            r.k6_status.as_ref().map_or(String::new(), |s| format!("; {s}"))
        );
    }
    if let Some((name, _)) = &r.canonical {
        let _ = writeln!(out, "under load (latency/*, throughput/*, *_under_load_*): phase {name}");
    }
}

/// k6's client-side numbers beside the agent's server-side ones.
pub fn client_table(phases: &[PhaseReport]) -> String {
    let mut out = String::from(
        "client (k6) vs server (perf-agent): k6 times include the network and k6's own time \
         (tens of µs on loopback, more when k6 itself is busy: its CPU, % of one core, is \
         beside them); the server's start at its first read of the request\n",
    );
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "phase",
        "k6 reqs",
        "agent",
        "k6 cpu %",
        "k6 p50",
        "agent p50",
        "k6 p95",
        "agent p95",
        "k6 p99",
        "agent p99"
    );
    for p in phases {
        let Some(c) = &p.client else { continue };
        let q = &p.requests;
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            p.phase.name,
            c.count,
            q.count,
            c.cpu_percent.map_or("-".into(), |v| format!("{v:.1}")),
            human_ns(c.duration.p50),
            human_ns(q.latency.p50),
            human_ns(c.duration.p95),
            human_ns(q.latency.p95),
            human_ns(c.duration.p99),
            human_ns(q.latency.p99),
        );
    }
    out
}

/// One row per phase: the numbers that explain a load test.
pub fn phase_table(phases: &[PhaseReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>8} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8} {:>10}",
        "phase", "duration", "cpu %", "rss", "requests", "proxied", "rps", "p50", "p99", "errors"
    );
    for p in phases {
        let q = &p.requests;
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>8.1} {:>10} {:>10} {:>8} {:>10.1} {:>10} {:>8} {:>10}",
            format!("{}{}", p.phase.name, if p.truncated { "*" } else { "" }),
            human_ns(p.system.duration_ns as f64),
            p.system.cpu_percent,
            human_bytes(p.system.mean_rss_bytes),
            q.count,
            q.with_upstream,
            if q.rps.is_finite() { q.rps } else { 0.0 },
            human_ns(q.latency.p50),
            human_ns(q.latency.p99),
            q.http_errors() + p.system.resets,
        );
    }
    if phases.iter().any(|p| p.truncated) {
        out.push_str("* the run ended before this phase did\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        outcome::EndReason,
        phases::Phase,
        report::{test_program, test_report},
        requests::RequestLog,
        timeline::WindowStats,
    };

    #[test]
    fn partial_runs_say_so_and_why() {
        let s = render(&test_report(EndReason::Interrupted(libc::SIGINT)));
        assert!(s.contains("PARTIAL") && s.contains("SIGINT"), "{s}");
    }

    #[test]
    fn summary_shows_ground_truth_and_difference() {
        let mut r = test_report(EndReason::Stopped(libc::SIGTERM));
        r.window.proc_cpu_percent = 40.0;
        let s = render(&r);
        assert!(s.contains("+25.00 %"), "{s}");
        assert!(s.contains("complete"), "{s}");
        assert!(!s.contains(WITHIN_RESOLUTION), "{s}");
    }

    /// A startup run: 59 ms against /proc's 50 ms is no error, /proc counts
    /// whole 10 ms ticks; 100 ms against 50 ms is.
    #[test]
    fn cpu_differences_within_procs_ticks_are_not_errors() {
        let mut r = test_report(EndReason::Stopped(libc::SIGTERM));
        (r.window.cpu_ns, r.window.proc_cpu_ns) = (59_000_000, 50_000_000);
        (r.window.cpu_percent, r.window.proc_cpu_percent) = (2.95, 2.5);
        let s = render(&r);
        let cpu_row = s.lines().find(|l| l.starts_with("cpu/time")).unwrap();
        assert!(cpu_row.ends_with(WITHIN_RESOLUTION), "{s}");
        assert!(s.contains("within /proc's") && !s.contains("+18.00 %"), "{s}");
        r.window.cpu_ns = 100_000_000;
        let s = render(&r);
        assert!(s.lines().any(|l| l.starts_with("cpu/time") && l.ends_with("+100.00 %")), "{s}");
    }

    #[test]
    fn program_costs_with_the_floor_explained() {
        let mut r = test_report(EndReason::DurationElapsed);
        let program = test_program;
        r.programs = vec![program("sched_switch", 1000, 180_000), program(FLOOR_PROGRAM, 10, 420)];
        let s = render(&r);
        assert!(s.contains("sched_switch 180 ns × 1000, stats_floor 42 ns × 10"), "{s}");
        assert!(s.contains("stats_floor is an empty program: 42 ns per run"), "{s}");
        assert!(!render(&test_report(EndReason::DurationElapsed)).contains("program cost"));
    }

    #[test]
    fn dropped_events_are_broken_down_only_when_there_are_some() {
        let mut r = test_report(EndReason::DurationElapsed);
        assert!(!render(&r).contains("  dropped:"));
        let mut missed = test_program("inet_sock_set_state", 1000, 0);
        missed.recursion_misses = 5;
        r.programs = vec![missed, test_program("tcp_rcv_space_adjust", 10, 0)];
        r.window.lost_events = 2;
        let s = render(&r);
        assert!(s.contains("dropped events 7"), "{s}");
        assert!(
            s.contains("  dropped: 2 lost in the kernel (ring full, storage or map full), 0 rejected, recursion misses: inet_sock_set_state 5\n"),
            "{s}"
        );
    }

    #[test]
    fn phases_cut_short_are_starred() {
        let phase = |name: &str, truncated| PhaseReport {
            phase: Phase::new(name, 0, 10),
            system: WindowStats::default(),
            requests: RequestLog::default().window(0, 10),
            truncated,
            client: None,
        };
        let t = phase_table(&[phase("idle", false), phase("steady", true)]);
        assert!(t.contains("\nidle ") && t.contains("\nsteady* "), "{t}");
        assert!(t.lines().next().is_some_and(|h| h.contains("requests  proxied")), "{t}");
        assert!(t.ends_with("* the run ended before this phase did\n"), "{t}");
    }
}
