//! Throughput at saturation against nginx: one process (no master), a
//! 64-byte static file, installed with apt-get if missing.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use super::agent_run::AgentRun;
use super::compare::saturation_rows;
use super::demo_server::SATURATION_SECS;
use super::load::{Load, LoadSpec, http_load};
use super::results::{Goal, Results};
use super::runs::{Env, each, interleaved};
use crate::process::{KillOnDrop, wait_listening};
use crate::{describe, run};

/// The nginx comparison, or a note saying why it was skipped (no nginx and
/// no apt-get to install it).
pub fn run_scenario(
    env: &mut Env,
    rounds: usize,
    out_dir: &Path,
    results: &mut Results,
    followed: &mut Vec<(AgentRun, Load)>,
) -> Result<()> {
    let nginx = match nginx_binary() {
        Ok(nginx) => nginx,
        Err(e) => {
            let msg = format!("nginx comparison skipped: {e:#}");
            println!("{msg}");
            results.notes.push(msg);
            return Ok(());
        }
    };
    println!("\n== throughput at saturation: nginx ({rounds} rounds)");
    let prefix = out_dir.join("nginx");
    let (server, addr) = start(&nginx, &prefix)?;
    let pid = server.id();
    let url = format!("http://{addr}/index.html");
    println!("nginx pid {pid} on {addr} (master_process off: this pid serves)");
    let probe = http_load(env, &LoadSpec::new(&url, 50_000).on(pid))?;
    let n = ((probe.rps() * SATURATION_SECS) as u64).clamp(50_000, 2_000_000);
    println!("calibration: {:.0} req/s without the agent → {n} requests per run", probe.rps());
    let spec = LoadSpec::new(&url, n).on(pid);
    let pairs = interleaved(env, rounds, pid, |env| http_load(env, &spec))?;
    saturation_rows(results, "nginx", "nginx/", &pairs);
    let count = each(&pairs, |p| p.agent.metric("requests/count", "count") - p.with.requests);
    results.add_spread("accuracy/nginx/request_count_diff", "count", &count).goal =
        Goal::Equal(0.0);
    let p50 = each(&pairs, |p| p.agent.metric("latency/p50", "latency") / p.with.p50_ns);
    results.add_spread("accuracy/nginx/server_p50_over_client_p50", "ratio", &p50).goal =
        Goal::AtMost(1.0);
    drop(server);
    followed.extend(pairs.into_iter().map(|p| (p.agent, p.with)));
    Ok(())
}

/// nginx in the foreground under `prefix` (config, logs, document root), on
/// a free loopback port.
fn start(nginx: &Path, prefix: &Path) -> Result<(KillOnDrop, SocketAddr)> {
    let _ = fs::remove_dir_all(prefix);
    fs::create_dir_all(prefix.join("www"))?;
    fs::create_dir_all(prefix.join("tmp"))?;
    let body: Vec<u8> = b"perf-agent bench nginx\n".iter().copied().cycle().take(64).collect();
    fs::write(prefix.join("www/index.html"), body)?;
    let addr = crate::net::free_loopback_addr()?;
    let conf_path = prefix.join("nginx.conf");
    fs::write(&conf_path, config(prefix, addr))?;
    let mut cmd = Command::new(nginx);
    cmd.arg("-p").arg(prefix).arg("-e").arg(prefix.join("error.log")).arg("-c").arg(&conf_path);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(File::create(prefix.join("stderr.log"))?);
    println!("$ {}", describe(&cmd));
    let mut server =
        KillOnDrop::new(cmd.spawn().with_context(|| format!("cannot start `{}`", describe(&cmd)))?);
    wait_listening(&mut server, addr, "nginx").with_context(|| {
        format!(
            "nginx error log: {}",
            fs::read_to_string(prefix.join("error.log")).unwrap_or_default().trim()
        )
    })?;
    Ok((server, addr))
}

/// One process (no master, so the pid we start serves), no access log,
/// keep-alive connections that last the whole run.
fn config(prefix: &Path, addr: SocketAddr) -> String {
    let p = prefix.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
error_log {p}/error.log warn;
pid {p}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {p}/tmp;
    proxy_temp_path {p}/tmp;
    fastcgi_temp_path {p}/tmp;
    uwsgi_temp_path {p}/tmp;
    scgi_temp_path {p}/tmp;
    server {{
        listen {addr};
        root {p}/www;
    }}
}}
"
    )
}

/// nginx, installed with apt-get if missing (for benchmarking only).
fn nginx_binary() -> Result<PathBuf> {
    let find = || {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| crate::setup::find_in_path("nginx"))
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("nginx is not installed and apt-get is not available");
    }
    println!(
        "\nnginx is not installed: installing it with `apt-get install -y nginx` (used by the benchmark only)"
    );
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-q", "--no-install-recommends", "nginx"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-q"])).context("apt-get update failed")?;
        install().context("apt-get install nginx failed")?;
    }
    find().ok_or_else(|| anyhow!("apt-get installed nginx but no nginx binary was found"))
}
