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

/// CPU time of the thread of `pid` named `name` (its `comm`, which the
/// kernel cuts to 15 bytes), ns, exact (`agent_procfs::task_schedstat`).
pub fn thread_cpu_ns(pid: u32, name: &str) -> Result<f64> {
    let tasks = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("cannot list {tasks}"))? {
        let entry = entry?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        if comm.trim_end() == name {
            let (on_cpu_ns, _) = agent_procfs::task_schedstat(pid, tid)
                .with_context(|| format!("reading thread {tid}'s schedstat"))?;
            return Ok(on_cpu_ns as f64);
        }
    }
    anyhow::bail!("process {pid} has no thread named {name:?}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_named_thread_s_cpu_is_found_by_its_name() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let t = std::thread::Builder::new()
            .name("xtask-probe-thread".into())
            .spawn(move || {
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(20) {
                    std::hint::black_box(0u64);
                }
                ready_tx.send(()).unwrap();
                rx.recv().unwrap();
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let me = std::process::id();
        // The kernel keeps 15 bytes of the name.
        let ns = super::thread_cpu_ns(me, "xtask-probe-thr").unwrap();
        assert!(ns >= 10e6, "{ns} ns");
        assert!(super::thread_cpu_ns(me, "no-such-thread").is_err());
        tx.send(()).unwrap();
        t.join().unwrap();
    }
}
