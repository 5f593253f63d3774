//! The one harness of perf-agent's integration tests: they run the real
//! binary against real fixture processes and compare with `/proc`
//! (read with the agent's own parsers, `perf_agent::procfs`).
//!
//! Under `CI=true` a missing privilege is a failure, never a skip. Outside CI
//! without root, privileged tests skip with a loud message.
#![allow(dead_code)]

mod agent;
pub mod bpf;
mod process;
pub mod prometheus;
pub mod tcp_table;

use std::{
    io::BufReader,
    path::PathBuf,
    process::{ChildStdout, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

// Each test binary uses its own subset.
#[allow(unused_imports)]
pub use agent::{Agent, AgentOutput, measure_during, measure_during_with, run_agent};
#[allow(unused_imports)]
pub use process::{Exit, KillOnDrop};

/// Privileged tests measure CPU and memory of real processes: they hold this
/// lock so that they never compete with each other for the two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Running under CI (`CI=true` or `CI=1`): nothing that CI must check may
/// be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `Some(guard)` when the test may run (hold the guard for the whole test);
/// panics under CI without root.
pub fn privileged() -> Option<std::sync::MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()));
    }
    if in_ci() {
        panic!("CI=true but not running as root: privileged eBPF tests must run in CI");
    }
    eprintln!(
        "\n*** SKIPPED: this test loads eBPF programs and needs root. \
         Run `sudo -E cargo xtask test` to run it. ***\n"
    );
    None
}

pub fn agent_bin() -> PathBuf {
    std::env::var_os("PERF_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_perf-agent")))
}

/// Path of a fixture binary, building the fixtures crate once if needed
/// (same profile as this test binary).
pub fn fixture(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PERF_AGENT_FIXTURES_DIR") {
            return PathBuf::from(dir);
        }
        let dir = agent_bin().parent().expect("bin dir").to_path_buf();
        let release = dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "fixtures"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build -p fixtures");
        assert!(status.success(), "building fixtures failed: {status}");
        dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "fixture {} not built", path.display());
    path
}

/// A running fixture process, killed on drop.
pub struct Target {
    pub process: KillOnDrop,
    pub pid: u32,
    pub stdout: BufReader<ChildStdout>,
    /// The `ready ...` line.
    pub ready: String,
}

impl Target {
    /// Starts fixture `name` and waits for its `ready pid=...` line.
    pub fn start(name: &str, args: &[&str]) -> Target {
        let mut process = KillOnDrop::spawn(
            Command::new(fixture(name)).args(args).stdout(Stdio::piped()),
            &format!("fixture {name}"),
        );
        let pid = process.pid();
        let mut stdout = BufReader::new(process.take_stdout().expect("piped stdout"));
        let line = read_line(&mut stdout);
        assert!(line.starts_with("ready"), "fixture {name} said {line:?} instead of ready");
        Target { process, pid, stdout, ready: line }
    }

    /// `ip:port` from an `addr=` field of the ready line.
    pub fn addr(&self) -> String {
        ready_field(&self.ready, "addr").unwrap_or_else(|| panic!("no addr= in {:?}", self.ready))
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        loop {
            let line = read_line(&mut self.stdout);
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

/// `key=value` field of a fixture's ready line.
pub fn ready_field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace().find_map(|f| f.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// The final JSON line of `http-load`.
#[derive(Debug, serde::Deserialize)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub p50_ns: f64,
    pub p95_ns: f64,
    pub p99_ns: f64,
    pub elapsed_ns: u64,
}

/// Runs the `http-load` fixture to completion.
pub fn http_load(url: &str, args: &[&str]) -> LoadResult {
    let out = Command::new(fixture("http-load"))
        .args(["--url", url])
        .args(args)
        .output()
        .expect("running http-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let result: LoadResult = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("http-load output {stdout:?}: {e}; stderr {}", String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(result.errors, 0, "http-load had I/O errors: {result:?}");
    result
}

fn read_line(r: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    let n = r.read_line(&mut line).expect("reading fixture stdout");
    assert!(n > 0, "fixture closed stdout unexpectedly");
    line.trim_end().to_string()
}

/// The tests' scratch directory, one per user: a root run must not leave
/// one that an unprivileged run cannot write in.
pub fn scratch_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let dir = std::env::temp_dir().join(format!("perf-agent-tests-{}", unsafe { libc::geteuid() }));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh path for a BMF file.
pub fn out_path(test: &str) -> PathBuf {
    let p = scratch_dir().join(format!("{test}-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Reads a BMF file and returns `value` of `benchmark`/`measure`.
pub fn bmf_value(bmf: &serde_json::Value, benchmark: &str, measure: &str) -> f64 {
    bmf.get(benchmark)
        .and_then(|b| b.get(measure))
        .and_then(|m| m.get("value"))
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("BMF has no {benchmark}/{measure}: {bmf:#}"))
}

pub fn read_bmf(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading BMF {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("BMF is JSON");
    validate_bmf(&v);
    v
}

/// Validates against Bencher's BMF schema (docs/bmf.schema.json, a copy of
/// Bencher v0.6.12's).
pub fn validate_bmf(v: &serde_json::Value) {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/bmf.schema.json"))
            .expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "BMF invalid against Bencher's schema: {errors:?}\n{v:#}");
}

/// `/proc/PID/stat` utime + stime, ns (clock-tick resolution).
pub fn proc_cpu_ns(pid: u32) -> u64 {
    let stat = perf_agent::procfs::read_stat(pid).expect("reading /proc/PID/stat");
    stat.cpu_time_ns(perf_agent::procfs::clock_ticks_per_sec())
}

/// `/proc/PID/status` (memory fields in bytes).
pub fn proc_status(pid: u32) -> perf_agent::procfs::ProcStatus {
    perf_agent::procfs::read_status(pid).expect("reading /proc/PID/status")
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Relative error of `a` against `b`.
pub fn rel_err(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

/// The number just before `before` on the summary line that starts with
/// `line_prefix` (`summary_number(out, "connections:", " inbound")`: the
/// `N` of `N inbound`).
pub fn summary_number(stdout: &str, line_prefix: &str, before: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .unwrap_or_else(|| panic!("no {line_prefix:?} line in\n{stdout}"));
    let at = line.find(before).unwrap_or_else(|| panic!("no {before:?} in {line:?}"));
    line[..at].split_whitespace().last().unwrap().trim_end_matches(',').parse().unwrap()
}
