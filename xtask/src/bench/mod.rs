//! `cargo xtask bench`: perf-agent's own overhead and accuracy, measured on
//! this machine in one bounded run (about five minutes), written as Bencher
//! Metric Format to `target/bench/bench.json` and as a table on stdout.
//!
//! Every comparison interleaves runs without and with the agent (round `i`
//! runs them in the order [without, with] when `i` is even, [with, without]
//! when odd), so slow drift (thermal, other tenants of the VM) hits both
//! sides. A ratio's value is the median of the per-round ratios; its
//! `lower_value` / `upper_value` are their min / max.
//!
//! Scenarios ([`Scenario`], all on loopback; `--only` / `--skip` pick them):
//! - `demo-server`: throughput at saturation, latency at a fixed rate, the
//!   agent's own CPU and memory following 10 k req/s, a connection-per-request
//!   and exec burst run; per-program cost and accuracy from those runs
//!   ([`demo_server`], [`costs`]); then what `--delivery` adds: throughput
//!   with it ÷ without, its hooks' cost per run and per request
//!   ([`delivery`]);
//! - `nginx`: throughput at saturation against nginx ([`nginx`]);
//! - `node-tax`: how much unrelated processes slow down ([`node_tax`]);
//! - `profile`: what `--profile-dir` adds ([`profile`]);
//! - `soak`: `perf-agent serve` over minutes: memory, fds, CPU ([`soak`]);
//! - `micro`: the Criterion micro-benchmarks ([`micro`]).
//!
//! Nothing here fails the command for missing a goal: goals are printed with
//! PASS / FAIL. The command fails only when something could not be measured.

mod agent_run;
mod compare;
mod costs;
mod delivery;
mod demo_server;
mod load;
mod micro;
mod nginx;
mod node_tax;
mod pinning;
mod profile;
mod profile_paired;
mod report;
mod results;
mod runs;
mod soak;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};

use crate::{Profile, bin_dir, build, is_root, target_dir};
use results::Results;
use runs::Env;

/// What `cargo xtask bench` runs, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Throughput, latency, the agent's cost and accuracy on demo-server, and
    /// what --delivery adds (~3 min).
    DemoServer,
    /// Throughput at saturation on nginx, installed with apt-get if missing (~40 s).
    Nginx,
    /// Unrelated syscall-, TCP- and Unix-socket-bound processes with and without the agent (~2½ min).
    NodeTax,
    /// What --profile-dir adds: CPU on a busy target, throughput on demo-server (~1½ min).
    Profile,
    /// perf-agent serve on 10 targets at 10 k req/s, scraped every second
    /// (PERF_AGENT_SOAK_SECS, default 120 s).
    Soak,
    /// The Criterion micro-benchmarks (no root needed; ~1 min once built).
    Micro,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::DemoServer,
        Scenario::Nginx,
        Scenario::NodeTax,
        Scenario::Profile,
        Scenario::Soak,
        Scenario::Micro,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::DemoServer => "demo-server",
            Scenario::Nginx => "nginx",
            Scenario::NodeTax => "node-tax",
            Scenario::Profile => "profile",
            Scenario::Soak => "soak",
            Scenario::Micro => "micro",
        }
    }

    /// Whether it runs the agent (root, and a release build of it).
    fn runs_agent(self) -> bool {
        self != Scenario::Micro
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// The scenarios to run, in [`Scenario::ALL`]'s order.
    pub scenarios: Vec<Scenario>,
    /// Rounds of [without, with] per comparison.
    pub rounds: usize,
    /// Rewrite the results section of docs/performance.md.
    pub update_doc: bool,
}

impl Options {
    /// `only` (all if empty) less `skip`, in the canonical order; an error if
    /// nothing is left.
    pub fn scenarios(only: &[Scenario], skip: &[Scenario]) -> Result<Vec<Scenario>> {
        let picked: Vec<Scenario> = Scenario::ALL
            .into_iter()
            .filter(|s| (only.is_empty() || only.contains(s)) && !skip.contains(s))
            .collect();
        if picked.is_empty() {
            bail!("--only and --skip leave no scenario to run (scenarios: {})", all_names());
        }
        Ok(picked)
    }

