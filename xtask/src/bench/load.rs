//! Load runs: http-load against a server, and a burst of short processes.

use std::io::{BufReader, Read as _};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::check_interrupted;
use super::runs::Env;
use crate::process::KillOnDrop;
use crate::{describe, procfs};

/// http-load connections in every scenario.
pub const CONNECTIONS: u32 = 4;
/// A load that should take seconds gets a minute.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// One http-load run to make.
#[derive(Clone, Copy)]
pub struct LoadSpec<'a> {
    pub url: &'a str,
    pub requests: u64,
    /// Requests per second in total; `None`: as fast as possible.
    pub rate: Option<u64>,
    /// A new connection per request instead of keep-alive connections.
    pub new_connection_per_request: bool,
    /// The server's pid, whose own CPU time over the run is recorded.
    pub target: Option<u32>,
    /// http-load's `--progress-ms`: its responses so far at this period,
    /// into [`Load::progress`].
    pub progress_ms: Option<u64>,
}

impl<'a> LoadSpec<'a> {
    /// `requests` over keep-alive connections, as fast as possible.
    pub fn new(url: &'a str, requests: u64) -> LoadSpec<'a> {
        LoadSpec {
            url,
            requests,
            rate: None,
            new_connection_per_request: false,
            target: None,
            progress_ms: None,
        }
    }

    /// With http-load's responses so far every `ms` ([`Load::progress`]).
    pub fn with_progress(self, ms: u64) -> LoadSpec<'a> {
        LoadSpec { progress_ms: Some(ms), ..self }
    }

    /// At `rate` requests per second in total.
    pub fn at_rate(self, rate: u64) -> LoadSpec<'a> {
        LoadSpec { rate: Some(rate), ..self }
    }

    /// Against server `pid`, whose CPU time over the run is recorded.
    pub fn on(self, pid: u32) -> LoadSpec<'a> {
        LoadSpec { target: Some(pid), ..self }
    }
}

/// What one http-load run measured.
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub requests: f64,
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub elapsed_ns: f64,
    /// CPU time the whole machine was busy during the run (all CPUs, from
    /// /proc/stat: user, nice, system, irq, softirq), ns: client, target,
    /// agent and every BPF program together.
    pub busy_ns: f64,
    /// The target's own utime + stime over the run (/proc/PID/stat, 10 ms
    /// ticks), ns; NaN without a target. BPF programs that run in its
    /// syscalls are charged to it: the cost its users feel.
    pub target_cpu_ns: f64,
    /// The target's CPU time over the run from its CPU-time clock (all
    /// threads, ns resolution); NaN without a target.
    pub target_clock_ns: f64,
    /// http-load's own utime + stime (wait4), ns.
    pub client_cpu_ns: f64,
    /// With [`LoadSpec::with_progress`]: `(CLOCK_MONOTONIC ns, responses
    /// so far)` as the run went.
    pub progress: Vec<(u64, u64)>,
}

impl Load {
    pub fn rps(&self) -> f64 {
        self.requests / (self.elapsed_ns / 1e9)
    }

    /// Machine CPU per request, ns.
    pub fn busy_per_request(&self) -> f64 {
        self.busy_ns / self.requests
    }

    /// The target's CPU per request, ns.
    pub fn target_cpu_per_request(&self) -> f64 {
        self.target_cpu_ns / self.requests
    }

    /// The target's CPU per request from its CPU-time clock, ns.
    pub fn target_clock_cpu_per_request(&self) -> f64 {
        self.target_clock_ns / self.requests
    }
}

/// Runs http-load once; errors (or a non-zero exit) are a failure of the run.
pub fn http_load(env: &Env, spec: &LoadSpec) -> Result<Load> {
    check_interrupted()?;
    let mut cmd = Command::new(&env.http_load);
    cmd.args(["--url", spec.url, "--requests", &spec.requests.to_string()])
        .args(["--connections", &CONNECTIONS.to_string()]);
    if spec.new_connection_per_request {
        cmd.arg("--new-connection-per-request");
    }
    if let Some(rate) = spec.rate {
        cmd.args(["--rate", &rate.to_string()]);
    }
    if let Some(ms) = spec.progress_ms {
        cmd.args(["--progress-ms", &ms.to_string()]);
    }
    let progress = spec.progress_ms.is_some();
    cmd.stdout(Stdio::piped()).stderr(if progress { Stdio::piped() } else { Stdio::inherit() });
    let target_cpu = || spec.target.map_or(Ok(f64::NAN), procfs::cpu_ns);
    let target_clock = || spec.target.map_or(Ok(f64::NAN), procfs::process_cpu_clock_ns);
    let target_before = target_cpu()?;
    let clock_before = target_clock()?;
    let busy_before = procfs::machine_busy_ns();
    let mut child =
        KillOnDrop::new(cmd.spawn().with_context(|| format!("cannot start `{}`", describe(&cmd)))?);
    let stdout = child.child().stdout.take().expect("piped");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut s);
        s
    });
    let stderr = child.child().stderr.take();
    let progress_reader = thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr {
            let _ = BufReader::new(e).read_to_string(&mut s);
        }
        s
    });
    let (status, reaped) = child.reap(LOAD_TIMEOUT)?;
    let busy_ns = procfs::machine_busy_ns() - busy_before;
    let target_cpu_ns = target_cpu()? - target_before;
    let target_clock_ns = target_clock()? - clock_before;
    let text = reader.join().unwrap_or_default();
    let progress = parse_progress(&progress_reader.join().unwrap_or_default());
    let Some(status) = status else {
        bail!("`{}` did not finish within {LOAD_TIMEOUT:?}", describe(&cmd))
    };
    let line =
        text.lines().rev().find(|l| l.trim_start().starts_with('{')).ok_or_else(|| {
            anyhow!("`{}` ({status}) printed no JSON line: {text:?}", describe(&cmd))
        })?;
    let v: Value =
        serde_json::from_str(line).with_context(|| format!("http-load printed {line:?}"))?;
    let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let errors = f("errors");
    if errors != 0.0 || !status.success() {
        bail!("`{}` had {errors} errors ({status}): {line}", describe(&cmd));
    }
    Ok(Load {
        requests: f("requests"),
        p50_ns: f("p50_ns"),
        p99_ns: f("p99_ns"),
        elapsed_ns: f("elapsed_ns"),
        busy_ns,
        target_cpu_ns,
        target_clock_ns,
        client_cpu_ns: reaped.cpu_ns,
        progress,
    })
}

/// http-load's `progress <ns> <responses>` lines (others are passed on to
/// stderr: its warnings).
fn parse_progress(text: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next().map(str::parse), f.next().map(str::parse)) {
            (Some("progress"), Some(Ok(t)), Some(Ok(n))) => out.push((t, n)),
            _ => eprintln!("{line}"),
        }
    }
    out
}

/// Starts `count` short processes one after the other (`true`): each passes
/// through the exec hook. Returns how many ran.
pub fn exec_burst(count: usize) -> Result<usize> {
    for i in 0..count {
        let status = Command::new("true").status().context("cannot run `true`")?;
        if !status.success() {
            bail!("`true` failed ({status}) after {i} runs");
        }
    }
    Ok(count)
}
