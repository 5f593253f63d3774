//! k6's execution plan (`k6 inspect --execution-requirements SCRIPT`) and the
//! phases it implies: each scenario, and within ramping scenarios each stage
//! classified as ramp-up, steady or ramp-down. Pure.

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::time::parse_go_duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub duration_ns: u64,
    /// VUs (ramping-vus) or iterations per time unit (ramping-arrival-rate).
    pub target: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    pub executor: String,
    /// Offset from the start of the test run.
    pub start_ns: u64,
    /// Ramping executors: the level before the first stage.
    pub initial: u64,
    pub stages: Vec<Stage>,
    /// Non-ramping executors: their duration, when the plan has one.
    pub duration_ns: Option<u64>,
    /// VUs when the executor fixes them (constant-vus; ramping-vus stages).
    pub vus: Option<u64>,
}

impl Scenario {
    /// Whether the stage levels are VUs (so a steady stage has a VU count).
    fn stages_are_vus(&self) -> bool {
        self.executor == "ramping-vus"
    }
}

/// The plan's scenarios, ordered by start time then name.
pub fn parse_plan(json: &str) -> anyhow::Result<Vec<Scenario>> {
    let v: Value = serde_json::from_str(json).context("k6 inspect printed invalid JSON")?;
    let Some(scenarios) = v.get("scenarios").and_then(Value::as_object) else {
        bail!("k6 inspect: no scenarios in the execution requirements");
    };
    let dur = |s: &Value, key: &str| -> anyhow::Result<Option<u64>> {
        match s.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(d)) => parse_go_duration(d)
                .map(Some)
                .with_context(|| format!("k6 inspect: bad duration {key}={d:?}")),
            Some(other) => bail!("k6 inspect: {key} is {other}, expected a duration"),
        }
    };
    let uint = |s: &Value, key: &str| s.get(key).and_then(Value::as_u64);
    let mut out = Vec::new();
    for (name, s) in scenarios {
        let executor = s.get("executor").and_then(Value::as_str).unwrap_or("").to_string();
        let mut stages = Vec::new();
        if let Some(list) = s.get("stages").and_then(Value::as_array) {
            for st in list {
                stages.push(Stage {
                    duration_ns: dur(st, "duration")?.unwrap_or(0),
                    target: uint(st, "target").unwrap_or(0),
                });
            }
        }
        let initial = match executor.as_str() {
            "ramping-vus" => uint(s, "startVUs").unwrap_or(1),
            "ramping-arrival-rate" => uint(s, "startRate").unwrap_or(0),
            _ => 0,
        };
        out.push(Scenario {
            name: name.clone(),
            start_ns: dur(s, "startTime")?.unwrap_or(0),
            initial,
            stages,
            duration_ns: dur(s, "duration")?,
            vus: uint(s, "vus"),
            executor,
        });
    }
    out.sort_by(|a, b| (a.start_ns, &a.name).cmp(&(b.start_ns, &b.name)));
    Ok(out)
}

/// What a load phase is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    RampUp,
    Steady,
    RampDown,
    /// A whole non-ramping scenario (constant VUs or rate, iterations).
    Scenario,
}

impl StageKind {
    pub fn name(self) -> &'static str {
        match self {
            StageKind::RampUp => "ramp-up",
            StageKind::Steady => "steady",
            StageKind::RampDown => "ramp-down",
            StageKind::Scenario => "scenario",
        }
    }
}

/// A load phase relative to the start of the test run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPhase {
    pub name: String,
    pub scenario: String,
    pub kind: StageKind,
    pub start_ns: u64,
    pub end_ns: u64,
    /// VUs during the phase, when constant and known.
    pub vus: Option<u64>,
}

