//! The `profile` scenario: what `--profile-dir` costs on top of the agent
//! without it (issue 15's goals), from interleaved runs of the agent with
//! and without profiling:
//!
//! - on a CPU-bound two-thread target (`cpu-burner --threads 2`): the
//!   agent's own CPU and the profiling programs' BPF time (with
//!   `kernel.bpf_stats_enabled` on, read from the agent's summary), % of
//!   one core (goal: ≤ 1 together), samples per second, user-stack bytes copied per
//!   sample, unwinding time per stack and the time to symbolize and write
//!   the profiles (from the agent's summary);
//! - on demo-server at saturation: throughput with profiling ÷ without
//!   (goal: ≥ 0.99).

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use super::agent_run::{AgentRun, RunningAgent};
use super::check_interrupted;
use super::demo_server::{DemoServer, SATURATION_SECS};
use super::load::{Load, LoadSpec, http_load};
use super::results::{Goal, Results};
use super::runs::{Env, agent_first, each};
use crate::process::KillOnDrop;

/// How long the agent follows the CPU-bound target per run.
const FOLLOW_SECS: u64 = 4;
const GOAL_EXTRA_CPU_PERCENT: f64 = 1.0;
const GOAL_THROUGHPUT_RATIO: f64 = 0.99;

/// What the agent's summary says about its profiling (its "cost:" line).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct SummaryCost {
    samples_per_sec: f64,
    stack_bytes: f64,
    unwind_us: f64,
    symbolize_ms: f64,
}

/// Parses `cost: 202.0 samples/s, 12308 B of user stack copied per stack
/// (1011 stacks); unwinding 4.7 µs per stack; symbolizing and writing 96 ms`.
fn parse_cost(summary: &str) -> Option<SummaryCost> {
    let line = summary.lines().find(|l| l.trim_start().starts_with("cost:"))?;
    let number_before = |marker: &str| -> Option<f64> {
        let head = &line[..line.find(marker)?];
        head.split_whitespace().last()?.parse().ok()
    };
    Some(SummaryCost {
        samples_per_sec: number_before(" samples/s")?,
        stack_bytes: number_before(" B of user stack")?,
        unwind_us: number_before(" µs per stack")?,
        symbolize_ms: number_before(" ms")?,
    })
}

/// The profiling programs' BPF time, ns, from the summary's `program cost
/// (kernel.bpf_stats_enabled): NAME N ns × RUNS, …` line (statistics
/// included: ~40–50 ns per run on the reference VM).
fn profile_bpf_ns(summary: &str) -> Option<f64> {
    let line = summary.lines().find(|l| l.starts_with("program cost"))?;
    let list = line.split_once("): ")?.1;
    let mut total = 0.0;
    for item in list.split(", ").filter(|i| i.starts_with("profile_")) {
        let mut words = item.split_whitespace();
        let ns: f64 = words.nth(1)?.parse().ok()?;
        let runs: f64 = words.nth(2)?.parse().ok()?; // after "ns" and "×"
        total += ns * runs;
    }
    Some(total)
}

/// `kernel.bpf_stats_enabled` set to 1 while alive (the programs' run time
/// is then counted), restored when dropped.
struct BpfStatsOn(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsOn {
    fn new() -> Result<BpfStatsOn> {
        let old = fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(BpfStatsOn(old.trim().to_string()))
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.0);
    }
}

/// One agent run following `pid` for `secs` (or during `load`), with
/// `extra` arguments; the run and its stdout.
fn follow(
    env: &mut Env,
    pid: u32,
    extra: &[&str],
    load: &mut dyn FnMut(&Env) -> Result<Option<Load>>,
) -> Result<(AgentRun, Option<Load>, String)> {
    let agent = RunningAgent::start(env, pid, extra)?;
    let stdout_path = env.logs.join(format!("agent-{}.stdout", env.agent_runs));
    let load = load(env)?;
    let run = agent.stop()?;
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    Ok((run, load, stdout))
}

pub fn run_scenario(env: &mut Env, rounds: usize, results: &mut Results) -> Result<()> {
    let dir = env.logs.join("profiles");
    let dir_arg = dir.to_string_lossy().into_owned();
    let profiling = ["--profile-dir", dir_arg.as_str()];
    cpu_bound(env, rounds, results, &profiling)?;
    check_interrupted()?;
    throughput(env, rounds, results, &profiling)
}

