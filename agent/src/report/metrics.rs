//! The BMF document of a run: whole-run metrics under their plain names,
//! every phase's under `<metric>@<phase>`, the canonical names users track
//! (`memory/idle_rss`, `latency/p99` under load, `startup/*`, ...) and the
//! agent's own (`agent/*`).

use super::{RunReport, dropped_events};
use crate::{
    bmf::{BmfReport, Measure},
    k6::results::ClientStats,
    percentile::Percentiles,
    phases::PhaseReport,
    probes::stats::ProgramStats,
    requests::RequestStats,
    timeline::WindowStats,
};

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
/// empty set are left out (not written as 0), and so are the delivery
/// numbers unless `delivery` (`--delivery`) measured them.
pub fn add_request_metrics(
    b: &mut BmfReport,
    suffix: &str,
    r: &RequestStats,
    w: &WindowStats,
    delivery: bool,
) {
    let id = |name: &str| format!("{name}{suffix}");
    b.add(id("requests/count"), Measure::Count, r.count as f64);
    b.add(id("requests/proxied"), Measure::Count, r.with_upstream as f64);
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
    super::delivery::add_metrics(b, suffix, delivery.then_some(&r.delivery), w);
}

/// k6's own numbers for a window, beside the agent's.
fn add_client_metrics(b: &mut BmfReport, suffix: &str, c: &ClientStats) {
    b.add(format!("client/requests{suffix}"), Measure::Count, c.count as f64);
    add_percentiles(b, "client/latency_", suffix, &c.duration);
    add_percentiles(b, "client/ttfb_", suffix, &c.waiting);
    if let Some(cpu) = c.cpu_percent {
        b.add(format!("client/cpu_percent{suffix}"), Measure::CpuPercent, cpu);
    }
}

/// Each phase under `<metric>@<phase>`; an idle phase that ran to its end
/// also gives `memory/idle_rss` and `cpu/idle_percent`.
fn add_phase_metrics(b: &mut BmfReport, p: &PhaseReport, delivery: bool) {
    let suffix = format!("@{}", p.phase.name);
    add_system_metrics(b, &suffix, &p.system);
    add_request_metrics(b, &suffix, &p.requests, &p.system, delivery);
    if let Some(c) = &p.client {
        add_client_metrics(b, &suffix, c);
    }
    if p.phase.name == "idle" && !p.truncated {
        b.add("memory/idle_rss", Measure::Memory, p.system.mean_rss_bytes as f64);
        b.add("cpu/idle_percent", Measure::CpuPercent, p.system.cpu_percent);
    }
}

/// Under load: the canonical names take the phase's numbers alone (a
/// whole-run value must not stand in where the phase has none, no upstream
/// calls in it, say), plus `throughput/rps_<N>vu` when its VUs are known.
fn add_canonical_metrics(b: &mut BmfReport, p: &PhaseReport, vus: Option<u64>, delivery: bool) {
    let canonical_ids = ["latency/", "ttfb/", "upstream/latency_", "overhead/latency_"];
    b.remove_where(|id| !id.contains('@') && canonical_ids.iter().any(|c| id.starts_with(c)));
    let q = &p.requests;
    add_percentiles(b, "latency/", "", &q.latency);
    add_percentiles(b, "ttfb/", "", &q.ttfb);
    add_percentiles(b, "upstream/latency_", "", &q.upstream);
    add_percentiles(b, "overhead/latency_", "", &q.overhead);
    if delivery {
        super::delivery::add_percentile_metrics(b, "", &q.delivery);
    }
    b.add("throughput/rps", Measure::Throughput, q.rps);
    if let Some(vus) = vus {
        b.add(format!("throughput/rps_{vus}vu"), Measure::Throughput, q.rps);
    }
    b.add("memory/under_load_rss", Measure::Memory, p.system.mean_rss_bytes as f64);
    b.add("cpu/under_load_percent", Measure::CpuPercent, p.system.cpu_percent);
    if let Some(c) = &p.client {
        add_client_metrics(b, "", c);
    }
}

