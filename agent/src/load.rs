//! The load a run is measured under, and the phases it cuts the run into:
//! startup and idle when the target was followed from its exec; k6's plan
//! anchored at k6's own log lines (`--k6`), or the span of a k6 results file
//! (`--k6-results`); manual marks. Also which phase stands for "under load"
//! (the canonical names) and k6's client-side results. Pure.

use std::{path::PathBuf, time::Duration};

use crate::{
    k6::{K6Outcome, Markers, cpu::ClientCpu, plan, results::ClientResults, run_phases},
    phases::Phase,
    startup::Startup,
};

/// The load whose phases the run is cut into.
#[derive(Clone, Debug, Default)]
pub enum LoadOptions {
    /// None: one window (plus startup and idle when followed from exec).
    #[default]
    None,
    /// Run k6 with this script after the idle window (`--k6`).
    K6 { script: PathBuf, args: Vec<String>, cooldown: Duration },
    /// Read the results of a k6 run made elsewhere with `--out json=FILE`.
    K6Results { file: PathBuf },
}

/// What the phases are cut from.
pub struct PhaseInputs<'a> {
    pub load: &'a LoadOptions,
    /// `--idle`.
    pub idle: Duration,
    /// Startup milestones, when the target was followed from its exec.
    pub startup: Option<&'a Startup>,
    /// With `--k6`: the plan (`k6 inspect`) and what k6 did.
    pub k6: Option<(&'a [plan::Scenario], K6Outcome)>,
    /// With `--k6-results`: the file, read.
    pub k6_results: Option<ClientResults>,
    /// Manual marks (`perf-agent mark`, SIGUSR1): name and time.
    pub marks: &'a [(String, u64)],
    /// First and last sample of the run.
    pub first_ns: u64,
    pub last_ns: u64,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC (`clock::epoch_offset_ns`).
    pub epoch_offset_ns: i128,
}

/// What the load generator contributed to a run.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// The phase standing for "under load", and its VU count if known.
    pub canonical: Option<(String, Option<u64>)>,
    pub client: Option<ClientResults>,
    /// k6's own CPU time, when the agent ran it.
    pub client_cpu: Option<ClientCpu>,
    /// k6's exit status when it ran to its end by itself.
    pub k6_status: Option<std::process::ExitStatus>,
    /// What k6 did that its plan did not say
    /// ([`run_phases::plan_disagreements`]), for stderr.
    pub warnings: Vec<String>,
}

/// The run's phases: startup and idle when followed from exec, then the
/// load's, then the manual marks; with what the load generator reported.
pub fn plan_phases(inputs: PhaseInputs) -> (Vec<Phase>, LoadReport) {
    let PhaseInputs { load, startup, marks, first_ns, last_ns, .. } = inputs;
    let mut phases = Vec::new();
    if let Some(s) = startup
        && let Some(end) = s.end_ns()
    {
        phases.push(Phase::new("startup", s.exec_ns, end));
        if matches!(load, LoadOptions::None) {
            phases.push(Phase::new("idle", end, end + inputs.idle.as_nanos() as u64));
        }
    }
    let mut report = LoadReport::default();
    if let Some((plan, outcome)) = inputs.k6 {
        // Idle begins once startup is over (the driver only saw the listen).
        let idle_start = match (outcome.idle_start_ns, startup.and_then(Startup::end_ns)) {
            (Some(idle), Some(ready)) => Some(idle.max(ready)),
            (idle, _) => idle,
        };
        let (k6_phases, planned) = phases_from_run(plan, &outcome.markers, idle_start, last_ns);
        phases.extend(k6_phases);
        report.warnings = run_phases::plan_disagreements(plan, &outcome.markers, last_ns);
        report.canonical = match plan::steady_phase(&planned) {
            Some(steady) => Some((steady.name.clone(), steady.vus)),
            None => outcome.markers.test_start_ns.map(|_| ("load".into(), None)),
        };
        report.client = outcome.results;
        report.client_cpu = Some(outcome.cpu);
        report.k6_status = outcome.status;
    } else if let Some(client) = inputs.k6_results {
        phases.extend(phases_from_results(&client, first_ns, last_ns, inputs.epoch_offset_ns));
        report.canonical = Some(("load".into(), None));
        report.client = Some(client);
    }
    // Each mark starts a phase; one named "steady" stands for "under load"
    // unless k6 said otherwise.
    phases.extend(phases_from_marks(marks, last_ns));
    if report.canonical.is_none() && marks.iter().any(|(n, _)| n == "steady") {
        report.canonical = Some(("steady".into(), None));
    }
    (phases, report)
}

