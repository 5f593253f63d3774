//! Rows over every with-agent run of the bench: per-program cost, request
//! counts against the client, dropped events.

use super::agent_run::{AgentRun, FLOOR_PROGRAM};
use super::load::Load;
use super::results::{Goal, Results, max, min};

/// Programs that run for (nearly) every event on the machine (the last two
/// only with `--delivery`: `delivery.rs`).
pub const HOT_PROGRAMS: [&str; 5] =
    ["sched_switch", "tcp_rcv_space_adjust", "tcp_sendmsg_locked", "sk_data_ready", "tcp_probe"];
/// Average run time goals, the statistics' floor included.
pub const GOAL_HOT_NS: f64 = 100.0;
pub const GOAL_ANY_NS: f64 = 200.0;
/// Runs a program needs in the cost scenarios before its average is held
/// against a goal.
pub const MIN_RUNS_FOR_GOAL: f64 = 100.0;

/// The rows over all runs; `runs` is every with-agent run and its load.
pub fn all_runs_rows(results: &mut Results, runs: &[(AgentRun, Load)]) {
    let diffs: Vec<f64> = runs
        .iter()
        .map(|(run, load)| run.metric("requests/count", "count") - load.requests)
        .collect();
    let worst = diffs.iter().copied().fold(0.0, |a: f64, d| if d.abs() > a.abs() { d } else { a });
    let row = results.add("accuracy/request_count_diff_all_runs", "count", worst);
    row.goal = Goal::Equal(0.0);
    row.range = Some((min(&diffs), max(&diffs)));
    row.note = format!("agent − client, worst of {} with-agent runs", diffs.len());
    let dropped: f64 = runs.iter().map(|(r, _)| r.metric("agent/dropped_events", "count")).sum();
    results.add("agent/dropped_events_all_runs", "count", dropped).goal = Goal::Equal(0.0);
    program_costs(results, runs);
}

/// Per-program cost over every with-agent run that had the statistics on:
/// the value is total run time ÷ total runs, the range the per-run averages'
/// min / max.
fn program_costs(results: &mut Results, runs: &[(AgentRun, Load)]) {
    let mut names: Vec<&String> = runs.iter().flat_map(|(r, _)| r.programs.keys()).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return; // no run had the statistics on
    }
    let mut rows = Vec::new();
    for name in names.into_iter().filter(|n| *n != FLOOR_PROGRAM) {
        let Some(cost) = per_program(runs, name) else { continue }; // reported, never ran
        rows.push((name.clone(), cost, HOT_PROGRAMS.contains(&name.as_str())));
    }
    // Hot programs first, then the rest by name.
    rows.sort_by_key(|r| !r.2);
    for (name, ProgramCost { ns, runs: count, range }, hot) in &rows {
        let row = results.add(format!("overhead/prog_ns/{name}"), "latency", *ns);
        row.range = Some(*range);
        if *count >= MIN_RUNS_FOR_GOAL {
            row.goal = Goal::AtMost(if *hot { GOAL_HOT_NS } else { GOAL_ANY_NS });
            row.note = format!("{}{count:.0} runs", if *hot { "hot; " } else { "" });
        } else {
            // A handful of runs, each paying cold caches, says nothing about
            // the cost under load: no verdict.
            row.note = format!("{count:.0} runs: too few to judge against the goal");
        }
    }
    // The statistics' own cost per run, measured by an empty program in the
    // same runs (see agent-ebpf/src/stats.rs).
    let Some(ProgramCost { ns: floor_ns, runs: floor_runs, .. }) = per_program(runs, FLOOR_PROGRAM)
    else {
        results.notes.push(format!("no {FLOOR_PROGRAM} cost: the statistics' floor is unknown"));
        return;
    };
    results.add("overhead/prog_ns_floor", "latency", floor_ns).note = format!(
        "an empty program on sched_switch, {floor_runs:.0} runs: the statistics' own cost, \
         included in every prog_ns"
    );
    for (name, cost, _) in &rows {
        results.add(format!("overhead/prog_ns_net/{name}"), "latency", cost.ns - floor_ns).note =
            "prog_ns − prog_ns_floor".into();
    }
}

/// One program's cost over several runs.
#[derive(Debug, PartialEq)]
struct ProgramCost {
    /// Total run time ÷ total runs, ns.
    ns: f64,
    runs: f64,
    /// Min and max of the per-run averages.
    range: (f64, f64),
}

/// The cost of program `name` over all `runs`; `None` if it never ran.
fn per_program(runs: &[(AgentRun, Load)], name: &str) -> Option<ProgramCost> {
    let per_run: Vec<(f64, f64)> =
        runs.iter().filter_map(|(r, _)| r.programs.get(name).copied()).collect();
    let count: f64 = per_run.iter().map(|(_, n)| n).sum();
    let avgs: Vec<f64> = per_run.iter().map(|(ns, _)| *ns).collect();
    (count > 0.0).then(|| ProgramCost {
        ns: per_run.iter().map(|(ns, n)| ns * n).sum::<f64>() / count,
        runs: count,
        range: (min(&avgs), max(&avgs)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(programs: &[(&str, f64, f64)]) -> (AgentRun, Load) {
        let programs = programs.iter().map(|&(n, ns, c)| (n.to_string(), (ns, c))).collect();
        (AgentRun { programs, ..AgentRun::default() }, Load::default())
    }

    #[test]
    fn program_cost_is_weighted_by_runs() {
        let runs = [run_with(&[("a", 100.0, 1.0)]), run_with(&[("a", 50.0, 3.0)])];
        let cost = per_program(&runs, "a").unwrap();
        assert_eq!(cost, ProgramCost { ns: 62.5, runs: 4.0, range: (50.0, 100.0) });
        assert!(per_program(&runs, "b").is_none());
    }

    #[test]
    fn goals_depend_on_heat_and_run_count() {
        let runs = [run_with(&[
            ("sched_switch", 90.0, 1000.0),
            ("rss_stat", 150.0, 1000.0),
            ("sched_process_exec", 900.0, 5.0),
            (FLOOR_PROGRAM, 40.0, 1000.0),
        ])];
        let mut r = Results::default();
        program_costs(&mut r, &runs);
        let goal = |b: &str| r.rows.iter().find(|row| row.benchmark == b).map(|row| row.goal);
        assert!(goal("overhead/prog_ns/sched_switch") == Some(Goal::AtMost(GOAL_HOT_NS)));
        assert!(goal("overhead/prog_ns/rss_stat") == Some(Goal::AtMost(GOAL_ANY_NS)));
        assert!(goal("overhead/prog_ns/sched_process_exec") == Some(Goal::None));
        assert!(goal(&format!("overhead/prog_ns/{FLOOR_PROGRAM}")).is_none());
        let net = r.rows.iter().find(|row| row.benchmark == "overhead/prog_ns_net/rss_stat");
        assert_eq!(net.map(|row| row.value), Some(110.0));
    }
}
