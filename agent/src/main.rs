//! perf-agent: measure a running server with eBPF, without modifying it.
//!
//! The command line only: `attach` (a running process, or the next exec of a
//! program), `run` (launch a command under the probes), `mark` (start a named
//! phase), `measures` (Bencher set-up). What each does is in
//! `perf_agent::measure`; the rest of the library is plain modules.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use perf_agent::{
    bmf, cgroup,
    compare::{self, CompareOptions},
    load::LoadOptions,
    measure::{self, MeasureOptions},
    outcome::exit,
    probes::PathOptions,
};

#[derive(Parser)]
#[command(name = "perf-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure a running process (--pid), or the next one to exec a program
    /// (--wait-exec), until --duration ends, Ctrl-C/SIGTERM, or it exits.
    Attach(AttachArgs),
    /// Start CMD with the probes in place before its exec and measure it,
    /// startup included.
    Run(RunArgs),
    /// Start a named phase in every running perf-agent (for load tools other
    /// than k6): the phase lasts until the next mark or the end of the run.
    Mark {
        /// Phase name: 1 to 64 of [A-Za-z0-9-_./].
        name: String,
    },
    /// Judge NEW against BASE, metric by metric: pass, warn or fail by
    /// REQ-OBS-001's thresholds (or --thresholds), with Welch's t-test when
    /// each side has 3 runs or more. Exit status 0 pass, 10 warn, 11 fail.
    Compare(CompareArgs),
    /// Compare two profiles: two --profile-dir directories (each profile
    /// they have in common) or two .folded/.pb.gz files. Writes a
    /// differential flame graph and a table of the functions whose share
    /// grew or shrank most per profile into --out, and prints the tables.
    Diff {
        /// The earlier profile (directory or file).
        base: PathBuf,
        /// The later profile (directory or file).
        new: PathBuf,
        /// Directory for `<phase>.<kind>.diff.svg` and `.diff.txt`.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Node mode: follow the processes the selectors match (now and after
    /// restarts) and serve their metrics for Prometheus on GET /metrics,
    /// until SIGTERM.
    Serve(ServeArgs),
    /// Print the `bencher measure create` commands for perf-agent's custom
    /// measures (memory, cpu-percent, cpu-time, count, percent), with their units.
    Measures {
        /// Bencher project slug.
        #[arg(long, default_value = "PROJECT")]
        project: String,
    },
}

#[derive(clap::Args)]
#[group(id = "target", required = true, multiple = false)]
struct TargetArgs {
    /// PID of the process (thread group) to measure.
    #[arg(long, group = "target")]
    pid: Option<u32>,
    /// Wait for the next exec of this program (a command name, or a path as
    /// the launcher execs it) and measure it from its exec.
    #[arg(long, value_name = "NAME_OR_PATH", group = "target")]
    wait_exec: Option<String>,
}

#[derive(clap::Args)]
struct AttachArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    common: CommonArgs,
    /// Allow PID 1.
    #[arg(long)]
    force: bool,
    /// Read the results of a k6 run made elsewhere with `--out json=FILE`
    /// and cut the run into its phases (idle, each scenario, cooldown).
    #[arg(long, value_name = "K6_OUTPUT.json", conflicts_with = "k6")]
    k6_results: Option<PathBuf>,
    /// Arguments for k6 (with --k6), after `--`.
    #[arg(last = true, value_name = "K6_ARGS")]
    k6_args: Vec<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Run CMD in a cgroup of its own limited to this many CPUs' worth of
    /// time, as `docker run --cpus` (0.5: 50 ms per 100 ms period).
    #[arg(long, value_name = "CPUS", value_parser = cgroup_arg(cgroup::limits::parse_cpus))]
    cpus: Option<String>,
    /// Run CMD in a cgroup of its own limited to this much memory and no
    /// swap, as `docker run --memory` (128m, 1g, bytes).
    #[arg(long, value_name = "SIZE", value_parser = cgroup_arg(cgroup::limits::parse_memory))]
    memory: Option<String>,
    /// Start CMD and measure it (startup, idle, load) N times; --out gets
    /// the median of the runs (min and max as lower/upper values), each run
    /// goes to <out>.runs/run-<i>.json.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// The command to start, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address for GET /metrics and /healthz; a non-loopback one is warned about.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR:PORT")]
    listen: String,
    /// A running process (not followed after it exits). Repeatable.
    #[arg(long, value_name = "PID")]
    pid: Vec<u32>,
    /// Every process that execs this program, now and later. Repeatable.
    #[arg(long, value_name = "PATH")]
    exe: Vec<String>,
    /// Every process with this command name, now and later. Repeatable.
    #[arg(long, value_name = "NAME")]
    comm: Vec<String>,
    /// The process listening on this TCP port. Repeatable.
    #[arg(long, value_name = "PORT")]
    port: Vec<u16>,
    /// Every process in this cgroup v2 directory (a container). Repeatable.
    #[arg(long, value_name = "PATH")]
    cgroup: Vec<PathBuf>,
    /// How often targets are looked for and requests collected, ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    interval: u64,
    /// Most processes followed at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_targets: u32,
    /// Histogram bucket bounds in seconds (default: OpenTelemetry's).
    #[arg(long, value_delimiter = ',', value_name = "SECS,...")]
    buckets: Vec<f64>,
    /// Also export where requests' time goes outside the application:
    /// receive-queue, drain and delivered histograms (three more kernel
    /// hooks on every TCP socket of the node; see docs/performance.md).
    #[arg(long)]
    delivery: bool,
}

