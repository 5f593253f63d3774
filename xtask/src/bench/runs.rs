//! Where the binaries are, and interleaved [without, with] rounds.

use std::path::PathBuf;

use anyhow::Result;

use super::agent_run::{AgentRun, with_agent};
use super::check_interrupted;
use super::load::Load;

/// Where the fixture and agent binaries are, and where run logs go.
pub struct Env {
    pub agent: PathBuf,
    pub http_load: PathBuf,
    pub demo_server: PathBuf,
    /// The node tax's Unix-socket workload.
    pub unix_pingpong: PathBuf,
    pub logs: PathBuf,
    /// Agent runs so far: numbers each run's files under `logs`.
    pub agent_runs: usize,
    /// Turn on `kernel.bpf_stats_enabled` during with-agent runs. Only the
    /// cost scenarios do: the statistics time every program run (two clock
    /// reads each), which would inflate the overhead the comparisons measure.
    pub bpf_stats: bool,
}

/// One round of a comparison: the same load without and with the agent.
pub struct Pair {
    pub without: Load,
    pub with: Load,
    pub agent: AgentRun,
}

impl Pair {
    /// `f(with) ÷ f(without)`.
    pub fn ratio(&self, f: impl Fn(&Load) -> f64) -> f64 {
        f(&self.with) / f(&self.without)
    }
}

/// Per-round values of `f` over `pairs`.
pub fn each<T>(pairs: &[T], f: impl Fn(&T) -> f64) -> Vec<f64> {
    pairs.iter().map(f).collect()
}

/// The order of round `round`: even rounds run without the agent first, odd
/// rounds with it first, so slow drift (thermal, other tenants of the VM)
/// hits both sides.
pub fn agent_first(round: usize) -> bool {
    round % 2 == 1
}

/// `rounds` pairs of (without, with) runs of `load` against `pid`,
/// alternating which goes first.
pub fn interleaved(
    env: &mut Env,
    rounds: usize,
    pid: u32,
    mut load: impl FnMut(&Env) -> Result<Load>,
) -> Result<Vec<Pair>> {
    let mut out = Vec::new();
    for round in 0..rounds {
        check_interrupted()?;
        let (mut without, mut with) = (None, None);
        let order = if agent_first(round) { [true, false] } else { [false, true] };
        for agent in order {
            if agent {
                let (l, r) = with_agent(env, pid, &mut load)?;
                println!(
                    "  round {} with agent:    {}  (agent: {} requests, CPU {:.2} %)",
                    round + 1,
                    one_line(&l),
                    r.metric("requests/count", "count"),
                    r.cpu_percent
                );
                with = Some((l, r));
            } else {
                let l = load(env)?;
                println!("  round {} without agent: {}", round + 1, one_line(&l));
                without = Some(l);
            }
        }
        let (with, agent) = with.expect("ran");
        out.push(Pair { without: without.expect("ran"), with, agent });
    }
    Ok(out)
}

fn one_line(l: &Load) -> String {
    format!(
        "{:>9.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  target CPU {:>5.2} µs/req",
        l.rps(),
        l.p50_ns / 1e3,
        l.p99_ns / 1e3,
        l.target_cpu_per_request() / 1e3
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_which_side_goes_first() {
        let firsts: Vec<bool> = (0..4).map(agent_first).collect();
        assert_eq!(firsts, [false, true, false, true]);
    }
}
