//! The stages of a k6 run: the plan's stages anchored at the moments k6
//! logged, cut where k6 actually ended each scenario, and what k6 did that
//! the plan did not say. Pure. (No `Phase` here: `phases` uses `k6`, so the
//! run's phases are assembled in `load.rs`.)

use super::{Markers, plan};

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

/// The plan's stages and scenarios anchored at k6's markers (monotonic ns;
/// empty before "Start of test run"): each from its observed start (else its
/// planned `startTime`), cut where k6 actually ended its scenario and left
/// out if it would start after, so a plan that disagrees with what k6 did
/// never pushes `load` past k6's end nor swallows the cooldown. The run's
/// phases around them (idle, load, cooldown) are cut in `load.rs`.
pub fn planned_phases(
    plan: &[plan::Scenario],
    markers: &Markers,
    run_end_ns: u64,
) -> Vec<plan::PlannedPhase> {
    let Some(t0) = markers.test_start_ns else { return Vec::new() };
    let observed = |name: &str| {
        markers.scenario_start_ns.iter().find(|(n, _)| n == name).map(|(_, t)| t.saturating_sub(t0))
    };
    plan::phases(plan, &observed)
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
        .collect()
}

/// Every phase edge of the run known at `now_ns`, but `now_ns` itself (the
/// open end of the last phase): the idle start, "Start of test run" and the
/// edges of [`planned_phases`], the same computation the report's phases
/// use (`load::phases_from_run`), so the request log is cut exactly there.
pub fn cut_points(
    plan: &[plan::Scenario],
    markers: &Markers,
    idle_start_ns: Option<u64>,
    now_ns: u64,
) -> Vec<u64> {
    let planned = planned_phases(plan, markers, now_ns);
    idle_start_ns
        .into_iter()
        .chain(markers.test_start_ns)
        .chain(planned.iter().flat_map(|p| [p.start_ns, p.end_ns]))
        .filter(|t| *t != now_ns)
        .collect()
}

/// What k6 did that its plan (`k6 inspect`) did not say, as warnings: a
/// scenario it ran that was not planned, a scenario duration other than the
/// planned one, a scenario that ended early (its phases are then cut at
/// k6's end by [`planned_phases`]).
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

    fn edges(planned: &[plan::PlannedPhase]) -> Vec<(&str, u64, u64)> {
        planned.iter().map(|p| (p.name.as_str(), p.start_ns, p.end_ns)).collect()
    }

    /// Anchored at the observed scenario start; k6's end after the plan's
    /// cuts nothing; k6's exit (no executor line) cuts, and drops the stages
    /// after it; k6 stopped after the run's end cuts nothing.
    #[test]
    fn stages_are_anchored_at_k6s_start_and_cut_at_k6s_end() {
        let markers = Markers {
            test_start_ns: Some(10 * S),
            scenario_start_ns: vec![("default".into(), 10 * S + MS)],
            scenario_end_ns: vec![("default".into(), 14 * S + 30 * MS)],
            ..Default::default()
        };
        let planned = planned_phases(&ramp_plan(), &markers, 20 * S);
        assert_eq!(
            edges(&planned),
            [
                ("ramp-up", 10 * S + MS, 11 * S + MS),
                ("steady", 11 * S + MS, 13 * S + MS),
                ("ramp-down", 13 * S + MS, 14 * S + MS)
            ]
        );
        let exited =
            Markers { test_start_ns: Some(10 * S), exited_ns: Some(12 * S), ..Default::default() };
        let planned = planned_phases(&ramp_plan(), &exited, 15 * S);
        assert_eq!(edges(&planned), [("ramp-up", 10 * S, 11 * S), ("steady", 11 * S, 12 * S)]);
        let stopped = Markers { exited_ns: Some(12 * S + MS), ..exited };
        let planned = planned_phases(&ramp_plan(), &stopped, 12 * S);
        assert_eq!(planned.last().map(|p| p.end_ns), Some(14 * S));
        assert!(planned_phases(&ramp_plan(), &Markers::default(), 5 * S).is_empty());
    }

    /// The cuts are the edges of the phases (idle start, test start, every
    /// stage edge), never the open end.
    #[test]
    fn cut_points_are_every_known_edge_but_now() {
        let markers = Markers {
            test_start_ns: Some(10 * S),
            scenario_start_ns: vec![("default".into(), 10 * S)],
            ..Default::default()
        };
        let mut cuts = cut_points(&ramp_plan(), &markers, Some(7 * S), 13 * S);
        cuts.sort_unstable();
        cuts.dedup();
        assert_eq!(cuts, [7 * S, 10 * S, 11 * S, 14 * S]);
        assert_eq!(cut_points(&[], &Markers::default(), Some(S), 2 * S), [S]);
    }

    #[test]
    fn a_shorter_run_than_planned_is_reported() {
        let plan = constant_plan("10s");
        let markers = Markers {
            test_start_ns: Some(10 * S),
            scenario_start_ns: vec![("default".into(), 10 * S)],
            scenario_duration_ns: vec![("default".into(), 6 * S)],
            scenario_end_ns: vec![("default".into(), 16 * S)],
            exited_ns: Some(16 * S + 200 * MS),
        };
        let warnings = plan_disagreements(&plan, &markers, 18 * S);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("for 6.000 s, its plan (k6 inspect) said 10.000 s"));
        assert!(warnings[1].contains("ended scenario \"default\" after 6.000 s"));
        let on_plan = Markers {
            scenario_duration_ns: vec![("default".into(), 10 * S)],
            scenario_end_ns: vec![("default".into(), 20 * S + 30 * MS)],
            exited_ns: None,
            ..markers
        };
        assert!(plan_disagreements(&plan, &on_plan, 25 * S).is_empty());
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
