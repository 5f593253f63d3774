//! `perf-agent serve`: node mode. A long-running agent that follows the
//! processes its selectors match (now and later: the kernel's exec hook
//! arms a restarted service at its exec), drops those that exit, and serves
//! what it counted for each on `GET /metrics` for Prometheus.
//!
//! - [`selectors`]: `--pid/--exe/--comm/--port/--cgroup`, checked before
//!   anything is attached; who matches now.
//! - [`node_probes`]: the eBPF object loaded in node mode (a target set).
//! - [`registry`]: the targets and their counters and histograms (bounded
//!   by targets × buckets).
//! - [`exposition`]: the Prometheus / OpenMetrics text.
//! - [`http`]: the read-only endpoint.
//!
//! Arrows: `mod` → all; `http` → `exposition` → `registry`; `node_probes`
//! → `selectors`.

pub mod exposition;
pub mod http;
pub mod node_probes;
pub mod registry;
pub mod selectors;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::bail;

use self::{
    exposition::AgentCounters,
    http::Shared,
    node_probes::NodeProbes,
    registry::Registry,
    selectors::{PortOwners, Selector},
};
use crate::{clock::monotonic_ns, outcome::exit, preflight, procfs, signals, tracefs};

/// Largest `--max-targets`: the kernel's set is a hash map of this many
/// entries at most (16 bytes each), and each target costs a few KiB here.
pub const MAX_TARGETS_LIMIT: u32 = 4096;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: String,
    pub pids: Vec<u32>,
    pub exes: Vec<String>,
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    pub cgroups: Vec<PathBuf>,
    /// How often targets are looked for and events collected.
    pub interval: Duration,
    pub max_targets: u32,
    /// Histogram bucket bounds, seconds.
    pub buckets: Vec<f64>,
    /// `--delivery`: the delivery hooks attached, their histograms exported.
    pub delivery: bool,
}

impl ServeOptions {
    /// Every selector, checked: the first bad one is the error.
    pub fn selectors(&self) -> anyhow::Result<Vec<Selector>> {
        let mut all = Vec::new();
        all.extend(self.pids.iter().map(|p| selectors::pid(*p)).collect::<Result<Vec<_>, _>>()?);
        all.extend(self.exes.iter().map(|e| selectors::exe(e)).collect::<Result<Vec<_>, _>>()?);
        all.extend(self.comms.iter().map(|c| selectors::comm(c)).collect::<Result<Vec<_>, _>>()?);
        all.extend(self.ports.iter().map(|p| selectors::port(*p)).collect::<Result<Vec<_>, _>>()?);
        all.extend(
            self.cgroups.iter().map(|c| selectors::cgroup(c)).collect::<Result<Vec<_>, _>>()?,
        );
        if all.is_empty() {
            bail!("serve needs at least one of --pid, --exe, --comm, --port, --cgroup");
        }
        if !(1..=MAX_TARGETS_LIMIT).contains(&self.max_targets) {
            bail!("--max-targets {}: give 1 to {MAX_TARGETS_LIMIT}", self.max_targets);
        }
        if self.pids.len() > self.max_targets as usize {
            bail!(
                "{} --pid given but --max-targets is {}: raise --max-targets",
                self.pids.len(),
                self.max_targets
            );
        }
        check_buckets(&self.buckets)?;
        Ok(all)
    }
}

/// Bucket bounds: positive, finite, strictly ascending.
pub fn check_buckets(b: &[f64]) -> anyhow::Result<()> {
    if b.is_empty() || b.len() > 64 {
        bail!("--buckets: give 1 to 64 bounds in seconds, e.g. 0.005,0.01,0.025");
    }
    if b.iter().any(|x| !x.is_finite() || *x <= 0.0) || b.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--buckets: bounds must be positive seconds in increasing order");
    }
    Ok(())
}

/// Runs until SIGINT/SIGTERM; everything is detached on the way out.
pub fn run(opts: &ServeOptions) -> anyhow::Result<u8> {
    let selectors = opts.selectors()?;
    let listener = http::bind(&opts.listen)?;
    preflight::check_privileges()?;
    let tracefs_root = tracefs::ensure_mounted()?;
    preflight::check_kernel(&tracefs_root)?;
    signals::install();
    let mut probes =
        NodeProbes::attach(&selectors, opts.max_targets, &tracefs_root, opts.delivery)?;
    // Loading parsed the kernel's BTF twice (~15 MiB, freed): give the
    // freed heap back, or a process that runs for days keeps it resident.
    // SAFETY: no preconditions; returns whether memory was released.
    unsafe { libc::malloc_trim(0) };
    let mut registry = Registry::new(opts.buckets.clone());
    registry.delivery = opts.delivery;
    let shared = Arc::new(Shared {
        registry: Mutex::new(registry),
        agent: Mutex::new(AgentCounters::default()),
    });
    let addr = listener.local_addr()?;
    http::spawn(listener, Arc::clone(&shared))?;
    let labels: Vec<String> = selectors.iter().map(Selector::label).collect();
    eprintln!("perf-agent: serving http://{addr}/metrics for {}", labels.join(", "));
    let mut follow = Follower { selectors, ports: PortOwners::default(), warned_full: false };
    let signal = loop {
        follow.tick(&mut probes, &shared);
        if let Some(signal) = sleep_unless_signalled(opts.interval) {
            break signal;
        }
    };
    drop(probes); // detaches every program
    eprintln!("perf-agent: {}: detached", signals::name(signal));
    Ok(exit::OK)
}