/// The phases of a k6 run from its plan and markers (monotonic ns): `idle`
/// (from the idle start to the start of the test run), each planned stage or
/// scenario, cut at k6's actual end ([`run_phases::planned_phases`]), `load`
/// (test start to the end of the last stage), and `cooldown` (the end of the
/// last stage to `run_end_ns`, graceful stop and teardown included). For one
/// scenario with back-to-back stages, idle, the stages and cooldown partition
/// the run.
pub fn phases_from_run(
    plan: &[plan::Scenario],
    markers: &Markers,
    idle_start_ns: Option<u64>,
    run_end_ns: u64,
) -> (Vec<Phase>, Vec<plan::PlannedPhase>) {
    let mut out = Vec::new();
    let Some(t0) = markers.test_start_ns else {
        out.extend(idle_start_ns.map(|idle| Phase::new("idle", idle, run_end_ns)));
        return (out, Vec::new());
    };
    out.extend(idle_start_ns.map(|idle| Phase::new("idle", idle, t0)));
    let planned = run_phases::planned_phases(plan, markers, run_end_ns);
    let load_end = planned.iter().map(|p| p.end_ns).max().unwrap_or(t0);
    out.extend(planned.iter().map(|p| Phase::new(p.name.clone(), p.start_ns, p.end_ns)));
    out.push(Phase::new("load", t0, load_end));
    out.push(Phase::new("cooldown", load_end, run_end_ns));
    (out, planned)
}

/// Phases of a k6 run made elsewhere (`--k6-results`): no plan, so each
/// scenario spans its first to last response; idle before, cooldown after,
/// all clamped to the run. `offset`: CLOCK_REALTIME − CLOCK_MONOTONIC.
pub fn phases_from_results(
    client: &ClientResults,
    first_t: u64,
    last_t: u64,
    offset: i128,
) -> Vec<Phase> {
    let mono = |t: i128| (t - offset).clamp(first_t as i128, last_t as i128) as u64;
    let spans = client.scenario_spans();
    let Some(lo) = spans.iter().map(|s| s.1).min() else { return Vec::new() };
    let hi = spans.iter().map(|s| s.2).max().unwrap_or(lo);
    // The first response ends a request that began a little earlier: open
    // the load window at the first request's start.
    let first_start =
        client.requests.iter().map(|r| r.t_epoch_ns - r.duration_ns as i128).min().unwrap_or(lo);
    let mut out = vec![Phase::new("idle", first_t, mono(first_start))];
    if spans.len() > 1 {
        out.extend(spans.iter().map(|(name, a, b)| Phase::new(name.clone(), mono(*a), mono(*b))));
    }
    out.push(Phase::new("load", mono(first_start), mono(hi)));
    out.push(Phase::new("cooldown", mono(hi), last_t));
    out
}

