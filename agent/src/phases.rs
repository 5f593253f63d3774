//! Phases: named time windows of a run (idle, a k6 stage, cooldown, ...), and
//! every metric computed per phase from the same sample series and request
//! log. Pure.

use crate::{
    k6::{
        cpu::ClientCpu,
        results::{ClientResults, ClientStats},
    },
    requests::{RequestLog, RequestStats},
    timeline::{self, Sample, WindowStats},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Phase {
    pub fn new(name: impl Into<String>, start_ns: u64, end_ns: u64) -> Phase {
        Phase { name: name.into(), start_ns, end_ns }
    }
}

/// The numbers of one phase.
#[derive(Clone, Debug)]
pub struct PhaseReport {
    pub phase: Phase,
    pub system: WindowStats,
    pub requests: RequestStats,
    /// The run ended before the phase did: its numbers cover only part of it.
    pub truncated: bool,
    /// k6's client-side numbers for the same window, when k6 drove the load.
    pub client: Option<ClientStats>,
}

/// Computes every phase that began before the last sample.
pub fn measure(phases: &[Phase], samples: &[Sample], log: &RequestLog) -> Vec<PhaseReport> {
    let Some(last_t) = samples.last().map(|s| s.t_ns) else { return Vec::new() };
    phases
        .iter()
        .filter(|p| p.start_ns < last_t && p.end_ns > p.start_ns)
        .filter_map(|p| {
            let end = p.end_ns.min(last_t);
            let system = timeline::window_between(samples, p.start_ns, end)?;
            Some(PhaseReport {
                phase: p.clone(),
                system,
                requests: log.window(p.start_ns, end),
                truncated: p.end_ns > last_t,
                client: None,
            })
        })
        .collect()
}

/// Gives each phase k6's requests that ended in it, and k6's CPU in it when
/// known (`cpu`: the agent ran k6). `offset`: CLOCK_REALTIME −
/// CLOCK_MONOTONIC, to place the phase edges on k6's wall clock; a phase
/// cut by the end of the run ends at the last sample, `last_t`.
pub fn add_client_windows(
    reports: &mut [PhaseReport],
    client: &ClientResults,
    cpu: Option<&ClientCpu>,
    last_t: u64,
    offset: i128,
) {
    for p in reports {
        let (start, end) = (p.phase.start_ns, p.phase.end_ns.min(last_t));
        let mut stats = client.window(start as i128 + offset, end as i128 + offset);
        stats.cpu_percent = cpu.and_then(|c| c.percent(start, end));
        p.client = Some(stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{NetEvent, event_kind};

    const MS: u64 = 1_000_000;

    #[test]
    fn each_phase_gets_its_own_requests_and_cpu() {
        let samples: Vec<Sample> = (0..=10)
            .map(|i| Sample { t_ns: i * 100 * MS, cpu_ns: i * i * MS, ..Default::default() })
            .collect();
        let mut log = RequestLog::default();
        for end in [150, 250, 650, 950] {
            log.push(&NetEvent {
                start_ns: (end - 10) * MS,
                first_response_ns: (end - 5) * MS,
                end_ns: end * MS,
                kind: event_kind::REQUEST,
                ..Default::default()
            });
        }
        let phases = [Phase::new("idle", 0, 300 * MS), Phase::new("load", 300 * MS, 2000 * MS)];
        let r = measure(&phases, &samples, &log);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].requests.count, 2);
        assert_eq!(r[1].requests.count, 2);
        assert!(!r[0].truncated && r[1].truncated);
        // cpu over [0, 300]: 9 ms; over [300, 1000]: 100 - 9 = 91 ms.
        assert_eq!(r[0].system.cpu_ns, 9 * MS);
        assert_eq!(r[1].system.cpu_ns, 91 * MS);
    }

    #[test]
    fn phases_after_the_run_are_left_out() {
        let samples =
            [Sample { t_ns: 0, ..Default::default() }, Sample { t_ns: MS, ..Default::default() }];
        let r = measure(&[Phase::new("later", 5 * MS, 6 * MS)], &samples, &RequestLog::default());
        assert!(r.is_empty());
    }
}
