//! `cargo xtask demo`: perf-agent's main job, end to end, in one command.
//!
//! The agent starts the bundled `demo-server` itself (`perf-agent run`, so
//! startup is measured from its exec), a readiness probe polls `/health`
//! like an orchestrator would, and after an idle window the agent runs k6
//! with `xtask/assets/demo.js` (ramp-up / steady / ramp-down at 10 VUs),
//! follows it, and reports every metric per phase. Results: the per-phase
//! table on stdout and `bench_metrics.json` (BMF) at the workspace root.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::net::{free_loopback_addr, get_ok};
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
        if get_ok(addr, "/health") {
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
