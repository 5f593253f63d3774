//! A `perf-agent` run by a test: its stdout and stderr go to files (nothing
//! can block on a full pipe, and a launched target's output lands there too),
//! it is reaped with `wait4` (so its own peak RSS is known) and killed on drop.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{KillOnDrop, agent_bin, bmf_value, out_path, read_bmf, scratch_dir};

/// How long the agent may take to attach (load, seed, attach every program).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`run_agent`] waits for a run to end.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Agent {
    process: KillOnDrop,
    pub pid: u32,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// What a finished agent left.
#[derive(Debug)]
pub struct AgentOutput {
    /// Exit status, or 128 + the signal that killed it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Peak RSS of the agent's own image, bytes: its `VmHWM`, read until
    /// it exits (at most a millisecond of growth before exit is missed).
    /// Not `wait4`'s `ru_maxrss`: exec keeps the high-water mark of the
    /// image it replaced, and a spawned child's first image is the test
    /// process's (after a test that held 100 000 sockets, 30–50 MiB).
    pub max_rss: u64,
}

impl Agent {
    pub fn spawn(args: &[&str]) -> Agent {
        Agent::spawn_env(args, &[])
    }

    /// Like [`Agent::spawn`] with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(agent_bin());
        cmd.args(args).envs(env.iter().copied());
        Agent::spawn_cmd(&mut cmd, args)
    }

    /// Runs `cmd`, which ends up exec'ing perf-agent (through setpriv, say).
    pub fn spawn_cmd(cmd: &mut Command, label: &[&str]) -> Agent {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = scratch_dir().join(format!("agent-{}-{n}", std::process::id()));
        let stdout_path = base.with_extension("stdout");
        let stderr_path = base.with_extension("stderr");
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap());
        let process = KillOnDrop::spawn(cmd, &format!("perf-agent {label:?}"));
        Agent { pid: process.pid(), process, stdout_path, stderr_path }
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Polls `find` over the output until it gives a value; panics with the
    /// output if the agent ends first or `timeout` passes.
    fn poll<T>(&self, what: &str, timeout: Duration, find: impl Fn(&Agent) -> Option<T>) -> T {
        let end = Instant::now() + timeout;
        loop {
            let ended = !self.process.alive();
            // Read after the liveness check: output written just before the
            // end is seen.
            if let Some(found) = find(self) {
                return found;
            }
            assert!(
                !ended,
                "perf-agent ended before {what}:\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            assert!(Instant::now() < end, "no {what} within {timeout:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Blocks until the agent says it attached.
    pub fn wait_attached(&self) {
        self.poll("attaching", ATTACH_TIMEOUT, |a| {
            a.stderr().contains("attached to PID").then_some(())
        });
    }

    /// Blocks until a stderr line contains `needle`.
    pub fn expect_stderr(&self, needle: &str) {
        self.poll(needle, ATTACH_TIMEOUT, |a| a.stderr().contains(needle).then_some(()));
    }

    /// Blocks until a stdout line (a launched target's output goes there too)
    /// starts with `prefix`; returns it.
    pub fn expect_stdout_line(&self, prefix: &str) -> String {
        self.poll(prefix, ATTACH_TIMEOUT, |a| {
            a.stdout().lines().find(|l| l.starts_with(prefix)).map(str::to_string)
        })
    }

    pub fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    /// Still running.
    pub fn alive(&self) -> bool {
        self.process.alive()
    }

    /// Waits up to `timeout` for the agent to end; panics (and kills it)
    /// after that.
    pub fn wait(mut self, timeout: Duration) -> AgentOutput {
        let end = std::time::Instant::now() + timeout;
        let mut hwm = 0;
        let exit = loop {
            // Until it is a zombie (no `Vm*` lines then: 0), the last
            // reading is the peak so far.
            let now = perf_agent::procfs::read_status(self.pid).map_or(0, |s| s.vm_hwm);
            hwm = hwm.max(now);
            if let Some(exit) = self.process.try_reap() {
                break exit;
            }
            if std::time::Instant::now() >= end {
                panic!("perf-agent did not end within {timeout:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        AgentOutput {
            code: exit.code,
            stdout: self.stdout(),
            stderr: self.stderr(),
            max_rss: if hwm > 0 { hwm } else { exit.max_rss() },
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.stdout_path);
        let _ = fs::remove_file(&self.stderr_path);
    }
}

/// Attaches to `pid`, runs `load` while attached, stops the agent with
/// SIGINT (no --duration: a complete run) and returns its BMF and summary
/// (stdout). Fails if the agent did not exit cleanly or lost events.
pub fn measure_during(pid: u32, test: &str, load: impl FnOnce()) -> (serde_json::Value, String) {
    measure_during_with(pid, test, &[], load)
}

/// [`measure_during`] with more `attach` arguments (`--delivery`, ...).
pub fn measure_during_with(
    pid: u32,
    test: &str,
    extra: &[&str],
    load: impl FnOnce(),
) -> (serde_json::Value, String) {
    let out = out_path(test);
    let pid = pid.to_string();
    let mut args = vec!["attach", "--pid", &pid, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let agent = Agent::spawn(&args);
    agent.wait_attached();
    load();
    // Let the last responses' events (and ACKs) reach the event ring's
    // next drain.
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(libc::SIGINT);
    let result = agent.wait(Duration::from_secs(30));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    eprintln!("{}", result.stdout);
    let bmf = read_bmf(&out);
    assert_eq!(bmf_value(&bmf, "agent/dropped_events", "count"), 0.0, "events were lost");
    (bmf, result.stdout)
}

/// Runs the agent to completion.
pub fn run_agent(args: &[&str]) -> AgentOutput {
    Agent::spawn(args).wait(RUN_TIMEOUT)
}
