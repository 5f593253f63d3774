//! Rows of a throughput comparison at saturation, shared by demo-server and
//! nginx: throughput, the machine's CPU per request, the target's own CPU
//! per request.

use super::results::{Goal, Results};
use super::runs::{Pair, each};

/// Target throughput with ÷ without the agent.
pub const GOAL_THROUGHPUT_RATIO: f64 = 0.97;
/// Machine CPU per request with ÷ without the agent.
pub const GOAL_MACHINE_CPU_RATIO: f64 = 1.03;

/// `server` names the server's rows (`demo-server/…`); `overhead` the
/// overhead rows' infix (`overhead/{overhead}throughput_ratio`).
pub fn saturation_rows(results: &mut Results, server: &str, overhead: &str, pairs: &[Pair]) {
    results
        .add_spread(
            format!("overhead/{overhead}throughput_ratio"),
            "ratio",
            &each(pairs, |p| p.ratio(|l| l.rps())),
        )
        .goal = Goal::AtLeast(GOAL_THROUGHPUT_RATIO);
    results.add_spread(
        format!("{server}/throughput_without_agent"),
        "throughput",
        &each(pairs, |p| p.without.rps()),
    );
    results.add_spread(
        format!("{server}/throughput_with_agent"),
        "throughput",
        &each(pairs, |p| p.with.rps()),
    );
    // The steadier view of the throughput overhead: at saturation throughput
    // is CPU-bound, and CPU per request does not move with how the scheduler
    // happened to share two cores between client and server in a given run
    // (which throughput does, by ±20 % from run to run on this VM).
    let row = results.add_spread(
        format!("overhead/{overhead}cpu_per_request_ratio"),
        "ratio",
        &each(pairs, |p| p.ratio(|l| l.busy_per_request())),
    );
    row.goal = Goal::AtMost(GOAL_MACHINE_CPU_RATIO);
    row.note = "machine busy CPU per request, with ÷ without (/proc/stat, 10 ms ticks)".into();
    results.add_spread(
        format!("{server}/cpu_per_request_without_agent"),
        "latency",
        &each(pairs, |p| p.without.busy_per_request()),
    );
    results.add_spread(
        format!("{server}/cpu_per_request_with_agent"),
        "latency",
        &each(pairs, |p| p.with.busy_per_request()),
    );
    // What the target's users feel: BPF programs that run in its syscalls
    // are charged to its own CPU time.
    results
        .add_spread(
            format!("overhead/{overhead}target_cpu_per_request_ratio"),
            "ratio",
            &each(pairs, |p| p.ratio(|l| l.target_cpu_per_request())),
        )
        .note = "the target's utime+stime per request, with ÷ without (/proc/PID/stat)".into();
    results.add_spread(
        format!("{server}/target_cpu_per_request_without_agent"),
        "latency",
        &each(pairs, |p| p.without.target_cpu_per_request()),
    );
    results.add_spread(
        format!("{server}/target_cpu_per_request_with_agent"),
        "latency",
        &each(pairs, |p| p.with.target_cpu_per_request()),
    );
}
