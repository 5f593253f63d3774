//! Turning a run into metrics: the BMF file for CI ([`metrics`]), the
//! summary for people ([`summary`]), with the `/proc` ground truth beside
//! each kernel number, and the HTML page ([`html`], `--report`).
//!
//! Metric IDs are stable (CI gates on them); `docs/metrics.md` defines each.

pub mod delivery;
pub mod html;
pub mod metrics;
pub mod summary;

use crate::{
    outcome::EndReason,
    phases::PhaseReport,
    probes::{
        KernelReading,
        stats::{FLOOR_PROGRAM, ProgramStats},
    },
    requests::RequestStats,
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
    /// What the numbers are to be read with (k6 disagreeing with its plan,
    /// phase edges known late), each printed on stderr as `perf-agent: …`.
    pub notes: Vec<String>,
    /// `--delivery` was on: the queue/drain/delivered/accept-wait numbers
    /// and `tcp/retransmits` were measured (off: not reported at all).
    pub delivery: bool,
}

/// Every event lost between the kernel and the numbers: runs the kernel
/// skipped (recursion misses), event ring or connection table full, and
/// events user space refused. The delivery hooks' misses lose no request:
/// they are in `agent/dropped_deliveries` ([`delivery::dropped`]). CPU time, RSS and faults are aggregated in
/// fixed per-CPU slots that cannot fill up. (The statistics' calibration
/// program counts nothing, so its misses lose nothing.)
pub fn dropped_events(r: &RunReport) -> u64 {
    r.programs
        .iter()
        .filter(|p| p.name != FLOOR_PROGRAM && !delivery::PROGRAMS.contains(&p.name.as_str()))
        .map(|p| p.recursion_misses)
        .sum::<u64>()
        + r.window.lost_events
        + r.rejected_events
}

/// A program's statistics, for the tests of [`metrics`] and [`summary`].
#[cfg(test)]
fn test_program(name: &str, run_count: u64, run_time_ns: u64) -> ProgramStats {
    ProgramStats { name: name.into(), run_count, run_time_ns, recursion_misses: 0 }
}

/// A minimal report for the tests of [`metrics`] and [`summary`].
#[cfg(test)]
fn test_report(end: EndReason) -> RunReport<'static> {
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
        requests: crate::requests::RequestLog::default().window(0, 2_000_000_000),
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
        notes: vec![],
        delivery: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_events_add_every_loss_but_the_floor_program_s() {
        let mut r = test_report(EndReason::DurationElapsed);
        let program = |name: &str, misses| ProgramStats {
            name: name.into(),
            recursion_misses: misses,
            ..Default::default()
        };
        r.programs = vec![program("sched_switch", 2), program(FLOOR_PROGRAM, 5)];
        r.window.lost_events = 3;
        r.rejected_events = 1;
        assert_eq!(dropped_events(&r), 2 + 3 + 1);
    }
}
