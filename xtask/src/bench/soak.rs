//! The soak of node mode: `perf-agent serve` following 10 demo-servers
//! while http-load sends 10 000 requests/s (to one server at a time, in
//! turn) and a scraper reads `/metrics` every second, for
//! `PERF_AGENT_SOAK_SECS` (default 120 s; the hours-long run of
//! docs/reliability.md sets it). The agent's VmRSS and open fds are
//! sampled every 5 s: they must stay flat after the warm-up. Its CPU time
//! (utime and stime, /proc) over the whole load is the CPU goal; the
//! requests it counted (its final `/metrics`) against those http-load sent
//! is the accuracy check.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::check_interrupted;
use super::demo_server::DemoServer;
use super::load::{LoadSpec, http_load};
use super::results::{Goal, Results};
use super::runs::Env;
use crate::process::KillOnDrop;
use crate::procfs::{self, Status};

const TARGETS: usize = 10;
const RATE: u64 = 10_000;
/// Requests per http-load run: 20 s at RATE (http-load runs are bounded).
const CHUNK_SECS: u64 = 20;
const WARM_UP: Duration = Duration::from_secs(20);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The goals: memory with 10 targets, CPU of one core.
const GOAL_RSS: f64 = 30.0 * 1024.0 * 1024.0;
const GOAL_CPU_PERCENT: f64 = 1.0;
/// "Flat": at most this much RSS growth from the end of the warm-up.
const GOAL_RSS_GROWTH: f64 = 1024.0 * 1024.0;

/// The soak's length: `PERF_AGENT_SOAK_SECS`, at least a minute.
fn duration() -> Duration {
    let secs =
        std::env::var("PERF_AGENT_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    Duration::from_secs(secs.max(60))
}

/// One `GET path`: the body of a 200, else an error.
fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("GET {path}: {}", response.lines().next().unwrap_or("no response")),
    }
}

/// Sum of every `http_server_requests_total` sample in an exposition.
fn requests_counted(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("http_server_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    t: Duration,
    rss: f64,
    fds: usize,
}

pub fn run_scenario(env: &mut Env, results: &mut Results) -> Result<()> {
    let length = duration();
    println!(
        "\n== soak: perf-agent serve following {TARGETS} demo-servers, {RATE} req/s, /metrics \
         every second, {} s (PERF_AGENT_SOAK_SECS)",
        length.as_secs()
    );
    let servers: Vec<DemoServer> =
        (0..TARGETS).map(|_| DemoServer::start(&env.demo_server)).collect::<Result<_>>()?;
    let listen = crate::net::free_loopback_addr()?;
    let agent = start_agent(env, listen)?;
    let pid = agent.id();
    let counted_before = requests_counted(&get(listen, "/metrics")?);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // Scrapes every second; samples the agent every SAMPLE_EVERY.
    let watcher = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let (mut failures, mut samples, mut next_sample) = (0u64, Vec::new(), Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                failures += u64::from(get(listen, "/metrics").is_err());
                if start.elapsed() >= next_sample {
                    let rss = procfs::status_bytes(pid, Status::VmRss).unwrap_or(f64::NAN);
                    let sample = Sample { t: start.elapsed(), rss, fds: fd_count(pid) };
                    // As they come: in an hours-long run a slow leak shows as a trend.
                    println!(
                        "  agent at {:>5} s: VmRSS {:.2} MiB, {} fds",
                        sample.t.as_secs(),
                        sample.rss / 1048576.0,
                        sample.fds
                    );
                    samples.push(sample);
                    next_sample += SAMPLE_EVERY;
                }
                thread::sleep(Duration::from_secs(1));
            }
            (failures, samples)
        })
    };
    let cpu_before = procfs::process_cpu_clock_ns(pid)?;
    let mut sent = 0.0;
    let mut chunk = 0;
    while start.elapsed() < length {
        check_interrupted()?;
        let url = servers[chunk % TARGETS].url();
        let load = http_load(env, &LoadSpec::new(&url, RATE * CHUNK_SECS).at_rate(RATE))?;
        sent += load.requests;
        chunk += 1;
        println!("  {:>4.0} s: {sent} requests sent", start.elapsed().as_secs_f64());
    }
    let cpu_ns = procfs::process_cpu_clock_ns(pid)? - cpu_before;
    let wall_ns = start.elapsed().as_nanos() as f64;
    // Two intervals: the last events drained and counted.
    thread::sleep(Duration::from_millis(2500));
    let counted = requests_counted(&get(listen, "/metrics")?) - counted_before;
    stop.store(true, Ordering::SeqCst);
    let (scrape_failures, samples) =
        watcher.join().map_err(|_| anyhow::anyhow!("the soak's scraper thread panicked"))?;
    // SAFETY: our own child, not reaped yet.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let (status, _) = agent.reap(Duration::from_secs(10))?;
    if !status.is_some_and(|s| s.success()) {
        bail!("perf-agent serve did not exit cleanly on SIGTERM ({status:?})");
    }
    drop(servers);
    rows(results, &samples, cpu_ns / wall_ns * 100.0, counted, sent, scrape_failures);
    Ok(())
}

