//! The demo-server scenarios: throughput at saturation, latency at a fixed
//! rate, the agent's own cost following 10 k req/s (with accuracy), and the
//! per-connection and per-exec cost run.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::thread;

use anyhow::{Context, Result, anyhow};

use super::agent_run::{AgentRun, with_agent};
use super::check_interrupted;
use super::compare::saturation_rows;
use super::delivery;
use super::load::{CONNECTIONS, Load, LoadSpec, exec_burst, http_load};
use super::results::{Goal, Results};
use super::runs::{Env, Pair, each, interleaved};
use crate::process::{KillOnDrop, Reaped, wait_listening};

/// Length of one load run at saturation.
pub const SATURATION_SECS: f64 = 3.0;
/// The fixed-rate latency scenario: well below saturation.
const LATENCY_RATE: u64 = 5_000;
const LATENCY_SECS: u64 = 3;
/// The agent-cost scenario: the agent following ~10 k req/s.
const COST_RATE: u64 = 10_000;
const COST_SECS: u64 = 4;
/// The per-connection and per-exec cost run: new connections per second and
/// for how long, and processes started meanwhile.
const CONNECT_RATE: u64 = 2_000;
const CONNECT_SECS: u64 = 2;
const EXEC_BURST: usize = 500;
/// Goals (issues "Benchmarks: the agent's own overhead and accuracy" and 12).
const GOAL_P99_RATIO: f64 = 1.05;
const GOAL_AGENT_CPU_PERCENT: f64 = 1.0;
const GOAL_AGENT_RSS: f64 = 30.0 * 1024.0 * 1024.0;
const GOAL_BPF_NS_PER_REQUEST: f64 = 500.0;