/// Each mark starts a phase that ends at the next mark or `end_ns`.
pub fn phases_from_marks(marks: &[(String, u64)], end_ns: u64) -> Vec<Phase> {
    let mut sorted: Vec<&(String, u64)> = marks.iter().collect();
    sorted.sort_by_key(|(_, t)| *t);
    sorted
        .iter()
        .enumerate()
        .map(|(i, (name, t))| {
            let end = sorted.get(i + 1).map_or(end_ns, |(_, next)| *next);
            Phase::new(name.clone(), *t, end.max(*t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k6::results::ClientRequest;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn inputs<'a>(load: &'a LoadOptions, marks: &'a [(String, u64)]) -> PhaseInputs<'a> {
        PhaseInputs {
            load,
            idle: Duration::from_secs(2),
            startup: None,
            k6: None,
            k6_results: None,
            marks,
            first_ns: S,
            last_ns: 30 * S,
            epoch_offset_ns: 0,
        }
    }

    fn names(phases: &[Phase]) -> Vec<&str> {
        phases.iter().map(|p| p.name.as_str()).collect()
    }

    fn ramp_plan() -> Vec<plan::Scenario> {
        plan::parse_plan(
            r#"{"scenarios":{"default":{"executor":"ramping-vus","startVUs":0,"stages":[
                {"duration":"1s","target":10},{"duration":"2s","target":10},{"duration":"1s","target":0}]}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn k6_phases_partition_a_single_scenario_run() {
        let markers = Markers {
            test_start_ns: Some(10 * S),
            scenario_start_ns: vec![("default".into(), 10 * S + MS)],
            scenario_duration_ns: vec![("default".into(), 4 * S)],
            scenario_end_ns: vec![("default".into(), 14 * S + 30 * MS)],
            exited_ns: Some(15 * S),
        };
        let plan = ramp_plan();
        let (phases, planned) = phases_from_run(&plan, &markers, Some(7 * S), 20 * S);
        assert_eq!(names(&phases), ["idle", "ramp-up", "steady", "ramp-down", "load", "cooldown"]);
        assert_eq!((phases[0].start_ns, phases[0].end_ns), (7 * S, 10 * S));
        assert_eq!(phases[1].start_ns, 10 * S + MS, "the observed scenario start");
        assert_eq!(phases[3].end_ns, 14 * S + MS, "the plan's end: k6 ended after it");
        assert_eq!(phases[3].end_ns, phases[5].start_ns, "cooldown follows the last stage");
        assert_eq!(phases[5].end_ns, 20 * S);
        assert_eq!(plan::steady_phase(&planned).unwrap().vus, Some(10));
        assert!(run_phases::plan_disagreements(&plan, &markers, 20 * S).is_empty());
        // The driver cuts the request log at exactly these edges.
        let mut cuts = run_phases::cut_points(&plan, &markers, Some(7 * S), 20 * S);
        let mut edges: Vec<u64> = phases.iter().flat_map(|p| [p.start_ns, p.end_ns]).collect();
        edges.retain(|t| *t != 20 * S);
        for v in [&mut cuts, &mut edges] {
            v.sort_unstable();
            v.dedup();
        }
        assert_eq!(cuts, edges);
    }

    #[test]
    fn without_a_start_marker_only_idle_is_known() {
        let (phases, planned) = phases_from_run(&[], &Markers::default(), Some(S), 5 * S);
        assert_eq!(phases, [Phase::new("idle", S, 5 * S)]);
        assert!(planned.is_empty());
    }

    /// The plan says 10 s, k6 ran 6 s (a plan made without what k6 got):
    /// the scenario is cut at k6's end, the cooldown is kept, a warning says so.
    #[test]
    fn a_plan_longer_than_the_run_is_cut_at_k6s_end() {
        let plan = plan::parse_plan(
            r#"{"scenarios":{"default":{"executor":"constant-vus","vus":1,"duration":"10s"}}}"#,
        )
        .unwrap();
        let markers = Markers {
            test_start_ns: Some(10 * S),
            scenario_start_ns: vec![("default".into(), 10 * S)],
            scenario_duration_ns: vec![("default".into(), 6 * S)],
            scenario_end_ns: vec![("default".into(), 16 * S)],
            exited_ns: Some(16 * S + 200 * MS),
        };
        let (phases, _) = phases_from_run(&plan, &markers, Some(7 * S), 18 * S);
        assert_eq!(names(&phases), ["idle", "default", "load", "cooldown"]);
        assert_eq!(phases[1].end_ns, 16 * S);
        assert_eq!(phases[2].end_ns, 16 * S);
        assert_eq!((phases[3].start_ns, phases[3].end_ns), (16 * S, 18 * S));
        let warnings = run_phases::plan_disagreements(&plan, &markers, 18 * S);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("for 6.000 s, its plan (k6 inspect) said 10.000 s"));
        assert!(warnings[1].contains("ended scenario \"default\" after 6.000 s"));
    }

    /// Without k6's end-of-executor line, its exit cuts the phases, when k6
    /// exited before the run ended; stages after it are left out. k6 stopped
    /// by the agent after the run ended cuts nothing (the phases are
    /// truncated by the run's end instead), nothing to warn about.
    #[test]
    fn k6s_exit_cuts_only_when_it_came_before_the_run_s_end() {
        let markers =
            Markers { test_start_ns: Some(10 * S), exited_ns: Some(12 * S), ..Default::default() };
        let (phases, planned) = phases_from_run(&ramp_plan(), &markers, None, 15 * S);
        assert_eq!(names(&phases), ["ramp-up", "steady", "load", "cooldown"]);
        assert_eq!(phases[1].end_ns, 12 * S);
        assert_eq!(phases[3].start_ns, 12 * S);
        assert_eq!(planned.len(), 2);
        let stopped = Markers { exited_ns: Some(12 * S + MS), ..markers };
        let (phases, _) = phases_from_run(&ramp_plan(), &stopped, None, 12 * S);
        assert_eq!(phases.iter().find(|p| p.name == "load").unwrap().end_ns, 14 * S);
        assert!(run_phases::plan_disagreements(&ramp_plan(), &stopped, 12 * S).is_empty());
    }

    #[test]
    fn k6_outcome_gives_the_canonical_phase_status_and_results() {
        use std::os::unix::process::ExitStatusExt as _;
        let plan = plan::parse_plan(
            r#"{"scenarios":{"default":{"executor":"ramping-vus","startVUs":0,"stages":[
                {"duration":"1s","target":5},{"duration":"2s","target":5}]}}}"#,
        )
        .unwrap();
        let outcome = K6Outcome {
            markers: Markers { test_start_ns: Some(10 * S), ..Default::default() },
            idle_start_ns: Some(4 * S),
            status: Some(std::process::ExitStatus::from_raw(99 << 8)),
            results: Some(ClientResults { http_reqs: 7, ..Default::default() }),
            cpu: ClientCpu::default(),
        };
        // Followed from exec: ready at 6 s, after the listen that opened idle.
        let startup = Startup {
            exec_ns: S,
            listen_ns: Some(3 * S),
            ready_ns: Some(6 * S),
            ..Default::default()
        };
        let load =
            LoadOptions::K6 { script: "x.js".into(), args: vec![], cooldown: Duration::ZERO };
        let mut i = inputs(&load, &[]);
        i.startup = Some(&startup);
        i.k6 = Some((&plan, outcome));
        let (phases, report) = plan_phases(i);
        assert_eq!(names(&phases), ["startup", "idle", "ramp-up", "steady", "load", "cooldown"]);
        assert_eq!((phases[1].start_ns, phases[1].end_ns), (6 * S, 10 * S), "idle after ready");
        assert_eq!(report.canonical, Some(("steady".into(), Some(5))));
        assert_eq!(report.k6_status.and_then(|s| s.code()), Some(99));
        assert_eq!(report.client.map(|c| c.http_reqs), Some(7));
    }

    #[test]
    fn startup_then_idle_without_a_load() {
        let startup = Startup { exec_ns: S, listen_ns: Some(2 * S), ..Default::default() };
        let mut i = inputs(&LoadOptions::None, &[]);
        i.startup = Some(&startup);
        let (phases, report) = plan_phases(i);
        assert_eq!(phases, [Phase::new("startup", S, 2 * S), Phase::new("idle", 2 * S, 4 * S)]);
        assert!(report.canonical.is_none());
    }

    #[test]
    fn marks_become_back_to_back_phases_and_steady_is_under_load() {
        let p = phases_from_marks(&[("b".into(), 20), ("a".into(), 10)], 50);
        assert_eq!(p, [Phase::new("a", 10, 20), Phase::new("b", 20, 50)]);
        let marks = [("warmup".to_string(), 2 * S), ("steady".to_string(), 5 * S)];
        let (phases, report) = plan_phases(inputs(&LoadOptions::None, &marks));
        assert_eq!(names(&phases), ["warmup", "steady"]);
        assert_eq!(report.canonical, Some(("steady".into(), None)));
    }

    #[test]
    fn results_file_phases_span_each_scenario_on_the_agent_clock() {
        // Wall clock = monotonic + 1000 s. Scenario a: responses at 5 and 8 s
        // (the first took 1 s); b: at 7 and 12 s.
        let offset = 1000 * S as i128;
        let at = |t: u64, scenario: u16| ClientRequest {
            t_epoch_ns: (t * S) as i128 + offset,
            duration_ns: S,
            waiting_ns: 0,
            scenario,
        };
        let client = ClientResults {
            requests: vec![at(5, 0), at(7, 1), at(8, 0), at(12, 1)],
            scenarios: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let phases = phases_from_results(&client, S, 30 * S, offset);
        assert_eq!(
            phases,
            [
                Phase::new("idle", S, 4 * S),
                Phase::new("a", 5 * S, 8 * S),
                Phase::new("b", 7 * S, 12 * S),
                Phase::new("load", 4 * S, 12 * S),
                Phase::new("cooldown", 12 * S, 30 * S),
            ]
        );
        // Clamped to the run.
        let late = phases_from_results(&client, 6 * S, 10 * S, offset);
        assert_eq!(late[0], Phase::new("idle", 6 * S, 6 * S));
        assert_eq!(late.last().unwrap(), &Phase::new("cooldown", 10 * S, 10 * S));
        assert!(phases_from_results(&ClientResults::default(), S, 2 * S, 0).is_empty());
    }
}
