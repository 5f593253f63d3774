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
/// (`clock_getcpuclockid`), the scheduler's nanosecond runtime of all its
/// threads, those that exited included (a thread-per-connection server's
/// threads come and go with each load run), where [`cpu_ns`] moves in 10 ms
/// ticks.
pub fn process_cpu_clock_ns(pid: u32) -> Result<f64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain out-parameter calls; `pid` is only looked up.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    anyhow::ensure!(rc == 0, "clock_getcpuclockid({pid}) failed: error {rc}");
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a clock id from the kernel and a timespec to write.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    anyhow::ensure!(rc == 0, "reading process {pid}'s CPU clock failed");
    Ok(ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns about `ms` of this thread's CPU.
    fn burn(ms: u64) {
        let start = std::time::Instant::now();
        let mut x = 1u64;
        while start.elapsed() < std::time::Duration::from_millis(ms) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }

    #[test]
    fn the_process_cpu_clock_counts_threads_that_exited() {
        let pid = std::process::id();
        let before = process_cpu_clock_ns(pid).unwrap();
        std::thread::spawn(|| burn(60)).join().unwrap();
        let grown = process_cpu_clock_ns(pid).unwrap() - before;
        // The exited thread's 60 ms (wall time: at least that little CPU
        // when it was not preempted; a loaded machine may give it less).
        assert!(grown >= 20e6, "grew {grown} ns");
        assert!(grown < 5e9, "grew {grown} ns");
        let pid_max: u32 =
            std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        assert!(process_cpu_clock_ns(pid_max + 1).is_err(), "no such process");
    }
}