/// `compare BASE NEW`, or `compare BASE... -- NEW...`.
#[derive(clap::Args)]
struct CompareArgs {
    /// BASE then NEW: a BMF file or a directory of them (one run per file)
    /// each. With `--`, all of these are BASE.
    #[arg(required = true, value_name = "BASE")]
    base: Vec<PathBuf>,
    /// After `--`: NEW's BMF files or directories.
    #[arg(last = true, value_name = "NEW")]
    new: Vec<PathBuf>,
    /// Thresholds file (TOML or JSON): per category and per metric-id glob.
    #[arg(long, value_name = "FILE")]
    thresholds: Option<PathBuf>,
    /// Also write the comparison as Markdown (e.g. "$GITHUB_STEP_SUMMARY").
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Also write the release-notes table: metric, NEW's value, change
    /// against BASE.
    #[arg(long, value_name = "FILE")]
    release_notes: Option<PathBuf>,
    /// Also write the comparison as one self-contained HTML page.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Name of BASE in the tables (default: its file or directory name).
    #[arg(long, value_name = "NAME")]
    base_label: Option<String>,
    /// Name of NEW in the tables.
    #[arg(long, value_name = "NAME")]
    new_label: Option<String>,
}

impl CompareArgs {
    /// Splits the positional arguments into the two sides.
    fn options(self) -> Result<CompareOptions, String> {
        let (base, new) = if self.new.is_empty() {
            match <[PathBuf; 2]>::try_from(self.base) {
                Ok([base, new]) => (vec![base], vec![new]),
                Err(given) => {
                    return Err(format!(
                        "compare takes BASE NEW (got {} paths); for several runs a side use \
                         `compare BASE1 BASE2 ... -- NEW1 NEW2 ...` or a directory each",
                        given.len()
                    ));
                }
            }
        } else {
            (self.base, self.new)
        };
        Ok(CompareOptions {
            base,
            new,
            thresholds: self.thresholds,
            markdown: self.markdown,
            release_notes: self.release_notes,
            report: self.report,
            base_label: self.base_label,
            new_label: self.new_label,
        })
    }
}

