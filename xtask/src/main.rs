//! `cargo xtask`: the project's tasks, in Rust so they run wherever cargo does.
//!
//! perf-agent needs more than `cargo build`: its eBPF half is built by
//! `agent/build.rs` with a nightly toolchain, `rust-src` and `bpf-linker`, its
//! integration tests need the fixture binaries and root, and the demo needs k6.
//! Each subcommand first runs [`setup`], so a fresh clone needs nothing but
//! `cargo xtask test` (which is what CI runs, via `.ci/run`).

mod bench;
mod demo;
mod ebpf_toolchain;
mod fuzz;
mod gates;
mod net;
mod process;
mod procfs;
mod setup;
mod test;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "perf-agent's build, test and demo tasks", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (nightly, rust-src, bpf-linker,
    /// k6); quiet when everything is already there.
    Setup {
        /// Also install optional benchmarking tools (bpftool, wrk) with apt-get.
        #[arg(long)]
        bench_tools: bool,
    },
    /// Set up, then build perf-agent and the fixtures (release unless --debug).
    Build {
        /// Release build (the default; accepted for clarity).
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Debug build instead.
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build in release, and run the whole test suite one test at a
    /// time. Arguments after `--` go to `cargo test`; a second `--` starts the
    /// test binaries' own arguments (e.g. `-- -p perf-agent -- --nocapture`).
    Test {
        #[arg(last = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and profile the demo server under a k6 load for 10 s,
    /// writing bench_metrics.json at the workspace root.
    Demo,
    /// Set up, build, and measure the agent's own overhead and accuracy on
    /// this machine (loopback only, about 5 minutes; needs root): BPF
    /// per-event cost, throughput and latency with vs without the agent
    /// (demo-server and nginx), the agent's CPU and memory, accuracy vs /proc
    /// and the client, the tax on unrelated processes, and the Criterion
    /// micro-benchmarks. Writes target/bench/bench.json (BMF) and
    /// target/bench/results.md.
    Bench {
        /// Run only these scenarios (comma-separated), e.g. `--only node-tax`
        /// for the node tax alone in about a minute and a half.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Scenario>,
        /// Skip these scenarios (comma-separated).
        #[arg(long, value_enum, value_delimiter = ',')]
        skip: Vec<bench::Scenario>,
        /// Rounds of [without agent, with agent] per comparison.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: u32,
        /// Also rewrite the results section of docs/performance.md.
        #[arg(long)]
        update_doc: bool,
    },
}

fn main() -> ExitCode {
    match run_task(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Printed by hand: anyhow's Debug output would add a backtrace
            // whenever RUST_BACKTRACE is set, burying the message.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Setup { bench_tools } => setup::setup(setup::Options { bench_tools }),
        Task::Build { release: _, debug } => {
            setup::setup(setup::Options::default())?;
            let profile = if debug { Profile::Debug } else { Profile::Release };
            build(profile)?;
            println!("{}", agent_bin(profile).display());
            Ok(())
        }
        Task::Test { args } => {
            setup::setup(setup::Options::default())?;
            test::test(&args)
        }
        Task::Demo => {
            setup::setup(setup::Options::default())?;
            demo::demo()
        }
        Task::Bench { only, skip, rounds, update_doc } => {
            let scenarios = bench::Options::scenarios(&only, &skip)?;
            setup::setup(setup::Options::default())?;
            bench::bench(bench::Options { scenarios, rounds: rounds as usize, update_doc })
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// Builds the agent and the fixtures: what tests and the demo run.
fn build(profile: Profile) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "perf-agent", "-p", "fixtures"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    run(&mut cmd).context(
        "building perf-agent failed (see cargo's output above); \
         `cargo xtask setup` installs the eBPF toolchain it needs",
    )?;
    let bin = agent_bin(profile);
    if !bin.is_file() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(())
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace")
}

/// cargo's target directory, honouring `CARGO_TARGET_DIR`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where `cargo build` puts binaries (perf-agent and the fixtures) for `profile`.
fn bin_dir(profile: Profile) -> PathBuf {
    target_dir().join(profile.dir())
}

fn agent_bin(profile: Profile) -> PathBuf {
    bin_dir(profile).join("perf-agent")
}

/// The cargo that runs us (`$CARGO`), so nested builds use the same toolchain,
/// run from the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// `program args…` as a shell-like string, for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdio; an error unless it exits 0.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` with captured output; an error (including its stderr) unless it
/// exits 0.
fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Captured stdout of a successful `cmd`, as text.
fn stdout_of(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&output(cmd)?.stdout).into_owned())
}

/// Whether we run with effective uid 0. Loading eBPF programs needs it (or
/// CAP_BPF + CAP_PERFMON, which we don't try to detect).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Whether we run under CI (`CI=true` or `CI=1`, as GitHub Actions and most
/// CI services set it): there, skipping what cannot run is an error.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
