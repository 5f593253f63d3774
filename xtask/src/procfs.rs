//! What the bench reads from `/proc`, through the agent's own readers (the
//! `agent-procfs` crate: one parser for the agent, its tests and the bench),
//! in the units the bench computes with (ns and bytes as `f64`).

use anyhow::{Context, Result};

/// utime + stime of a process (all its threads, dead ones included), ns, at
/// clock-tick resolution.
pub fn cpu_ns(pid: u32) -> Result<f64> {
    let stat =
        agent_procfs::read_stat(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    Ok(stat.cpu_time_ns(agent_procfs::clock_ticks_per_sec()) as f64)
}

/// CPU time of a whole process, ns, exact: its CPU-time clock
/// (`agent_procfs::process_cpu_ns`: every thread, those that exited
/// included; a thread-per-connection server's threads come and go with each
/// load run), where [`cpu_ns`] moves in 10 ms ticks.
pub fn process_cpu_clock_ns(pid: u32) -> Result<f64> {
    let ns = agent_procfs::process_cpu_ns(pid)
        .with_context(|| format!("reading process {pid}'s CPU clock"))?;
    Ok(ns as f64)
}

/// Which line of `/proc/PID/status` [`status_bytes`] reads.
#[derive(Clone, Copy)]
pub enum Status {
    VmRss,
    VmHwm,
}

/// A memory figure of `/proc/PID/status`, in bytes; `None` once the
/// process is gone or a zombie (whose status has no `Vm*` lines: the parser
/// leaves them 0, which a live process never shows).
pub fn status_bytes(pid: u32, which: Status) -> Option<f64> {
    let s = agent_procfs::read_status(pid).ok()?;
    let bytes = match which {
        Status::VmRss => s.vm_rss,
        Status::VmHwm => s.vm_hwm,
    };
    (bytes > 0).then_some(bytes as f64)
}

/// CPU time the machine has been busy since boot (all CPUs, without idle,
/// iowait and steal), ns; NaN when /proc/stat cannot be read.
pub fn machine_busy_ns() -> f64 {
    agent_procfs::machine_busy_ns().map_or(f64::NAN, |ns| ns as f64)
}

/// How many `bpf_link` fds process `pid` holds: one per attached program.
pub fn bpf_link_count(pid: u32) -> usize {
    agent_procfs::bpf_link_count(pid).unwrap_or(0)
}