#[derive(clap::Args)]
struct CommonArgs {
    /// Seconds to measure (fractions allowed); without it, until interrupted
    /// or until the target exits.
    #[arg(long, value_parser = parse_duration, allow_negative_numbers = true)]
    duration: Option<Duration>,
    /// Write Bencher Metric Format JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Sampling interval in milliseconds (10..=60000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    interval: u64,
    /// Startup is healthy at the first 2xx response to a request for this path
    /// (default: at the first complete response).
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    /// Startup is ready at the first 2xx response to a request for this path
    /// (default: at the first 2xx response).
    #[arg(long, value_name = "PATH")]
    ready_path: Option<String>,
    /// Seconds of the idle window: right after startup, or before k6 starts.
    #[arg(long, value_parser = parse_duration, value_name = "SECS", allow_negative_numbers = true)]
    idle: Option<Duration>,
    /// Run this k6 script after the idle window, follow it, and report every
    /// metric per phase (idle, ramp-up, steady, ramp-down, each scenario,
    /// cooldown), with k6's client-side numbers beside the agent's.
    #[arg(long, value_name = "SCRIPT.js")]
    k6: Option<PathBuf>,
    /// One more argument for `k6 run` (repeatable), e.g. --k6-arg=--env=URL=...
    #[arg(long = "k6-arg", value_name = "ARG", allow_hyphen_values = true)]
    k6_arg: Vec<String>,
    /// Write the run's page here: one self-contained HTML file (timelines
    /// with the phases as bands, startup waterfall, per-phase table with
    /// k6's numbers beside the agent's, profile links). With --repeat: the
    /// medians' page, each run's beside it as <stem>.run-<i>.html.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Write the run's phases (name, start and end as Unix ns) as JSON here.
    #[arg(long, value_name = "FILE")]
    phases_json: Option<PathBuf>,
    /// Seconds measured after k6 ends.
    #[arg(
        long,
        default_value = "2",
        value_parser = parse_duration,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    cooldown: Duration,
    /// Write CPU profiles here (created if missing): per phase and for the
    /// whole run (`run`), `<phase>.cpu.folded`, `.svg` and `.pb.gz` (pprof),
    /// and off-CPU ones (`<phase>.offcpu.*`, weighted in ns blocked).
    #[arg(long, value_name = "DIR")]
    profile_dir: Option<PathBuf>,
    /// Profiling samples per second per CPU (with --profile-dir).
    #[arg(long, value_name = "HZ", default_value_t = perf_agent::profile::DEFAULT_HZ, requires = "profile_dir")]
    profile_hz: u32,
    /// With --profile-dir: off-CPU stacks aimed at per second per CPU
    /// (default: a quarter of --profile-hz, 25). Each costs several
    /// samples' time (a blocked thread's stack copied from its memory);
    /// each thread's time off CPU is counted whatever the rate, the stacks
    /// share it.
    #[arg(long, value_name = "HZ", requires = "profile_dir", conflicts_with = "no_off_cpu")]
    off_cpu_hz: Option<u32>,
    /// With --profile-dir: no off-CPU profiles (stacks where threads block,
    /// weighted by the time blocked).
    #[arg(long, requires = "profile_dir")]
    no_off_cpu: bool,
    /// With --profile-dir: also time every run-queue wait of the target
    /// (wake-up or preemption to running) for sched/runq_wait_p50|p99, and
    /// take the time the hypervisor stole from its threads out of their
    /// off-CPU time exactly (else estimated from /proc/stat). Attaches
    /// sched_switch, which runs at every context switch of the machine:
    /// ~0.1 µs each, ~1.3 % of a saturated server's throughput here
    /// (docs/performance.md).
    #[arg(long, requires = "profile_dir")]
    runq_waits: bool,
    /// With --profile-dir: where the debug files of stripped modules are
    /// found by build-id (DIR/.build-id/ab/cdef….debug, as gdb's
    /// debug-file-directory: what distributions' -dbg/-dbgsym packages install).
    #[arg(long, value_name = "DIR", default_value = perf_agent::profile::DEFAULT_DEBUG_DIR, requires = "profile_dir")]
    debug_dir: PathBuf,
    /// With --profile-dir: a FIFO (made with mkfifo) whose lines `disable`
    /// and `enable` pause and resume profiling, as perf record's --control:
    /// paused, its programs are detached and cost nothing. With a second
    /// FIFO after a comma, `ack` is written to it once each command is in
    /// effect (with --runq-waits, resuming can take seconds on a saturated
    /// host).
    #[arg(long, value_name = "CTL[,ACK]", requires = "profile_dir")]
    profile_control: Option<perf_agent::profile::pause::ControlPaths>,
    /// Also measure where each request's time goes outside the application:
    /// receive queue, drain until the client's ACK, delivered, accept wait,
    /// retransmits (three more kernel hooks on every TCP socket; ~0.34 µs of
    /// kernel time per request, see docs/performance.md).
    #[arg(long)]
    delivery: bool,
}

impl CommonArgs {
    /// `extra_k6_args`: attach's arguments after `--`.
    fn options(self, extra_k6_args: Vec<String>, k6_results: Option<PathBuf>) -> MeasureOptions {
        let load = match (self.k6, k6_results) {
            (Some(script), _) => {
                let mut args = self.k6_arg;
                args.extend(extra_k6_args);
                LoadOptions::K6 { script, args, cooldown: self.cooldown }
            }
            (None, Some(file)) => LoadOptions::K6Results { file },
            (None, None) => LoadOptions::None,
        };
        // Before k6 a few seconds of quiet make a meaningful idle baseline.
        let default_idle = if matches!(load, LoadOptions::K6 { .. }) { 3 } else { 2 };
        MeasureOptions {
            duration: self.duration,
            out: self.out,
            phases_json: self.phases_json,
            report: self.report,
            interval: Duration::from_millis(self.interval),
            paths: PathOptions { health_path: self.health_path, ready_path: self.ready_path },
            idle: self.idle.unwrap_or(Duration::from_secs(default_idle)),
            load,
            profile: self.profile_dir.map(|dir| perf_agent::profile::ProfileOptions {
                dir,
                hz: self.profile_hz,
                off_cpu: !self.no_off_cpu,
                off_cpu_hz: self
                    .off_cpu_hz
                    .unwrap_or_else(|| perf_agent::profile::default_off_cpu_hz(self.profile_hz)),
                runq_waits: self.runq_waits,
                debug_dir: self.debug_dir,
                control: self.profile_control,
            }),
            delivery: self.delivery,
        }
    }
}