/// A demo-server on an ephemeral loopback port.
pub struct DemoServer {
    child: KillOnDrop,
    pub addr: SocketAddr,
    /// Kept open so the server never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl DemoServer {
    /// Starts it and waits until it accepts connections.
    pub fn start(bin: &Path) -> Result<DemoServer> {
        let mut child = KillOnDrop::new(
            Command::new(bin)
                .args(["--addr", "127.0.0.1:0"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))?,
        );
        let mut stdout = BufReader::new(child.child().stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or_else(|| {
                anyhow!("demo-server did not print `ready pid=… addr=…` (got {line:?})")
            })?;
        wait_listening(&mut child, addr, "demo-server")?;
        Ok(DemoServer { child, addr, _stdout: stdout })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Kills it; its CPU time over its whole life.
    pub fn stop(self) -> Result<Reaped> {
        self.child.kill_and_reap()
    }
}

/// Every demo-server scenario, on one server process; the with-agent runs
/// join `followed` for the all-runs rows.
pub fn run_scenario(
    env: &mut Env,
    rounds: usize,
    results: &mut Results,
    followed: &mut Vec<(AgentRun, Load)>,
) -> Result<()> {
    let server = DemoServer::start(&env.demo_server)?;
    let (pid, url) = (server.pid(), server.url());
    println!("demo-server pid {pid} on {}", server.addr);
    // Calibrate: how many requests take SATURATION_SECS without the agent.
    let probe = http_load(env, &LoadSpec::new(&url, 100_000).on(pid))?;
    let saturated = ((probe.rps() * SATURATION_SECS) as u64).clamp(50_000, 2_000_000);
    println!(
        "calibration: {:.0} req/s without the agent → {saturated} requests per saturation run",
        probe.rps()
    );

    println!(
        "\n== throughput at saturation: demo-server ({rounds} rounds, {CONNECTIONS} keep-alive connections)"
    );
    let pairs = interleaved(env, rounds, pid, |env| {
        http_load(env, &LoadSpec::new(&url, saturated).on(pid))
    })?;
    saturation_rows(results, "demo-server", "", &pairs);
    followed.extend(pairs.into_iter().map(|p| (p.agent, p.with)));

    check_interrupted()?;
    fixed_rate_latency(env, rounds, results, followed, &url, pid)?;
    check_interrupted()?;
    agent_cost(env, rounds, results, followed, &url, pid)?;
    check_interrupted()?;
    connection_per_request(env, followed, &url, pid)?;
    check_interrupted()?;
    let saturation = LoadSpec::new(&url, saturated).on(pid);
    let cost = LoadSpec::new(&url, COST_RATE * delivery::COST_SECS).at_rate(COST_RATE).on(pid);
    delivery::run_step(env, rounds, results, saturation, cost)?;
    server.stop()?;
    Ok(())
}

fn fixed_rate_latency(
    env: &mut Env,
    rounds: usize,
    results: &mut Results,
    followed: &mut Vec<(AgentRun, Load)>,
    url: &str,
    pid: u32,
) -> Result<()> {
    println!(
        "\n== latency at a fixed {LATENCY_RATE} req/s for {LATENCY_SECS} s: demo-server ({rounds} rounds)"
    );
    let spec = LoadSpec::new(url, LATENCY_RATE * LATENCY_SECS).at_rate(LATENCY_RATE).on(pid);
    let pairs = interleaved(env, rounds, pid, |env| http_load(env, &spec))?;
    results.add_spread(
        "overhead/latency_p50_ratio",
        "ratio",
        &each(&pairs, |p| p.ratio(|l| l.p50_ns)),
    );
    results
        .add_spread("overhead/latency_p99_ratio", "ratio", &each(&pairs, |p| p.ratio(|l| l.p99_ns)))
        .goal = Goal::AtMost(GOAL_P99_RATIO);
    let mut client_rows = |name: &str, f: fn(&Load) -> f64| {
        let without = each(&pairs, |p| f(&p.without));
        let with = each(&pairs, |p| f(&p.with));
        results.add_spread(format!("demo-server/client_{name}_without_agent"), "latency", &without);
        results.add_spread(format!("demo-server/client_{name}_with_agent"), "latency", &with);
    };
    client_rows("p50", |l| l.p50_ns);
    client_rows("p99", |l| l.p99_ns);
    followed.extend(pairs.into_iter().map(|p| (p.agent, p.with)));
    Ok(())
}

/// The agent following COST_RATE req/s, with the statistics on: its own CPU
/// and memory, the BPF time per request, and accuracy.
fn agent_cost(
    env: &mut Env,
    rounds: usize,
    results: &mut Results,
    followed: &mut Vec<(AgentRun, Load)>,
    url: &str,
    pid: u32,
) -> Result<()> {
    println!(
        "\n== the agent following {COST_RATE} req/s for {COST_SECS} s: demo-server ({rounds} rounds)"
    );
    let spec = LoadSpec::new(url, COST_RATE * COST_SECS).at_rate(COST_RATE).on(pid);
    env.bpf_stats = true;
    let pairs = interleaved(env, rounds, pid, |env| http_load(env, &spec));
    env.bpf_stats = false;
    let pairs = pairs?;
    results.add_spread(
        format!("overhead/latency_p99_ratio_at_{COST_RATE}"),
        "ratio",
        &each(&pairs, |p| p.ratio(|l| l.p99_ns)),
    );
    results
        .add_spread("agent/cpu_percent", "cpu-percent", &each(&pairs, |p| p.agent.cpu_percent))
        .goal = Goal::AtMost(GOAL_AGENT_CPU_PERCENT);
    results.add_spread("agent/peak_rss", "memory", &each(&pairs, |p| p.agent.peak_rss)).goal =
        Goal::AtMost(GOAL_AGENT_RSS);
    bpf_time_rows(results, &pairs);
    accuracy(results, &pairs);
    followed.extend(pairs.into_iter().map(|p| (p.agent, p.with)));
    Ok(())
}

/// BPF time: kernel-side cost, charged to whoever triggered the events, not
/// to the agent.
fn bpf_time_rows(results: &mut Results, pairs: &[Pair]) {
    let cpu = each(pairs, |p| p.agent.bpf_ns() / p.agent.metric("agent/window", "latency") * 100.0);
    results.add_spread("agent/bpf_cpu_percent", "cpu-percent", &cpu).note =
        "the agent's BPF programs, system-wide, % of one core".into();
    // Per request served: what one keep-alive request costs in BPF time,
    // client-side events included (they pass the same hooks).
    let per_request = each(pairs, |p| p.agent.bpf_ns() / p.with.requests);
    results.add_spread("overhead/bpf_ns_per_request", "latency", &per_request).note =
        "all programs' run time ÷ requests, the statistics' floor included".into();
    let net = each(pairs, |p| p.agent.bpf_ns_net() / p.with.requests);
    let row = results.add_spread("overhead/bpf_ns_per_request_net", "latency", &net);
    row.goal = Goal::AtMost(GOAL_BPF_NS_PER_REQUEST);
    row.note = "the same less the floor per program run: the cost with the statistics off".into();
}

/// Accuracy of the agent-cost runs: the agent vs /proc and vs the client.
fn accuracy(results: &mut Results, pairs: &[Pair]) {
    let cpu = each(pairs, |p| p.agent.metric("cpu/time", "cpu-time") / p.agent.target_proc_cpu_ns);
    results.add_spread("accuracy/cpu_time_ratio", "ratio", &cpu).note =
        "agent cpu/time ÷ /proc utime+stime (10 ms ticks)".into();
    let rss = each(pairs, |p| p.agent.metric("memory/rss", "memory") / p.agent.target_vm_rss);
    results.add_spread("accuracy/rss_ratio", "ratio", &rss).note =
        "agent memory/rss ÷ VmRSS".into();
    let count = each(pairs, |p| p.agent.metric("requests/count", "count") - p.with.requests);
    results.add_spread("accuracy/request_count_diff", "count", &count).goal = Goal::Equal(0.0);
    let p50 = each(pairs, |p| p.agent.metric("latency/p50", "latency") / p.with.p50_ns);
    let row = results.add_spread("accuracy/server_p50_over_client_p50", "ratio", &p50);
    row.goal = Goal::AtMost(1.0);
    row.note = "server-side p50 ÷ http-load p50".into();
    let p99 = each(pairs, |p| p.agent.metric("latency/p99", "latency") / p.with.p99_ns);
    results.add_spread("accuracy/server_p99_over_client_p99", "ratio", &p99);
}

/// One with-agent run with the statistics on, of connection-per-request load
/// and a burst of short processes, so the programs that run per connection
/// and per exec are timed under load too (not from a handful of cold runs).
fn connection_per_request(
    env: &mut Env,
    followed: &mut Vec<(AgentRun, Load)>,
    url: &str,
    pid: u32,
) -> Result<()> {
    println!(
        "\n== per-connection and per-exec cost: {CONNECT_RATE} new connections/s for \
         {CONNECT_SECS} s and {EXEC_BURST} short processes, with the agent"
    );
    let spec = LoadSpec {
        new_connection_per_request: true,
        ..LoadSpec::new(url, CONNECT_RATE * CONNECT_SECS).at_rate(CONNECT_RATE).on(pid)
    };
    env.bpf_stats = true;
    let run = with_agent(env, pid, &mut |env| {
        let burst = thread::spawn(|| exec_burst(EXEC_BURST));
        let load = http_load(env, &spec);
        let execs = burst.join().map_err(|_| anyhow!("the exec burst panicked"))??;
        println!("  {execs} processes started meanwhile");
        load
    });
    env.bpf_stats = false;
    let (load, run) = run?;
    println!(
        "  {:.0} requests on new connections; agent: {} requests",
        load.requests,
        run.metric("requests/count", "count")
    );
    followed.push((run, load));
    Ok(())
}
