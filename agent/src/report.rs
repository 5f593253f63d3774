//! Turning a run into metrics: the BMF file for CI and the summary table for
//! people, with the `/proc` ground truth beside each kernel number.
//!
//! Metric IDs are stable (CI gates on them); `docs/metrics.md` defines each.

use std::fmt::Write as _;

use crate::{
    bmf::{BmfReport, Measure},
    k6::results::ClientStats,
    percentile::Percentiles,
    phases::PhaseReport,
    probes::{KernelReading, stats::ProgramStats},
    procfs,
    requests::RequestStats,
    session::EndReason,
    startup::Startup,
    timeline::WindowStats,
};

/// Everything a run measured.
pub struct RunReport<'a> {
    pub pid: u32,
    pub comm: &'a str,
    /// The whole run.
    pub window: WindowStats,
    pub requests: RequestStats,
    /// Named phases (startup, idle, k6 stages, ...), each measured alone.
    pub phases: Vec<PhaseReport>,
    /// Milestones, when the target was followed from its exec.
    pub startup: Option<Startup>,
    /// Size of the executable the target runs, bytes.
    pub binary_size: Option<u64>,
    pub kernel: KernelReading,
    /// Requests read but not answered when the run ended.
    pub in_flight: u64,
    /// Events user space refused (inconsistent timestamps).
    pub rejected_events: u64,
    pub programs: Vec<ProgramStats>,
    pub end: EndReason,
    /// The numbers cover less than was asked (interrupted, target gone).
    pub partial: bool,
    /// How a launched target ended.
    pub target_status: Option<String>,
    /// The phase whose numbers stand for "under load" (the longest steady
    /// k6 stage, else the whole load window), with its VU count if known.
    pub canonical: Option<(String, Option<u64>)>,
    /// k6's `http_reqs` count and malformed result lines, when k6 was read.
    pub client_total: Option<(u64, u64)>,
    /// How k6 ended.
    pub k6_status: Option<String>,
}

/// CPU and memory metrics of one window, named `<id><suffix>`.
pub fn add_system_metrics(b: &mut BmfReport, suffix: &str, w: &WindowStats) {
    let id = |name: &str| format!("{name}{suffix}");
    b.add(id("cpu/percent"), Measure::CpuPercent, w.cpu_percent);
    b.add(id("cpu/time"), Measure::CpuTime, w.cpu_ns as f64);
    b.add(id("memory/rss"), Measure::Memory, w.rss_bytes as f64);
    b.add(id("memory/peak_rss"), Measure::Memory, w.peak_rss_bytes as f64);
    b.add(id("memory/page_faults"), Measure::Count, w.page_faults() as f64);
    b.add(id("memory/minor_faults"), Measure::Count, w.minor_faults as f64);
    b.add(id("memory/major_faults"), Measure::Count, w.major_faults as f64);
}

fn add_percentiles(b: &mut BmfReport, prefix: &str, suffix: &str, p: &Percentiles) {
    for name in Percentiles::NAMES {
        b.add(format!("{prefix}{name}{suffix}"), Measure::Latency, p.get(name));
    }
}

/// Request metrics of one window, named `<id><suffix>`. Percentiles of an
/// empty set are left out (not written as 0).
pub fn add_request_metrics(b: &mut BmfReport, suffix: &str, r: &RequestStats, w: &WindowStats) {
    let id = |name: &str| format!("{name}{suffix}");
    b.add(id("requests/count"), Measure::Count, r.count as f64);
    b.add(id("throughput/rps"), Measure::Throughput, r.rps);
    add_percentiles(b, "latency/", suffix, &r.latency);
    add_percentiles(b, "ttfb/", suffix, &r.ttfb);
    b.add(id("errors/count"), Measure::Count, (r.http_errors() + w.resets) as f64);
    b.add(id("errors/http_4xx"), Measure::Count, r.status_4xx as f64);
    b.add(id("errors/http_5xx"), Measure::Count, r.status_5xx as f64);
    b.add(id("errors/resets"), Measure::Count, w.resets as f64);
    b.add(id("upstream/calls"), Measure::Count, r.upstream_calls as f64);
    b.add(id("upstream/resets"), Measure::Count, w.upstream_resets as f64);
    add_percentiles(b, "upstream/latency_", suffix, &r.upstream);
    add_percentiles(b, "overhead/latency_", suffix, &r.overhead);
}