/// Sleeps `d` in short steps; returns early with the signal received.
fn sleep_unless_signalled(d: Duration) -> Option<i32> {
    let end = monotonic_ns() + d.as_nanos() as u64;
    loop {
        if let Some(s) = signals::received() {
            return Some(s);
        }
        let now = monotonic_ns();
        if now >= end {
            return None;
        }
        std::thread::sleep(Duration::from_nanos((end - now).min(50_000_000)));
    }
}

/// The targets kept in step with the selectors, the kernel's set and /proc.
struct Follower {
    selectors: Vec<Selector>,
    ports: PortOwners,
    warned_full: bool,
}

impl Follower {
    /// One interval: targets added and dropped, events counted, the
    /// agent's own counters read.
    fn tick(&mut self, probes: &mut NodeProbes, shared: &Shared) {
        // Found running (a --pid, a listener, a process of a cgroup, one
        // that predates the agent): into the kernel's set first.
        for (pid, selector) in selectors::scan(&self.selectors, &mut self.ports) {
            if !probes.add(pid, selector) && !self.warned_full {
                eprintln!(
                    "perf-agent: warning: PID {pid} matches {} but --max-targets processes are \
                     followed already; it is not measured (raise --max-targets)",
                    self.selectors[selector as usize].label()
                );
                self.warned_full = true;
            }
        }
        let members = probes.targets();
        let now = monotonic_ns();
        let mut registry = shared.registry.lock().unwrap_or_else(|p| p.into_inner());
        for (pid, m) in &members {
            let Ok(stat) = procfs::read_stat(*pid) else { continue };
            if registry.live_mut(*pid).is_some_and(|t| t.starttime_ticks == stat.starttime_ticks) {
                continue;
            }
            if let Some(old) = registry.live_mut(*pid) {
                // The PID was reused by another process, which the kernel's
                // set cannot tell from the old one: out of the set; the next
                // scan brings it back if a selector matches it.
                old.exited_ns = Some(now);
                probes.remove(*pid);
                continue;
            }
            let selector =
                self.selectors.get(m.selector as usize).map_or_else(String::new, Selector::label);
            let exe = selectors::exe_of(*pid).unwrap_or_default();
            let comm = selectors::comm_of(*pid).unwrap_or(stat.comm);
            registry.add((*pid, stat.starttime_ticks), selector, m.exec_ns, comm, exe);
            probes.target_found(*pid);
        }
        // Events before exits: an exited target's last requests are its own.
        probes.drain(|e| registry.record(e));
        for (pid, _) in &members {
            let gone = registry.live_mut(*pid).is_none_or(|t| {
                procfs::read_stat(*pid)
                    .map_or(true, |s| s.state == 'Z' || s.starttime_ticks != t.starttime_ticks)
            });
            if gone {
                if let Some(t) = registry.live_mut(*pid) {
                    t.exited_ns = Some(now);
                }
                probes.remove(*pid);
            }
        }
        registry.forget_exited(now);
        drop(registry);
        let counters = AgentCounters {
            dropped_events: probes.net_counters().map_or(0, |n| n.stats.lost()),
            targets_refused: probes.refused(),
            program_ns: probes
                .program_stats()
                .into_iter()
                .map(|p| (p.name, p.run_time_ns))
                .collect(),
        };
        *shared.agent.lock().unwrap_or_else(|p| p.into_inner()) = counters;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ServeOptions {
        ServeOptions {
            listen: "127.0.0.1:9464".into(),
            pids: Vec::new(),
            exes: Vec::new(),
            comms: Vec::new(),
            ports: Vec::new(),
            cgroups: Vec::new(),
            interval: Duration::from_secs(1),
            max_targets: 2,
            buckets: registry::DEFAULT_BUCKETS.to_vec(),
            delivery: false,
        }
    }

    #[test]
    fn selectors_are_required_and_bounded() {
        assert!(options().selectors().unwrap_err().to_string().contains("at least one"));
        let me = std::process::id();
        let o = ServeOptions { pids: vec![me, me, me], ..options() };
        assert!(o.selectors().unwrap_err().to_string().contains("--max-targets"));
        let o = ServeOptions { comms: vec!["x".into()], max_targets: 0, ..options() };
        assert!(o.selectors().is_err());
    }

    #[test]
    fn buckets_must_ascend() {
        assert!(check_buckets(&[0.1, 0.2]).is_ok());
        assert!(check_buckets(&[0.2, 0.1]).is_err());
        assert!(check_buckets(&[0.0]).is_err());
        assert!(check_buckets(&[]).is_err());
    }
}