/// Validates with `check`, keeps the text (the limits are built from it).
fn cgroup_arg<T>(
    check: fn(&str) -> Result<T, String>,
) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s| check(s).map(|_| s.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration must be a positive number of seconds, got {s}"));
    }
    if secs > 366.0 * 86_400.0 {
        return Err(format!("duration {s} s is longer than a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Never preempt the target (or anything else) when the agent wakes.
    perf_agent::priority::run_as_batch();
    let result = match cli.command {
        Command::Attach(args) => {
            if !args.k6_args.is_empty() && args.common.k6.is_none() {
                eprintln!("perf-agent: error: arguments after `--` are for k6: give --k6 SCRIPT");
                return ExitCode::from(2);
            }
            let opts = args.common.options(args.k6_args, args.k6_results);
            match (args.target.pid, args.target.wait_exec) {
                (Some(pid), _) => measure::attach_pid(pid, args.force, &opts),
                (None, Some(name)) => measure::attach_wait_exec(&name, &opts),
                (None, None) => unreachable!("clap requires one of --pid, --wait-exec"),
            }
        }
        Command::Run(args) => {
            let limits = cgroup::Limits::parse(args.cpus.as_deref(), args.memory.as_deref())
                .expect("validated by clap");
            if args.repeat > 1 && args.common.out.is_none() {
                eprintln!("perf-agent: error: --repeat needs --out FILE (the medians go there)");
                return ExitCode::from(2);
            }
            let opts = args.common.options(Vec::new(), None);
            if args.repeat > 1 {
                perf_agent::repeat::run_repeated(&args.command, &opts, &limits, args.repeat)
            } else {
                measure::run(&args.command, &opts, &limits)
            }
        }
        Command::Mark { name } => {
            perf_agent::marks::append_mark(&name, perf_agent::clock::monotonic_ns()).map(|path| {
                eprintln!("perf-agent: phase {name} starts now ({})", path.display());
                exit::OK
            })
        }
        Command::Compare(args) => match args.options() {
            Ok(opts) => compare::run(&opts),
            Err(e) => {
                eprintln!("perf-agent: error: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Diff { base, new, out } => {
            perf_agent::profile::diff::diff(&base, &new, &out).map(|report| {
                print!("{report}");
                exit::OK
            })
        }
        Command::Serve(a) => perf_agent::serve::run(&perf_agent::serve::ServeOptions {
            listen: a.listen,
            pids: a.pid,
            exes: a.exe,
            comms: a.comm,
            ports: a.port,
            cgroups: a.cgroup,
            interval: Duration::from_millis(a.interval),
            max_targets: a.max_targets,
            buckets: if a.buckets.is_empty() {
                perf_agent::serve::registry::DEFAULT_BUCKETS.to_vec()
            } else {
                a.buckets
            },
            delivery: a.delivery,
        }),
        Command::Measures { project } => {
            print!("{}", bmf::measure_setup_commands(&project));
            Ok(exit::OK)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("perf-agent: error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_must_be_positive_and_finite() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["0", "-3", "nan", "inf", "abc", "1e12"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compare_sides_from_positional_arguments() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["perf-agent", "compare"], args].concat()).unwrap();
            let Command::Compare(args) = cli.command else { panic!("not compare") };
            args.options()
        };
        let o = parse(&["a.json", "b.json"]).unwrap();
        assert_eq!((o.base, o.new), (vec![PathBuf::from("a.json")], vec![PathBuf::from("b.json")]));
        let o = parse(&["a1", "a2", "a3", "--", "b1", "b2"]).unwrap();
        assert_eq!((o.base.len(), o.new.len()), (3, 2));
        let e = parse(&["a1", "a2", "a3"]).unwrap_err();
        assert!(e.contains("got 3 paths") && e.contains("--"), "{e}");
        assert!(parse(&["only-one.json"]).is_err());
    }

    /// `--delivery` is off unless given, and reaches the options of attach,
    /// run and serve.
    #[test]
    fn delivery_is_opt_in_on_attach_run_and_serve() {
        let delivery = |args: &[&str]| -> bool {
            match Cli::try_parse_from([&["perf-agent"], args].concat()).unwrap().command {
                Command::Attach(a) => a.common.options(Vec::new(), None).delivery,
                Command::Run(a) => a.common.options(Vec::new(), None).delivery,
                Command::Serve(a) => a.delivery,
                _ => panic!("not attach, run or serve"),
            }
        };
        assert!(!delivery(&["attach", "--pid", "1"]));
        assert!(delivery(&["attach", "--pid", "1", "--delivery"]));
        assert!(!delivery(&["run", "--", "true"]));
        assert!(delivery(&["run", "--delivery", "--", "true"]));
        assert!(!delivery(&["serve", "--pid", "1"]));
        assert!(delivery(&["serve", "--pid", "1", "--delivery"]));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
