//! The phases of a k6 run: the plan's stages anchored at the moments k6
//! logged, cut where k6 actually ended each scenario, and what k6 did that
//! the plan did not say. Pure.

use super::{Markers, plan};
use crate::phases::Phase;

/// A scenario that ends this much before its planned end is reported as
/// disagreeing with the plan: the end marker is stamped when k6's log line
/// arrives, milliseconds after the fact, and k6 itself ends a scenario after
/// its graceful stop, never before the plan says.
const EARLY_END_TOLERANCE_NS: u64 = 100_000_000;

/// When k6 actually ended `scenario` (monotonic ns): its "Executor finished"
/// line, else k6's exit when k6 exited on its own before the run ended;
/// `None` while k6 was still running at `run_end_ns`.
fn actual_end(markers: &Markers, scenario: &str, run_end_ns: u64) -> Option<u64> {
    markers
        .scenario_end_ns
        .iter()
        .find(|(n, _)| n == scenario)
        .map(|(_, t)| *t)
        .or(markers.exited_ns.filter(|t| *t <= run_end_ns))
}

/// The run's phases from k6's plan and markers (monotonic ns):
/// `idle` (from the idle start to the start of the test run), each planned
/// stage or scenario, `load` (test start to the end of the last stage), and
/// `cooldown` (the end of the last stage to `run_end_ns`, graceful stop and
/// teardown included). A stage is cut where k6 actually ended its scenario
/// (and left out if it would start after), so a plan that disagrees with
/// what k6 did never pushes `load` past k6's end nor swallows the cooldown.
/// For one scenario with back-to-back stages, idle, the stages and cooldown
/// partition the run.
pub fn phases_from_run(
    plan: &[plan::Scenario],
    markers: &Markers,
    idle_start_ns: Option<u64>,
    run_end_ns: u64,
) -> (Vec<Phase>, Vec<plan::PlannedPhase>) {
    let mut out = Vec::new();
    let Some(t0) = markers.test_start_ns else {
        if let Some(idle) = idle_start_ns {
            out.push(Phase::new("idle", idle, run_end_ns));
        }
        return (out, Vec::new());
    };
    if let Some(idle) = idle_start_ns {
        out.push(Phase::new("idle", idle, t0));
    }
    let observed = |name: &str| {
        markers.scenario_start_ns.iter().find(|(n, _)| n == name).map(|(_, t)| t.saturating_sub(t0))
    };
    let planned: Vec<plan::PlannedPhase> = plan::phases(plan, &observed)
        .into_iter()
        .filter_map(|mut p| {
            p.start_ns += t0;
            p.end_ns += t0;
            if let Some(end) = actual_end(markers, &p.scenario, run_end_ns) {
                if p.start_ns >= end {
                    return None;
                }
                p.end_ns = p.end_ns.min(end);
            }
            Some(p)
        })
        .collect();
    let load_end = planned.iter().map(|p| p.end_ns).max().unwrap_or(t0);
    for p in &planned {
        out.push(Phase::new(p.name.clone(), p.start_ns, p.end_ns));
    }
    out.push(Phase::new("load", t0, load_end));
    out.push(Phase::new("cooldown", load_end, run_end_ns));
    (out, planned)
}

/// What k6 did that its plan (`k6 inspect`) did not say, as warnings: a
/// scenario it ran that was not planned, a scenario duration other than the
/// planned one, a scenario that ended early (its phases are then cut at
/// k6's end by [`phases_from_run`]).
pub fn plan_disagreements(
    plan: &[plan::Scenario],
    markers: &Markers,
    run_end_ns: u64,
) -> Vec<String> {
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut out = Vec::new();
    for (name, _) in &markers.scenario_start_ns {
        if !plan.iter().any(|s| &s.name == name) {
            out.push(format!(
                "k6 ran scenario {name:?}, which its plan (k6 inspect) does not have: \
                 its requests count in `load` only"
            ));
        }
    }
    for s in plan {
        let Some(planned) = planned_duration(s) else { continue };
        let ran = markers.scenario_duration_ns.iter().find(|(n, _)| n == &s.name);
        if let Some((_, d)) = ran
            && *d != planned
        {
            out.push(format!(
                "k6 ran scenario {:?} for {:.3} s, its plan (k6 inspect) said {:.3} s: \
                 phases follow the plan, cut at k6's end",
                s.name,
                secs(*d),
                secs(planned)
            ));
        }
        let start = markers
            .scenario_start_ns
            .iter()
            .find(|(n, _)| n == &s.name)
            .map(|(_, t)| *t)
            .or(markers.test_start_ns.map(|t0| t0 + s.start_ns));
        let (Some(start), Some(end)) = (start, actual_end(markers, &s.name, run_end_ns)) else {
            continue;
        };
        if end + EARLY_END_TOLERANCE_NS < start + planned {
            out.push(format!(
                "k6 ended scenario {:?} after {:.3} s, its plan (k6 inspect) said {:.3} s: \
                 its phases are cut at k6's end",
                s.name,
                secs(end.saturating_sub(start)),
                secs(planned)
            ));
        }
    }
    out
}