fn cpu_bound(
    env: &mut Env,
    rounds: usize,
    results: &mut Results,
    profiling: &[&str],
) -> Result<()> {
    let bin = env.demo_server.with_file_name("cpu-burner");
    let mut child = KillOnDrop::new(
        Command::new(&bin)
            .args(["--threads", "2", "--late-threads", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?,
    );
    let mut line = String::new();
    BufReader::new(child.child().stdout.take().expect("piped")).read_line(&mut line)?;
    let pid = child.id();
    println!(
        "\n== profiling cost: cpu-burner (2 busy threads), {FOLLOW_SECS} s per run ({rounds} rounds)"
    );
    let mut wait = |_: &Env| -> Result<Option<Load>> {
        thread::sleep(Duration::from_secs(FOLLOW_SECS));
        Ok(None)
    };
    let stats = BpfStatsOn::new()?;
    let mut pairs = Vec::new();
    for round in 0..rounds {
        check_interrupted()?;
        let (mut off, mut on) = (None, None);
        let order = if agent_first(round) { [true, false] } else { [false, true] };
        for profile in order {
            if profile {
                on = Some(follow(env, pid, profiling, &mut wait)?);
            } else {
                off = Some(follow(env, pid, &[], &mut wait)?.0);
            }
        }
        let (off, (on, _, summary)) = (off.expect("ran"), on.expect("ran"));
        let cost = parse_cost(&summary)
            .ok_or_else(|| anyhow!("the agent's summary has no profiling `cost:` line"))?;
        let bpf_ns = profile_bpf_ns(&summary)
            .ok_or_else(|| anyhow!("the agent's summary has no `program cost` line"))?;
        let bpf_percent = bpf_ns / on.metric("agent/window", "latency") * 100.0;
        println!(
            "  round {}: agent CPU {:.2} % → {:.2} %, profiling BPF {:.3} %, {:.0} samples/s, \
             {:.0} B/stack, unwind {:.1} µs, symbolize {:.0} ms",
            round + 1,
            off.cpu_percent,
            on.cpu_percent,
            bpf_percent,
            cost.samples_per_sec,
            cost.stack_bytes,
            cost.unwind_us,
            cost.symbolize_ms
        );
        pairs.push((off, on, cost, bpf_percent));
    }
    drop(stats);
    drop(child);
    let extra = each(&pairs, |(off, on, _, bpf)| on.cpu_percent - off.cpu_percent + bpf);
    results.add_spread("profile/extra_cpu_percent", "cpu-percent", &extra).goal =
        Goal::AtMost(GOAL_EXTRA_CPU_PERCENT);
    results.add_spread("profile/bpf_cpu_percent", "cpu-percent", &each(&pairs, |p| p.3));
    results.add_spread(
        "profile/agent_peak_rss_growth",
        "memory",
        &each(&pairs, |(off, on, _, _)| on.peak_rss - off.peak_rss),
    );
    results.add_spread(
        "profile/samples_per_second",
        "count",
        &each(&pairs, |p| p.2.samples_per_sec),
    );
    results.add_spread(
        "profile/stack_bytes_per_sample",
        "count",
        &each(&pairs, |p| p.2.stack_bytes),
    );
    results.add_spread(
        "profile/unwind_ns_per_stack",
        "latency",
        &each(&pairs, |p| p.2.unwind_us * 1e3),
    );
    results.add_spread(
        "profile/symbolize_and_write",
        "latency",
        &each(&pairs, |p| p.2.symbolize_ms * 1e6),
    );
    Ok(())
}

fn throughput(
    env: &mut Env,
    rounds: usize,
    results: &mut Results,
    profiling: &[&str],
) -> Result<()> {
    let server = DemoServer::start(&env.demo_server)?;
    let (pid, url) = (server.pid(), server.url());
    let probe = http_load(env, &LoadSpec::new(&url, 100_000).on(pid))?;
    let requests = ((probe.rps() * SATURATION_SECS) as u64).clamp(50_000, 2_000_000);
    println!(
        "\n== throughput at saturation with profiling ÷ without (the agent on in both): \
         demo-server ({rounds} rounds, {requests} requests)"
    );
    let mut saturate = |env: &Env| http_load(env, &LoadSpec::new(&url, requests).on(pid)).map(Some);
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        check_interrupted()?;
        let (mut off, mut on) = (None, None);
        let order = if agent_first(round) { [true, false] } else { [false, true] };
        for profile in order {
            let extra = if profile { profiling } else { &[] };
            let (_, load, _) = follow(env, pid, extra, &mut saturate)?;
            if profile { on = load } else { off = load }
        }
        let (off, on) = (off.expect("ran"), on.expect("ran"));
        println!(
            "  round {}: {:.0} → {:.0} req/s, target CPU {:.2} → {:.2} µs/request",
            round + 1,
            off.rps(),
            on.rps(),
            off.target_cpu_per_request() / 1e3,
            on.target_cpu_per_request() / 1e3
        );
        ratios.push(on.rps() / off.rps());
        cpu_ratios.push(on.target_cpu_per_request() / off.target_cpu_per_request());
    }
    server.stop()?;
    results.add_spread("profile/throughput_ratio", "ratio", &ratios).goal =
        Goal::AtLeast(GOAL_THROUGHPUT_RATIO);
    // Steadier on a shared VM than saturated throughput: the server's own
    // CPU per request (includes BPF time charged to it).
    results.add_spread("profile/target_cpu_per_request_ratio", "ratio", &cpu_ratios);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_cost_line_parses() {
        let s = "profiles (/x):\n  cost: 202.0 samples/s, 12308 B of user stack copied per \
                 stack (1011 stacks); unwinding 4.7 µs per stack; symbolizing and writing 96 ms\n";
        let c = parse_cost(s).unwrap();
        assert_eq!(
            c,
            SummaryCost {
                samples_per_sec: 202.0,
                stack_bytes: 12308.0,
                unwind_us: 4.7,
                symbolize_ms: 96.0
            }
        );
        assert!(parse_cost("nothing").is_none());
    }

    #[test]
    fn the_profiling_programs_bpf_time_sums_their_runs() {
        let s = "program cost (kernel.bpf_stats_enabled): profile_cpu_clock 3000 ns × 10, \
                 sched_switch 80 ns × 1000, profile_sched_switch 100 ns × 50\n";
        assert_eq!(profile_bpf_ns(s), Some(3000.0 * 10.0 + 100.0 * 50.0));
        assert_eq!(profile_bpf_ns("no such line"), None);
    }
}