/// The BMF document of a run: whole-run metrics under their plain names,
/// every phase's under `<metric>@<phase>`, and the canonical names users
/// track (`memory/idle_rss`, `cpu/idle_percent`, `startup/*`, ...).
pub fn bmf(r: &RunReport) -> BmfReport {
    let mut b = BmfReport::default();
    add_system_metrics(&mut b, "", &r.window);
    add_request_metrics(&mut b, "", &r.requests, &r.window);
    for p in &r.phases {
        let suffix = format!("@{}", p.phase.name);
        add_system_metrics(&mut b, &suffix, &p.system);
        add_request_metrics(&mut b, &suffix, &p.requests, &p.system);
        if let Some(c) = &p.client {
            add_client_metrics(&mut b, &suffix, c);
        }
        if p.phase.name == "idle" && !p.truncated {
            b.add("memory/idle_rss", Measure::Memory, p.system.mean_rss_bytes as f64);
            b.add("cpu/idle_percent", Measure::CpuPercent, p.system.cpu_percent);
        }
    }
    // Under load: the canonical names take the steady phase's numbers.
    let canonical = r
        .canonical
        .as_ref()
        .and_then(|(name, vus)| r.phases.iter().find(|p| &p.phase.name == name).map(|p| (p, vus)));
    if let Some((p, vus)) = canonical {
        // These plain names are the phase's alone: a whole-run value must not
        // stand in where the phase has none (no upstream calls in it, say).
        let canonical_ids = ["latency/", "ttfb/", "upstream/latency_", "overhead/latency_"];
        b.remove_where(|id| !id.contains('@') && canonical_ids.iter().any(|c| id.starts_with(c)));
        let q = &p.requests;
        add_percentiles(&mut b, "latency/", "", &q.latency);
        add_percentiles(&mut b, "ttfb/", "", &q.ttfb);
        add_percentiles(&mut b, "upstream/latency_", "", &q.upstream);
        add_percentiles(&mut b, "overhead/latency_", "", &q.overhead);
        b.add("throughput/rps", Measure::Throughput, q.rps);
        if let Some(vus) = vus {
            b.add(format!("throughput/rps_{vus}vu"), Measure::Throughput, q.rps);
        }
        b.add("memory/under_load_rss", Measure::Memory, p.system.mean_rss_bytes as f64);
        b.add("cpu/under_load_percent", Measure::CpuPercent, p.system.cpu_percent);
        if let Some(c) = &p.client {
            add_client_metrics(&mut b, "", c);
        }
    }
    if let Some((http_reqs, _)) = r.client_total {
        b.add("client/http_reqs", Measure::Count, http_reqs as f64);
    }
    if let Some(s) = &r.startup {
        for (id, ns) in s.durations() {
            b.add(id, Measure::Latency, ns as f64);
        }
    }
    if let Some(size) = r.binary_size {
        b.add("binary/size", Measure::FileSize, size as f64);
    }
    b.add("agent/window", Measure::Latency, r.window.duration_ns as f64);
    b.add("agent/partial", Measure::Count, if r.partial { 1.0 } else { 0.0 });
    b.add("agent/dropped_events", Measure::Count, dropped_events(r) as f64);
    b
}

/// k6's own numbers for a window, beside the agent's.
fn add_client_metrics(b: &mut BmfReport, suffix: &str, c: &ClientStats) {
    b.add(format!("client/requests{suffix}"), Measure::Count, c.count as f64);
    add_percentiles(b, "client/latency_", suffix, &c.duration);
    add_percentiles(b, "client/ttfb_", suffix, &c.waiting);
}