/// A scenario's planned length: its stages, else its duration.
fn planned_duration(s: &plan::Scenario) -> Option<u64> {
    if s.stages.is_empty() {
        s.duration_ns
    } else {
        Some(s.stages.iter().map(|st| st.duration_ns).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn ramp_plan() -> Vec<plan::Scenario> {
        plan::parse_plan(
            r#"{"scenarios":{"default":{"executor":"ramping-vus","startVUs":0,"stages":[
                {"duration":"1s","target":10},{"duration":"2s","target":10},{"duration":"1s","target":0}]}}}"#,
        )
        .unwrap()
    }

    fn constant_plan(duration: &str) -> Vec<plan::Scenario> {
        plan::parse_plan(&format!(
            r#"{{"scenarios":{{"default":{{"executor":"constant-vus","vus":1,"duration":"{duration}"}}}}}}"#
        ))
        .unwrap()
    }

    fn names(phases: &[Phase]) -> Vec<&str> {
        phases.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn phases_partition_a_single_scenario_run() {
        let markers = Markers {
            test_start_ns: Some(10 * S),
            scenario_start_ns: vec![("default".into(), 10 * S + MS)],
            scenario_duration_ns: vec![("default".into(), 4 * S)],
            scenario_end_ns: vec![("default".into(), 14 * S + 30 * MS)],
            exited_ns: Some(15 * S),
            ..Default::default()
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
        assert!(plan_disagreements(&plan, &markers, 20 * S).is_empty());
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
        let plan = constant_plan("10s");
        let markers = Markers {
            test_start_ns: Some(10 * S),
            scenario_start_ns: vec![("default".into(), 10 * S)],
            scenario_duration_ns: vec![("default".into(), 6 * S)],
            scenario_end_ns: vec![("default".into(), 16 * S)],
            exited_ns: Some(16 * S + 200 * MS),
            ..Default::default()
        };
        let (phases, _) = phases_from_run(&plan, &markers, Some(7 * S), 18 * S);
        assert_eq!(names(&phases), ["idle", "default", "load", "cooldown"]);
        assert_eq!(phases[1].end_ns, 16 * S);
        assert_eq!(phases[2].end_ns, 16 * S);
        assert_eq!((phases[3].start_ns, phases[3].end_ns), (16 * S, 18 * S));
        let warnings = plan_disagreements(&plan, &markers, 18 * S);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("for 6.000 s, its plan (k6 inspect) said 10.000 s"));
        assert!(warnings[1].contains("ended scenario \"default\" after 6.000 s"));
    }

    /// Without k6's end-of-executor line, its exit cuts the phases, when k6
    /// exited before the run ended; stages after it are left out.
    #[test]
    fn k6s_exit_cuts_when_the_executor_end_is_missing() {
        let markers =
            Markers { test_start_ns: Some(10 * S), exited_ns: Some(12 * S), ..Default::default() };
        let (phases, planned) = phases_from_run(&ramp_plan(), &markers, None, 15 * S);
        assert_eq!(names(&phases), ["ramp-up", "steady", "load", "cooldown"]);
        assert_eq!(phases[1].end_ns, 12 * S);
        assert_eq!(phases[3].start_ns, 12 * S);
        assert_eq!(planned.len(), 2);
    }

    /// k6 stopped by the agent after the run ended: nothing is cut (the
    /// phases are truncated by the run's end instead), nothing to warn about.
    #[test]
    fn a_k6_stopped_after_the_run_cuts_nothing() {
        let markers = Markers {
            test_start_ns: Some(10 * S),
            exited_ns: Some(12 * S + MS),
            ..Default::default()
        };
        let (phases, _) = phases_from_run(&ramp_plan(), &markers, None, 12 * S);
        assert_eq!(phases.iter().find(|p| p.name == "load").unwrap().end_ns, 14 * S);
        assert!(plan_disagreements(&ramp_plan(), &markers, 12 * S).is_empty());
    }

    #[test]
    fn an_unplanned_scenario_is_reported() {
        let markers = Markers {
            test_start_ns: Some(S),
            scenario_start_ns: vec![("other".into(), S)],
            ..Default::default()
        };
        let warnings = plan_disagreements(&constant_plan("1s"), &markers, 5 * S);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("\"other\""), "{warnings:?}");
    }
}
