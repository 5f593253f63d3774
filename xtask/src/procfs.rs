//! What xtask reads from `/proc`: a process's CPU time and memory, the
//! machine's busy time, a process's `bpf_link` fds.
//!
//! The agent has its own parser (`agent/src/procfs.rs`), but xtask cannot
//! depend on the agent crate: building it builds the eBPF object, which needs
//! the very toolchain `cargo xtask setup` installs. These few readers are all
//! the bench needs.

use std::fs;

use anyhow::{Context, Result};

/// Nanoseconds per clock tick (`USER_HZ`, 100 on Linux).
pub fn clock_tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads, dead ones included), ns, at
/// clock-tick resolution.
pub fn cpu_ns(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    Ok(cpu_ticks_of_stat(&stat) * clock_tick_ns())
}

/// utime + stime in ticks from the text of `/proc/PID/stat`.
fn cpu_ticks_of_stat(stat: &str) -> f64 {
    // The comm (field 2) may contain spaces and parentheses: fields are
    // counted after its last `)`.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers utime 14 and stime 15; `rest` starts at field 3.
    let ticks = |i: usize| fields.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks(11) + ticks(12)
}

/// A `kB` line of `/proc/PID/status` (e.g. `VmHWM:`), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<f64> {
    status_kb_line(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?, key)
}

fn status_kb_line(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024.0)
}

/// CPU time the machine has been busy since boot (all CPUs), ns: the `cpu`
/// line of /proc/stat without idle, iowait and steal (time the hypervisor
/// gave to others is not ours).
pub fn machine_busy_ns() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    busy_ticks_of_stat(&stat) * clock_tick_ns()
}

fn busy_ticks_of_stat(stat: &str) -> f64 {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return f64::NAN };
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|w| w.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum()
}

/// How many `bpf_link` fds process `pid` holds: one per attached program.
pub fn bpf_link_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t.to_string_lossy().contains("bpf_link"))
                .count()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_skips_a_comm_with_spaces_and_parens() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 9 1 1";
        assert_eq!(cpu_ticks_of_stat(stat), 12.0);
    }

    #[test]
    fn status_line_in_bytes() {
        let s = "Name:\tx\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(status_kb_line(s, "VmRSS:"), Some(1024.0 * 1024.0));
        assert_eq!(status_kb_line(s, "VmSwap:"), None);
    }

    #[test]
    fn busy_leaves_out_idle_iowait_and_steal() {
        let s = "cpu  10 1 20 1000 50 3 4 70 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(busy_ticks_of_stat(s), 38.0);
    }
}
