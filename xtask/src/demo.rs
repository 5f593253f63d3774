//! `cargo xtask demo`: perf-agent's main job, end to end, in one command.
//!
//! Starts the `demo-server` fixture on a free loopback port, attaches the agent
//! to it for [`DURATION_SECS`], and drives it with k6 (`xtask/assets/demo.js`,
//! ramp-up / steady / ramp-down) meanwhile. The agent prints its summary on
//! stdout and writes `bench_metrics.json` at the workspace root.
//!
//! How the agent is invoked lives in [`agent_command`] alone, so switching to
//! `perf-agent run --k6 SCRIPT -- CMD` later is a local change.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Profile, bin_dir, build, describe, is_root, target_dir, workspace_root};

/// How long the agent measures.
const DURATION_SECS: u64 = 10;
/// Head start of the agent over k6, so it is attached before load begins.
const K6_DELAY: Duration = Duration::from_millis(500);
/// Extra time the agent gets past its duration to write its report.
const AGENT_GRACE: Duration = Duration::from_secs(30);

/// The agent's command line for the demo (run from the workspace root).
fn agent_command(agent: &Path, pid: u32, out: &Path) -> Command {
    let mut cmd = Command::new(agent);
    cmd.arg("attach")
        .args(["--pid", &pid.to_string()])
        .args(["--duration", &DURATION_SECS.to_string()])
        .arg("--out")
        .arg(out);
    cmd
}

pub fn demo() -> Result<()> {
    if !is_root() {
        eprintln!("warning: not root: the agent will likely fail to load its eBPF programs");
    }
    build(Profile::Release)?;
    let bins = bin_dir(Profile::Release);
    let root = workspace_root();
    let out = root.join("bench_metrics.json");
    let script = root.join("xtask/assets/demo.js");
    let log_dir = target_dir().join("demo");
    fs::create_dir_all(&log_dir)?;
    let k6_log = log_dir.join("k6.log");

    let (server, addr, _server_stdout) = start_server(&bins.join("demo-server"))?;
    let server = Guard(server);
    println!("demo-server pid {} listening on {addr}", server.0.id());

    // A stale report must not pass for this run's.
    let _ = fs::remove_file(&out);
    let mut agent_cmd = agent_command(&bins.join("perf-agent"), server.0.id(), &out);
    agent_cmd.current_dir(root);
    println!("$ {}", describe(&agent_cmd));
    let mut agent = Guard(
        agent_cmd.spawn().with_context(|| format!("cannot start `{}`", describe(&agent_cmd)))?,
    );

    thread::sleep(K6_DELAY);
    if let Some(status) = agent.0.try_wait()? {
        bail!("perf-agent exited before the load started ({status}); see its output above");
    }
    let url = format!("http://{addr}/");
    let log = File::create(&k6_log)?;
    let mut k6_cmd = Command::new("k6");
    k6_cmd
        .args(["run", "--quiet", "--no-color", "-e"])
        .arg(format!("TARGET_URL={url}"))
        .arg(&script)
        .stdout(log.try_clone()?)
        .stderr(log);
    println!("$ {} (output in {})", describe(&k6_cmd), k6_log.display());
    let mut k6 =
        Guard(k6_cmd.spawn().context("cannot start k6 (`cargo xtask setup` installs it)")?);

    let agent_status =
        wait_timeout(&mut agent.0, Duration::from_secs(DURATION_SECS) + AGENT_GRACE)?;
    let k6_status = wait_timeout(&mut k6.0, Duration::from_secs(30))?;
    drop(server); // kills the demo server

    match k6_status {
        Some(s) if s.success() => {}
        Some(s) => eprintln!("warning: k6 failed ({s}); see {}", k6_log.display()),
        None => eprintln!("warning: k6 did not finish in time; see {}", k6_log.display()),
    }
    match agent_status {
        Some(s) if s.success() => {}
        Some(s) => bail!("perf-agent failed ({s}); see its output above"),
        None => bail!(
            "perf-agent did not finish within {}s of its {DURATION_SECS}s duration; killed it",
            AGENT_GRACE.as_secs()
        ),
    }
    if !out.is_file() {
        bail!("perf-agent succeeded but did not write {}", out.display());
    }
    println!("metrics: {}", out.display());
    Ok(())
}

/// Starts demo-server on an ephemeral loopback port and waits until it
/// accepts connections. Returns the child, its address and its stdout (kept
/// open so the server never writes into a closed pipe).
fn start_server(bin: &Path) -> Result<(Child, SocketAddr, BufReader<ChildStdout>)> {
    let mut child = Command::new(bin)
        .args(["--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse::<SocketAddr>().ok());
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("demo-server did not print `ready pid=… addr=…` (got {line:?})");
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("demo-server does not accept connections on {addr}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok((child, addr, stdout))
}

/// Waits for `child` up to `timeout`; `None` (and the child killed) if it is
/// still running then.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Kills and reaps the child when dropped, so no error path leaves a demo
/// server or an agent running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
