//! Checks made before anything is attached, each failing with a message that
//! names the problem and the fix. Nothing here changes the system except
//! mounting tracefs (see `tracefs::ensure_mounted`).

use std::path::Path;

use anyhow::bail;

use crate::procfs::{self, ProcStat};

/// Capability numbers from linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Parses the `CapEff:` hex mask of `/proc/self/status`.
pub fn effective_caps(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// The capabilities perf-agent needs that `cap_eff` lacks, by name.
/// CAP_SYS_ADMIN implies BPF and PERFMON on kernels before 5.8 and is
/// accepted for both.
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !admin {
        missing.push("CAP_PERFMON");
    }
    missing
}

pub fn check_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let missing = effective_caps(&status).map(missing_caps).unwrap_or_default();
    if !missing.is_empty() {
        bail!(
            "perf-agent needs root, or the capabilities CAP_BPF and CAP_PERFMON; missing: {}. \
             Run it with sudo (or `setcap cap_bpf,cap_perfmon,cap_dac_read_search,cap_sys_ptrace+ep \
             perf-agent`; docs/reliability.md says what each one is for)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Validates the target PID and returns its stat (its start time identifies
/// it across PID reuse).
pub fn check_target(pid: u32, force: bool) -> anyhow::Result<ProcStat> {
    if pid == 0 {
        bail!("--pid 0 is not a process; give the PID of the server to measure");
    }
    if pid == std::process::id() {
        bail!("--pid {pid} is perf-agent itself");
    }
    if pid == 1 && !force {
        bail!("--pid 1 is the init process; pass --force if you really mean to measure it");
    }
    let stat = match procfs::read_stat(pid) {
        Ok(stat) => stat,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no process with PID {pid} (check it with `ps -p {pid}`)")
        }
        Err(e) => bail!("cannot read /proc/{pid}/stat: {e}"),
    };
    if stat.is_kernel_thread() {
        bail!(
            "PID {pid} ({}) is a kernel thread; perf-agent measures user-space processes",
            stat.comm
        );
    }
    if matches!(stat.state, 'Z' | 'X') {
        bail!("PID {pid} ({}) has already exited (state {})", stat.comm, stat.state);
    }
    // A thread id is accepted by /proc but is not a thread-group leader.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    if let Some(tgid) = status.lines().find_map(|l| l.strip_prefix("Tgid:")) {
        let tgid = tgid.trim();
        if tgid != pid.to_string() {
            bail!("{pid} is a thread of process {tgid}; pass --pid {tgid} to measure the process");
        }
    }
    Ok(stat)
}

/// The kernel pieces every run needs, checked up front for a clear message.
pub fn check_kernel(tracefs_root: &Path) -> anyhow::Result<()> {
    // tracefs is root-only (mode 0700) by default: without root, reading it
    // takes CAP_DAC_READ_SEARCH. Say that, not "the kernel lacks ...".
    if let Err(e) = std::fs::read_dir(tracefs_root.join("events"))
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        bail!(
            "cannot read {}/events ({e}): tracefs is readable by root only; \
             perf-agent needs CAP_DAC_READ_SEARCH to read the tracepoint formats",
            tracefs_root.display()
        );
    }
    for (category, name) in [("sched", "sched_switch"), ("kmem", "rss_stat")] {
        if !tracefs_root.join("events").join(category).join(name).is_dir() {
            bail!(
                "this kernel lacks the tracepoint {category}:{name} (not in {}/events); \
                 perf-agent needs it",
                tracefs_root.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_caps_miss_nothing() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(missing_caps(effective_caps(status).unwrap()), Vec::<&str>::new());
    }

    #[test]
    fn unprivileged_misses_bpf_and_perfmon() {
        let caps = effective_caps("CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(missing_caps(caps), vec!["CAP_BPF", "CAP_PERFMON"]);
        let only_bpf = 1u64 << CAP_BPF;
        assert_eq!(missing_caps(only_bpf), vec!["CAP_PERFMON"]);
    }

    #[test]
    fn bad_pids_are_refused_with_the_fix() {
        assert!(check_target(0, false).unwrap_err().to_string().contains("not a process"));
        assert!(check_target(1, false).unwrap_err().to_string().contains("--force"));
        let e = check_target(std::process::id(), false).unwrap_err().to_string();
        assert!(e.contains("perf-agent itself"), "{e}");
        // PID max is 4194304; this one cannot exist.
        let e = check_target(4_194_305, false).unwrap_err().to_string();
        assert!(e.contains("no process with PID"), "{e}");
    }

    #[test]
    fn kernel_threads_are_refused() {
        // kthreadd is PID 2 on Linux.
        if let Ok(stat) = procfs::read_stat(2)
            && stat.is_kernel_thread()
        {
            let e = check_target(2, false).unwrap_err().to_string();
            assert!(e.contains("kernel thread"), "{e}");
        }
    }
}
