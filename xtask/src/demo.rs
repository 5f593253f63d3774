//! `cargo xtask demo`: perf-agent's main job, end to end, in one command.
//!
//! The agent starts the bundled `demo-server` itself (`perf-agent run`, so
//! startup is measured from its exec), a readiness probe polls `/health`
//! like an orchestrator would, and after an idle window the agent runs k6
//! with `xtask/assets/demo.js` (ramp-up / steady / ramp-down at 10 VUs),
//! follows it, and reports every metric per phase. Results: the per-phase
//! table on stdout and `bench_metrics.json` (BMF) at the workspace root.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Profile, bin_dir, build, describe, is_root, workspace_root};

/// How long the server may take to answer its health check.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn demo() -> Result<()> {
    if !is_root() {
        eprintln!("warning: not root: the agent will fail to load its eBPF programs (use sudo)");
    }
    build(Profile::Release)?;
    let bins = bin_dir(Profile::Release);
    let root = workspace_root();
    let out = root.join("bench_metrics.json");
    let script = root.join("xtask/assets/demo.js");
    let addr = free_loopback_addr()?;
    // A stale report must not pass for this run's.
    let _ = std::fs::remove_file(&out);

    let mut agent_cmd = Command::new(bins.join("perf-agent"));
    agent_cmd
        .arg("run")
        .arg("--k6")
        .arg(&script)
        .arg(format!("--k6-arg=--env=TARGET_URL=http://{addr}/"))
        .args(["--health-path", "/health", "--ready-path", "/health"])
        .arg("--out")
        .arg(&out)
        .arg("--")
        .arg(bins.join("demo-server"))
        .args(["--addr", &addr.to_string()])
        .current_dir(root);
    println!("$ {}", describe(&agent_cmd));
    let mut agent =
        agent_cmd.spawn().with_context(|| format!("cannot start `{}`", describe(&agent_cmd)))?;

    // The readiness probe: what makes startup/to_ready meaningful.
    let started = Instant::now();
    loop {
        if health_ok(addr) {
            break;
        }
        if let Some(status) = agent.try_wait()? {
            bail!("perf-agent exited before the server was ready ({status}); see its output above");
        }
        if started.elapsed() > READY_TIMEOUT {
            let _ = agent.kill();
            let _ = agent.wait();
            bail!("demo-server did not answer /health within {READY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }

    let status = agent.wait()?;
    if !status.success() {
        bail!("perf-agent failed ({status}); see its output above");
    }
    if !out.is_file() {
        bail!("perf-agent succeeded but did not write {}", out.display());
    }
    println!("metrics: {}", out.display());
    Ok(())
}

/// A loopback address with a port free right now.
fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?)
}

/// One `GET /health`; true on a 200.
fn health_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    // Read the whole response: closing with unread bytes would make the
    // kernel reset the connection, which the agent rightly counts as an error.
    let mut response = Vec::new();
    s.read_to_end(&mut response).is_ok() && response.starts_with(b"HTTP/1.1 200")
}