/// `perf-agent serve --exe demo-server` on `listen`, once it follows the
/// TARGETS servers.
fn start_agent(env: &Env, listen: SocketAddr) -> Result<KillOnDrop> {
    let log = std::fs::File::create(env.logs.join("soak-serve.stderr"))?;
    let mut cmd = Command::new(&env.agent);
    cmd.args(["serve", "--listen", &listen.to_string(), "--max-targets", "16", "--exe"])
        .arg(&env.demo_server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut agent = KillOnDrop::new(cmd.spawn().context("starting perf-agent serve")?);
    let up = Instant::now();
    while !get(listen, "/metrics")
        .is_ok_and(|m| m.contains(&format!("perf_agent_targets {TARGETS}\n")))
    {
        agent.check_running("perf-agent serve")?;
        if up.elapsed() > Duration::from_secs(30) {
            bail!(
                "perf-agent serve did not follow {TARGETS} demo-servers within 30 s (see logs/soak-serve.stderr)"
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(agent)
}

fn rows(
    results: &mut Results,
    samples: &[Sample],
    cpu_percent: f64,
    counted: f64,
    sent: f64,
    scrape_failures: u64,
) {
    let warm = samples.iter().find(|s| s.t >= WARM_UP).or(samples.first()).copied();
    let last = samples.last().copied();
    let (Some(warm), Some(last)) = (warm, last) else {
        results.notes.push("soak: no sample taken".into());
        return;
    };
    let peak = samples.iter().map(|s| s.rss).fold(0.0, f64::max);
    let row = results.add("serve/soak/agent_rss_peak", "memory", peak);
    row.goal = Goal::AtMost(GOAL_RSS);
    row.note = format!("VmRSS, {TARGETS} targets, sampled every {} s", SAMPLE_EVERY.as_secs());
    let row = results.add("serve/soak/agent_rss_growth", "memory", last.rss - warm.rss);
    row.goal = Goal::AtMost(GOAL_RSS_GROWTH);
    row.note = format!("VmRSS at the end − at {} s", warm.t.as_secs());
    let row = results.add("serve/soak/agent_fd_growth", "count", last.fds as f64 - warm.fds as f64);
    row.goal = Goal::AtMost(0.0);
    row.note = format!("open fds at the end − at {} s", warm.t.as_secs());
    let row = results.add("serve/soak/agent_cpu_percent", "cpu-percent", cpu_percent);
    row.goal = Goal::AtMost(GOAL_CPU_PERCENT);
    row.note = format!("CPU-time clock ÷ wall, {RATE} req/s, a scrape a second");
    let row = results.add("serve/soak/requests_counted_ratio", "ratio", counted / sent);
    row.goal = Goal::Equal(1.0);
    row.note = format!("http_server_requests_total increase ÷ requests http-load sent ({sent})");
    let row = results.add("serve/soak/scrape_failures", "count", scrape_failures as f64);
    row.goal = Goal::AtMost(0.0);
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_every_requests_sample() {
        let m = "# TYPE http_server_requests_total counter\n\
                 http_server_requests_total{pid=\"1\",status_class=\"2xx\"} 10\n\
                 http_server_requests_total{pid=\"2\",status_class=\"5xx\"} 5\n\
                 http_server_request_duration_seconds_count{pid=\"1\"} 10\n";
        assert_eq!(super::requests_counted(m), 15.0);
    }
}