/// Every event lost between the kernel and the numbers: runs the kernel
/// skipped (recursion misses), event ring or connection table full, and
/// events user space refused. CPU time, RSS and faults are aggregated in
/// fixed per-CPU slots that cannot fill up. (The statistics' calibration
/// program counts nothing, so its misses lose nothing.)
pub fn dropped_events(r: &RunReport) -> u64 {
    r.programs
        .iter()
        .filter(|p| p.name != crate::probes::stats::FLOOR_PROGRAM)
        .map(|p| p.recursion_misses)
        .sum::<u64>()
        + r.window.lost_events
        + r.rejected_events
}

pub fn human_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b as f64 >= 1024.0 * MIB {
        format!("{:.2} GiB", b as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

pub fn human_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// Relative difference of `agent` from `truth`, as text.
fn diff(agent: f64, truth: f64) -> String {
    if truth == 0.0 || !truth.is_finite() || !agent.is_finite() {
        return String::new();
    }
    format!("{:+.2} %", (agent - truth) * 100.0 / truth)
}

/// What a window's `/proc` CPU time can be off by: utime and stime each
/// count whole clock ticks (truncated), at both ends of the window.
fn proc_cpu_resolution_ns() -> f64 {
    2e9 / procfs::clock_ticks_per_sec() as f64
}

/// [`diff`], unless agent and truth differ by no more than the ground
/// truth's own `resolution`: then "within res".
fn diff_beyond(agent: f64, truth: f64, resolution: f64) -> String {
    if (agent - truth).abs() <= resolution {
        return WITHIN_RESOLUTION.into();
    }
    diff(agent, truth)
}

const WITHIN_RESOLUTION: &str = "within res";

fn percentiles_row(p: &Percentiles) -> String {
    format!("p50 {}  p95 {}  p99 {}", human_ns(p.p50), human_ns(p.p95), human_ns(p.p99))
}

/// The human summary of a run.
pub fn summary(r: &RunReport) -> String {
    let w = &r.window;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "perf-agent: pid {} ({}), window {}, {}{}",
        r.pid,
        r.comm,
        human_ns(w.duration_ns as f64),
        r.end.describe(),
        r.target_status.as_ref().map_or(String::new(), |s| format!("; target {s}"))
    );
    if let Some(s) = &r.startup {
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
            if s.listen_ns.is_some() {
                format!(" (port {})", s.listen_port)
            } else {
                String::new()
            }
        );
    }
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
        diff(w.rss_bytes as f64, w.proc_rss_bytes as f64),
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
        diff(w.page_faults() as f64, w.proc_page_faults() as f64),
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
    let q = &r.requests;
    let _ = writeln!(
        out,
        "requests: {} ({:.1}/s), errors {} (4xx {}, 5xx {}, resets {}), {} in flight at the end",
        q.count,
        if q.rps.is_finite() { q.rps } else { 0.0 },
        q.http_errors() + w.resets,
        q.status_4xx,
        q.status_5xx,
        w.resets,
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
    let _ = writeln!(
        out,
        "events: {} sched slices, {} rss_stat from the target, {} from other contexts \
         (+{} ignored before the target's mm was known)",
        r.kernel.cpu.slices, m.own_updates, m.foreign_updates, m.unattributed,
    );
    let costs: Vec<String> = r
        .programs
        .iter()
        .filter(|p| p.run_count > 0)
        .map(|p| format!("{} {:.0} ns × {}", p.name, p.ns_per_run(), p.run_count))
        .collect();
    if !costs.is_empty() {
        let _ = writeln!(out, "program cost (kernel.bpf_stats_enabled): {}", costs.join(", "));
        if let Some(floor) =
            r.programs.iter().find(|p| p.name == crate::probes::stats::FLOOR_PROGRAM)
        {
            let _ = writeln!(
                out,
                "  ({} is an empty program: {:.0} ns per run is the statistics' own cost, \
                 included in every number above)",
                floor.name,
                floor.ns_per_run()
            );
        }
    }
    if !r.phases.is_empty() {
        out.push_str(&phase_table(&r.phases));
    }
    if r.phases.iter().any(|p| p.client.is_some()) {
        out.push_str(&client_table(&r.phases));
    }
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
    out
}

/// k6's client-side numbers beside the agent's server-side ones.
pub fn client_table(phases: &[PhaseReport]) -> String {
    let mut out = String::from(
        "client (k6) vs server (perf-agent): k6 times include the network and the client's own \
         time (tens of µs on loopback); the server's start at its first read of the request\n",
    );
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "phase",
        "k6 reqs",
        "agent",
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
            "{:<20} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            p.phase.name,
            c.count,
            q.count,
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
        "{:<20} {:>9} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10}",
        "phase", "duration", "cpu %", "rss", "requests", "rps", "p50", "p99", "errors"
    );
    for p in phases {
        let q = &p.requests;
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>8.1} {:>10} {:>10} {:>10.1} {:>10} {:>8} {:>10}",
            format!("{}{}", p.phase.name, if p.truncated { "*" } else { "" }),
            human_ns(p.system.duration_ns as f64),
            p.system.cpu_percent,
            human_bytes(p.system.mean_rss_bytes),
            q.count,
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
    use crate::requests::RequestLog;

    fn report(end: EndReason) -> RunReport<'static> {
        RunReport {
            pid: 42,
            comm: "srv",
            window: WindowStats {
                duration_ns: 2_000_000_000,
                cpu_ns: 1_000_000_000,
                cpu_percent: 50.0,
                rss_bytes: 10 << 20,
                peak_rss_bytes: 20 << 20,
                minor_faults: 7,
                major_faults: 1,
                resets: 2,
                ..Default::default()
            },
            requests: RequestLog::default().window(0, 2_000_000_000),
            phases: vec![],
            startup: None,
            binary_size: None,
            kernel: KernelReading::default(),
            in_flight: 0,
            rejected_events: 0,
            programs: vec![],
            end,
            partial: end.is_partial(),
            target_status: None,
            canonical: None,
            client_total: None,
            k6_status: None,
        }
    }

    #[test]
    fn bmf_has_the_plain_attach_names_and_units() {
        let b = bmf(&report(EndReason::DurationElapsed));
        assert_eq!(b.get("cpu/percent", Measure::CpuPercent), Some(50.0));
        assert_eq!(b.get("cpu/time", Measure::CpuTime), Some(1e9));
        assert_eq!(b.get("memory/rss", Measure::Memory), Some((10 << 20) as f64));
        assert_eq!(b.get("memory/peak_rss", Measure::Memory), Some((20 << 20) as f64));
        assert_eq!(b.get("memory/page_faults", Measure::Count), Some(8.0));
        assert_eq!(b.get("agent/partial", Measure::Count), Some(0.0));
        assert_eq!(b.get("requests/count", Measure::Count), Some(0.0));
        assert_eq!(b.get("errors/count", Measure::Count), Some(2.0), "resets are errors");
        assert_eq!(b.get("latency/p50", Measure::Latency), None, "no requests: no percentile");
    }

    #[test]
    fn partial_runs_are_marked() {
        let b = bmf(&report(EndReason::TargetExited));
        assert_eq!(b.get("agent/partial", Measure::Count), Some(1.0));
        let s = summary(&report(EndReason::Interrupted(libc::SIGINT)));
        assert!(s.contains("PARTIAL") && s.contains("SIGINT"), "{s}");
    }

    #[test]
    fn summary_shows_ground_truth_and_difference() {
        let mut r = report(EndReason::Stopped(libc::SIGTERM));
        r.window.proc_cpu_percent = 40.0;
        let s = summary(&r);
        assert!(s.contains("+25.00 %"), "{s}");
        assert!(s.contains("complete"), "{s}");
        assert!(!s.contains(WITHIN_RESOLUTION), "{s}");
    }

    /// A startup run: 59 ms against /proc's 50 ms is no error, /proc counts
    /// whole 10 ms ticks; 100 ms against 50 ms is.
    #[test]
    fn cpu_differences_within_procs_ticks_are_not_errors() {
        let mut r = report(EndReason::Stopped(libc::SIGTERM));
        (r.window.cpu_ns, r.window.proc_cpu_ns) = (59_000_000, 50_000_000);
        (r.window.cpu_percent, r.window.proc_cpu_percent) = (2.95, 2.5);
        let s = summary(&r);
        let cpu_row = s.lines().find(|l| l.starts_with("cpu/time")).unwrap();
        assert!(cpu_row.ends_with(WITHIN_RESOLUTION), "{s}");
        assert!(s.contains("within /proc's") && !s.contains("+18.00 %"), "{s}");
        r.window.cpu_ns = 100_000_000;
        let s = summary(&r);
        assert!(s.lines().any(|l| l.starts_with("cpu/time") && l.ends_with("+100.00 %")), "{s}");
    }

    #[test]
    fn canonical_names_come_from_the_steady_phase_alone() {
        use crate::phases::{Phase, PhaseReport};
        use agent_common::{NetEvent, event_kind};
        let mut whole = RequestLog::default();
        // Before steady: a proxied request (upstream time); in steady: a plain one.
        for (start, end, upstream, kind) in [
            (1, 10, 5, event_kind::REQUEST),
            (1, 6, 0, event_kind::UPSTREAM_CALL),
            (100, 130, 0, event_kind::REQUEST),
        ] {
            whole.push(&NetEvent {
                start_ns: start,
                first_response_ns: start + 1,
                end_ns: end,
                upstream_ns: upstream,
                kind,
                ..Default::default()
            });
        }
        let mut r = report(EndReason::LoadFinished);
        r.requests = whole.window(0, 200);
        r.phases = vec![PhaseReport {
            phase: Phase::new("steady", 50, 200),
            system: WindowStats { cpu_percent: 42.0, ..Default::default() },
            requests: whole.window(50, 200),
            truncated: false,
            client: None,
        }];
        r.canonical = Some(("steady".into(), Some(10)));
        let b = bmf(&r);
        assert_eq!(b.get("latency/p50", Measure::Latency), Some(30.0));
        assert_eq!(b.get("upstream/latency_p50", Measure::Latency), None, "none in steady");
        assert_eq!(b.get("overhead/latency_p50", Measure::Latency), None);
        assert_eq!(b.get("upstream/latency_p50@steady", Measure::Latency), None);
        assert!(b.get("throughput/rps_10vu", Measure::Throughput).is_some());
        assert_eq!(b.get("cpu/under_load_percent", Measure::CpuPercent), Some(42.0));
        assert_eq!(b.get("requests/count", Measure::Count), Some(2.0), "whole run");
    }

    #[test]
    fn request_metrics_with_a_suffix() {
        use agent_common::{NetEvent, event_kind};
        let mut log = RequestLog::default();
        log.push(&NetEvent {
            start_ns: 1,
            first_response_ns: 2,
            end_ns: 11,
            kind: event_kind::REQUEST,
            status: 503,
            ..Default::default()
        });
        let mut b = BmfReport::default();
        add_request_metrics(
            &mut b,
            "@steady",
            &log.window(0, 1_000_000_000),
            &WindowStats::default(),
        );
        assert_eq!(b.get("latency/p99@steady", Measure::Latency), Some(10.0));
        assert_eq!(b.get("errors/http_5xx@steady", Measure::Count), Some(1.0));
        assert_eq!(b.get("throughput/rps@steady", Measure::Throughput), Some(1.0));
    }
}
