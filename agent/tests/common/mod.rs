//! Helpers for perf-agent's privileged integration tests: they run the real
//! binary against real fixture processes and compare with `/proc`.
//!
//! Under `CI=true` a missing privilege is a failure, never a skip. Outside CI
//! without root, tests skip with a loud message.
#![allow(dead_code)]

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// Privileged tests measure CPU and memory of real processes: they hold this
/// lock so that they never compete with each other for the two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `Some(guard)` when the test may run (hold the guard for the whole test);
/// panics under CI without root.
pub fn privileged() -> Option<std::sync::MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()));
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
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
    pub child: Child,
    pub pid: u32,
    pub stdout: BufReader<ChildStdout>,
    /// The `ready ...` line.
    pub ready: String,
}

impl Target {
    /// Starts fixture `name` and waits for its `ready pid=...` line.
    pub fn start(name: &str, args: &[&str]) -> Target {
        let mut child = Command::new(fixture(name))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting fixture {name}: {e}"));
        let pid = child.id();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let line = read_line(&mut stdout);
        assert!(line.starts_with("ready"), "fixture {name} said {line:?} instead of ready");
        Target { child, pid, stdout, ready: line }
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

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// A running `perf-agent` with piped stdout/stderr.
pub struct Agent {
    pub child: Child,
    stderr: BufReader<std::process::ChildStderr>,
    pub stderr_text: String,
    stdout: Option<BufReader<ChildStdout>>,
    pub stdout_text: String,
}

/// What a finished agent left.
pub struct AgentOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Agent {
    pub fn spawn(args: &[&str]) -> Agent {
        Agent::spawn_env(args, &[])
    }

    /// Like [`Agent::spawn`] with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut child = Command::new(agent_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting perf-agent");
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let stdout = child.stdout.take().map(BufReader::new);
        Agent { child, stderr, stderr_text: String::new(), stdout, stdout_text: String::new() }
    }

    /// Reads stdout (where a launched target's output goes too) until a line
    /// starting with `prefix`; returns it.
    pub fn expect_stdout_line(&mut self, prefix: &str) -> String {
        let stdout = self.stdout.as_mut().expect("stdout piped");
        loop {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).expect("reading agent stdout");
            assert!(n > 0, "agent stdout closed before {prefix:?}:\n{}", self.stdout_text);
            self.stdout_text.push_str(&line);
            if line.starts_with(prefix) {
                return line.trim_end().to_string();
            }
        }
    }

    /// Reads stderr until a line containing `needle`.
    pub fn expect_stderr(&mut self, needle: &str) {
        loop {
            let mut line = String::new();
            let n = self.stderr.read_line(&mut line).expect("reading agent stderr");
            self.stderr_text.push_str(&line);
            assert!(n > 0, "agent stderr closed before {needle:?}:\n{}", self.stderr_text);
            if line.contains(needle) {
                return;
            }
        }
    }

    /// Blocks until the agent says it attached; panics with its output if it
    /// exits first.
    pub fn wait_attached(&mut self) {
        loop {
            let mut line = String::new();
            let n = self.stderr.read_line(&mut line).expect("reading agent stderr");
            self.stderr_text.push_str(&line);
            if n == 0 {
                let status = self.child.wait().expect("waiting for perf-agent");
                panic!("perf-agent exited before attaching ({status}):\n{}", self.stderr_text);
            }
            if line.contains("attached to PID") {
                return;
            }
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn finish(mut self) -> AgentOutput {
        use std::io::Read as _;
        let mut rest = String::new();
        let _ = self.stderr.read_to_string(&mut rest);
        let mut stdout = std::mem::take(&mut self.stdout_text);
        if let Some(mut s) = self.stdout.take() {
            let _ = s.read_to_string(&mut stdout);
        }
        let status = self.child.wait().expect("waiting for perf-agent");
        self.stderr_text.push_str(&rest);
        AgentOutput {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: std::mem::take(&mut self.stderr_text),
        }
    }
}

/// Runs the agent to completion.
pub fn run_agent(args: &[&str]) -> AgentOutput {
    Agent::spawn(args).finish()
}

/// A fresh path for a BMF file.
pub fn out_path(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("perf-agent-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{test}-{}.json", std::process::id()));
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

/// `/proc/PID/stat` utime+stime in ns.
pub fn proc_cpu_ns(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let rest = &text[text.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split(' ').skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    // After ')' the fields start at 3 (state), so field N is at N - 3; skip(1) drops state.
    let (utime, stime) = (f[14 - 4], f[15 - 4]);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    (utime + stime) * 1_000_000_000 / ticks
}

/// A `/proc/PID/status` field in bytes (kB lines).
pub fn proc_status_bytes(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in status"));
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
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