/// The phases of a plan. With one scenario, stages are named by kind alone
/// (`ramp-up`, `steady`, `ramp-down`; a repeated kind gets `-2`, `-3`...);
/// with several, `<scenario>/<kind>`. Non-ramping scenarios are one phase
/// named after the scenario. `scenario_start` gives a scenario's observed
/// start offset when known (k6 may start it late), else the plan's.
pub fn phases(
    plan: &[Scenario],
    scenario_start: &dyn Fn(&str) -> Option<u64>,
) -> Vec<PlannedPhase> {
    let single = plan.len() == 1;
    let mut out: Vec<PlannedPhase> = Vec::new();
    for s in plan {
        let start = scenario_start(&s.name).unwrap_or(s.start_ns);
        if s.stages.is_empty() {
            let Some(d) = s.duration_ns.filter(|d| *d > 0) else { continue };
            out.push(PlannedPhase {
                name: s.name.clone(),
                scenario: s.name.clone(),
                kind: StageKind::Scenario,
                start_ns: start,
                end_ns: start + d,
                vus: if s.executor == "constant-vus" { s.vus } else { None },
            });
            continue;
        }
        let (mut t, mut level) = (start, s.initial);
        let mut seen: Vec<(StageKind, u32)> = Vec::new();
        for st in &s.stages {
            let kind = match st.target.cmp(&level) {
                std::cmp::Ordering::Greater => StageKind::RampUp,
                std::cmp::Ordering::Equal => StageKind::Steady,
                std::cmp::Ordering::Less => StageKind::RampDown,
            };
            let (begin, end) = (t, t + st.duration_ns);
            let steady_vus = (kind == StageKind::Steady && s.stages_are_vus()).then_some(st.target);
            t = end;
            level = st.target;
            if st.duration_ns == 0 {
                continue;
            }
            let n = match seen.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    seen.push((kind, 1));
                    1
                }
            };
            let base =
                if n == 1 { kind.name().to_string() } else { format!("{}-{n}", kind.name()) };
            out.push(PlannedPhase {
                name: if single { base } else { format!("{}/{base}", s.name) },
                scenario: s.name.clone(),
                kind,
                start_ns: begin,
                end_ns: end,
                vus: steady_vus,
            });
        }
    }
    out
}

/// The phase whose numbers stand for "under load": the longest steady
/// stage, if any.
pub fn steady_phase(phases: &[PlannedPhase]) -> Option<&PlannedPhase> {
    phases
        .iter()
        .filter(|p| p.kind == StageKind::Steady)
        .max_by_key(|p| (p.end_ns - p.start_ns, std::cmp::Reverse(p.start_ns)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from `k6 inspect --execution-requirements` (k6 v1.1.0),
    /// trimmed to the fields used.
    const PLAN: &str = r#"{"scenarios":{
        "ramp":{"executor":"ramping-vus","startTime":null,"startVUs":0,
            "stages":[{"duration":"1s","target":5},{"duration":"2s","target":5},{"duration":"1s","target":0}],
            "gracefulRampDown":"0s"},
        "spike":{"executor":"constant-vus","startTime":"1.5s","vus":2,"duration":"1s"}},
        "totalDuration":"32.5s"}"#;

    const S: u64 = 1_000_000_000;

    #[test]
    fn parses_scenarios_in_start_order() {
        let plan = parse_plan(PLAN).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].name, "ramp");
        assert_eq!(plan[0].stages.len(), 3);
        assert_eq!(plan[1].start_ns, 1_500_000_000);
        assert_eq!(plan[1].vus, Some(2));
    }

    #[test]
    fn stages_are_classified_and_scenarios_named() {
        let plan = parse_plan(PLAN).unwrap();
        let p = phases(&plan, &|_| None);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ramp/ramp-up", "ramp/steady", "ramp/ramp-down", "spike"]);
        assert_eq!((p[1].start_ns, p[1].end_ns, p[1].vus), (S, 3 * S, Some(5)));
        assert_eq!((p[3].start_ns, p[3].end_ns, p[3].vus), (1_500_000_000, 2_500_000_000, Some(2)));
        assert_eq!(steady_phase(&p).unwrap().name, "ramp/steady");
    }

    #[test]
    fn a_single_scenario_uses_plain_stage_names_and_observed_starts() {
        let plan = parse_plan(
            r#"{"scenarios":{"default":{"executor":"ramping-vus","startVUs":1,"stages":[
                {"duration":"2s","target":10},{"duration":"5s","target":10},
                {"duration":"1s","target":20},{"duration":"1s","target":20},{"duration":"2s","target":0}]}}}"#,
        )
        .unwrap();
        let p = phases(&plan, &|name| (name == "default").then_some(100));
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ramp-up", "steady", "ramp-up-2", "steady-2", "ramp-down"]);
        assert_eq!(p[0].start_ns, 100);
        assert_eq!(steady_phase(&p).unwrap().name, "steady", "the longest steady stage");
        assert_eq!(steady_phase(&p).unwrap().vus, Some(10));
    }

    #[test]
    fn bad_plans_are_errors() {
        assert!(parse_plan("not json").is_err());
        assert!(parse_plan(r#"{"scenarios":null}"#).is_err());
        assert!(
            parse_plan(r#"{"scenarios":{"a":{"executor":"constant-vus","duration":"forever"}}}"#)
                .is_err()
        );
    }
}