/// Each program's mean cost per run, `agent/prog_ns/<program>` (ns), and
/// its run count, `agent/prog_runs/<program>`, under the program's name
/// (`sched_switch`, ...; the statistics' floor is `stats_floor`). Only
/// while `kernel.bpf_stats_enabled` counts runs: otherwise nothing.
fn add_program_costs(b: &mut BmfReport, programs: &[ProgramStats]) {
    for p in programs.iter().filter(|p| p.run_count > 0) {
        b.add(format!("agent/prog_ns/{}", p.name), Measure::Latency, p.ns_per_run());
        b.add(format!("agent/prog_runs/{}", p.name), Measure::Count, p.run_count as f64);
    }
}

/// The BMF document of a run.
pub fn document(r: &RunReport) -> BmfReport {
    let mut b = BmfReport::default();
    add_system_metrics(&mut b, "", &r.window);
    add_request_metrics(&mut b, "", &r.requests, &r.window, r.delivery);
    for p in &r.phases {
        add_phase_metrics(&mut b, p, r.delivery);
    }
    let canonical = r
        .canonical
        .as_ref()
        .and_then(|(name, vus)| r.phases.iter().find(|p| &p.phase.name == name).map(|p| (p, vus)));
    if let Some((p, vus)) = canonical {
        add_canonical_metrics(&mut b, p, *vus, r.delivery);
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
    super::delivery::add_run_metrics(&mut b, r);
    add_program_costs(&mut b, &r.programs);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        outcome::EndReason,
        phases::{Phase, PhaseReport},
        report::{test_program, test_report},
        requests::RequestLog,
    };
    use agent_common::{NetEvent, event_kind};

    #[test]
    fn bmf_has_the_plain_attach_names_and_units() {
        let b = document(&test_report(EndReason::DurationElapsed));
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
        let b = document(&test_report(EndReason::TargetExited));
        assert_eq!(b.get("agent/partial", Measure::Count), Some(1.0));
    }

    #[test]
    fn canonical_names_come_from_the_steady_phase_alone() {
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
        let mut r = test_report(EndReason::LoadFinished);
        r.requests = whole.window(0, 200);
        r.phases = vec![PhaseReport {
            phase: Phase::new("steady", 50, 200),
            system: WindowStats { cpu_percent: 42.0, ..Default::default() },
            requests: whole.window(50, 200),
            truncated: false,
            client: None,
        }];
        r.canonical = Some(("steady".into(), Some(10)));
        let b = document(&r);
        assert_eq!(b.get("latency/p50", Measure::Latency), Some(30.0));
        assert_eq!(b.get("upstream/latency_p50", Measure::Latency), None, "none in steady");
        assert_eq!(b.get("overhead/latency_p50", Measure::Latency), None);
        assert_eq!(b.get("upstream/latency_p50@steady", Measure::Latency), None);
        assert!(b.get("throughput/rps_10vu", Measure::Throughput).is_some());
        assert_eq!(b.get("cpu/under_load_percent", Measure::CpuPercent), Some(42.0));
        assert_eq!(b.get("requests/count", Measure::Count), Some(2.0), "whole run");
        assert_eq!(b.get("requests/proxied", Measure::Count), Some(1.0), "whole run");
        assert_eq!(b.get("requests/proxied@steady", Measure::Count), Some(0.0));
    }

    #[test]
    fn request_metrics_with_a_suffix() {
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
            false,
        );
        assert_eq!(b.get("latency/p99@steady", Measure::Latency), Some(10.0));
        assert_eq!(b.get("errors/http_5xx@steady", Measure::Count), Some(1.0));
        assert_eq!(b.get("throughput/rps@steady", Measure::Throughput), Some(1.0));
    }

    #[test]
    fn program_costs_per_run_for_the_programs_that_ran() {
        let mut r = test_report(EndReason::DurationElapsed);
        let program = test_program;
        r.programs = vec![
            program("sched_switch", 1000, 180_000),
            program("stats_floor", 500, 21_000),
            program("inet_sock_set_state", 0, 0),
        ];
        let b = document(&r);
        assert_eq!(b.get("agent/prog_ns/sched_switch", Measure::Latency), Some(180.0));
        assert_eq!(b.get("agent/prog_runs/sched_switch", Measure::Count), Some(1000.0));
        assert_eq!(b.get("agent/prog_ns/stats_floor", Measure::Latency), Some(42.0));
        assert_eq!(b.get("agent/prog_ns/inet_sock_set_state", Measure::Latency), None, "no runs");
        let without_stats = document(&test_report(EndReason::DurationElapsed));
        assert!(!without_stats.to_json().contains("agent/prog_"));
    }
}