    /// `demo-server,nginx,…`, as `--only` takes it.
    fn scenario_list(&self) -> String {
        self.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>().join(",")
    }
}

fn all_names() -> String {
    Scenario::ALL.map(Scenario::name).join(", ")
}

/// Set by SIGINT / SIGTERM: the run stops at the next step, cleaning up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn bench(options: Options) -> Result<()> {
    let started = Instant::now();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let out_dir = target_dir().join("bench");
    fs::create_dir_all(&out_dir)?;
    let mut results = Results::default();
    let runs_agent = options.scenarios.iter().any(|s| s.runs_agent());
    if runs_agent && !is_root() {
        bail!(
            "`cargo xtask bench` needs root for the {} scenario(s): the agent loads eBPF \
             programs. Run it with sudo, or only `--only micro`",
            options
                .scenarios
                .iter()
                .filter(|s| s.runs_agent())
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if runs_agent {
        build(Profile::Release)?;
    }
    run_scenarios(&options, &mut results)?;

    let json_path = out_dir.join("bench.json");
    fs::write(&json_path, serde_json::to_string_pretty(&results.bmf())? + "\n")?;
    let machine = report::Machine::read();
    println!("\n{}\n{}", machine.one_line(), results.text_table());
    let markdown = report::results_markdown(&machine, &results, &options, started.elapsed());
    fs::write(out_dir.join("results.md"), &markdown)?;
    println!("wrote {} and {}", json_path.display(), out_dir.join("results.md").display());
    if options.update_doc {
        report::update_doc(&markdown)?;
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn run_scenarios(options: &Options, results: &mut Results) -> Result<()> {
    let out_dir = target_dir().join("bench");
    let bins = bin_dir(Profile::Release);
    let logs = out_dir.join("logs");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs)?;
    let mut env = Env {
        agent: bins.join("perf-agent"),
        http_load: bins.join("http-load"),
        demo_server: bins.join("demo-server"),
        unix_pingpong: bins.join("unix-pingpong"),
        logs,
        agent_runs: 0,
        bpf_stats: false,
    };
    let rounds = options.rounds.max(1);
    // Every with-agent run of the load scenarios, for the rows over all runs.
    let mut followed = Vec::new();
    for &scenario in &options.scenarios {
        check_interrupted()?;
        match scenario {
            Scenario::DemoServer => {
                demo_server::run_scenario(&mut env, rounds, results, &mut followed)?
            }
            Scenario::Nginx => {
                nginx::run_scenario(&mut env, rounds, &out_dir, results, &mut followed)?
            }
            Scenario::NodeTax => node_tax::run_scenario(&mut env, rounds, results)?,
            Scenario::Profile => profile::run_scenario(&mut env, rounds, results)?,
            Scenario::Soak => soak::run_scenario(&mut env, results)?,
            Scenario::Micro => micro::run_scenario(results)?,
        }
    }
    if !followed.is_empty() {
        costs::all_runs_rows(results, &followed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_and_skip_pick_scenarios_in_order() {
        use Scenario::*;
        assert_eq!(Options::scenarios(&[], &[]).unwrap(), Scenario::ALL);
        assert_eq!(Options::scenarios(&[Micro, NodeTax], &[]).unwrap(), [NodeTax, Micro]);
        assert_eq!(
            Options::scenarios(&[], &[Nginx, Micro]).unwrap(),
            [DemoServer, NodeTax, Profile, Soak]
        );
        let e = Options::scenarios(&[Micro], &[Micro]).unwrap_err().to_string();
        assert!(e.contains("no scenario") && e.contains("node-tax"), "{e}");
    }
}
