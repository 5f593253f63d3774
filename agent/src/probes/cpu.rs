//! CPU: on-CPU ns of the target's thread group, from its process CPU clock
//! (`clock_getcpuclockid` + `clock_gettime`): the scheduler's own running
//! total, `se.sum_exec_runtime` summed over the live threads plus what the
//! dead ones ran, to the nanosecond and including slices running at the
//! read. It is what /proc's utime + stime add up to (those are scaled to
//! it), read without their 10 ms ticks. No program runs for it: a
//! `sched_switch` program would run on every context switch of the machine
//! (issue 12's node tax). Formula and error: `docs/metrics.md#cpu`.
//!
//! `offsets` still finds the `task_struct` fields: the exec hook reads the
//! exec'ing thread's total (where the count starts), and profiling's
//! `sched_switch` (`agent-ebpf/src/sched.rs`) the rest.

use super::since::Since;
use crate::btf::Btf;

/// The `task_struct` fields the kernel side loads: `tgid`, `pid` and
/// `se.sum_exec_runtime` (the exec hook, profiling), `sched_info.run_delay`
/// and `.last_arrival`, and the way to the run queue's clock (`se.cfs_rq`,
/// `cfs_rq.rq`, `rq.clock`) when profiling.
pub fn offsets(btf: &Btf, o: &mut agent_common::TracepointOffsets) -> anyhow::Result<()> {
    o.task_sum_exec_runtime = btf.field_offset("task_struct", &["se", "sum_exec_runtime"])?;
    o.task_pid = btf.field_offset("task_struct", &["pid"])?;
    o.task_tgid = btf.field_offset("task_struct", &["tgid"])?;
    // Profiling's run-queue waits only; absent without CONFIG_SCHED_INFO
    // (0: the program then counts none, and the summary says so).
    o.task_run_delay = btf.field_offset("task_struct", &["sched_info", "run_delay"]).unwrap_or(0);
    // Profiling's switch clock (`TracepointOffsets::task_cfs_rq`); 0: the
    // program calls `bpf_ktime_get_ns` instead.
    o.task_cfs_rq = btf.field_offset("task_struct", &["se", "cfs_rq"]).unwrap_or(0);
    o.cfs_rq_rq = btf.field_offset("cfs_rq", &["rq"]).unwrap_or(0);
    o.rq_clock = btf.field_offset("rq", &["clock"]).unwrap_or(0);
    // Off-CPU ticks (`TracepointOffsets::task_state`).
    o.task_state = btf.field_offset("task_struct", &["__state"])?;
    o.task_on_cpu = btf.field_offset("task_struct", &["on_cpu"])?;
    o.task_nvcsw = btf.field_offset("task_struct", &["nvcsw"])?;
    o.task_nivcsw = btf.field_offset("task_struct", &["nivcsw"])?;
    o.task_on_rq = btf.field_offset("task_struct", &["on_rq"])?;
    o.task_exec_start = btf.field_offset("task_struct", &["se", "exec_start"])?;
    o.task_last_queued =
        btf.field_offset("task_struct", &["sched_info", "last_queued"]).unwrap_or(0);
    o.rq_clock_task = btf.field_offset("rq", &["clock_task"]).unwrap_or(0);
    o.task_start_time = btf.field_offset("task_struct", &["start_time"])?;
    o.task_last_arrival =
        btf.field_offset("task_struct", &["sched_info", "last_arrival"]).unwrap_or(0);
    o.task_prev_sum_exec_runtime =
        btf.field_offset("task_struct", &["se", "prev_sum_exec_runtime"])?;
    Ok(())
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReading {
    /// On-CPU ns since attach (or the target's exec), including slices
    /// still running at the read.
    pub on_cpu_ns: u64,
}

/// The process CPU clock of `pid`, ns (`None`: the process is gone, reaped).
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    crate::procfs::process_cpu_ns(pid).ok()
}

pub struct CpuProbe {
    clock: Since<1>,
}

impl CpuProbe {
    /// `running`: a process already running, counted from now.
    pub fn new(running: Option<u32>) -> anyhow::Result<CpuProbe> {
        let start = match running {
            Some(pid) => {
                let now = process_cpu_ns(pid).ok_or_else(|| {
                    anyhow::anyhow!("PID {pid} exited before its CPU clock could be read")
                })?;
                Some((pid, [now]))
            }
            None => None,
        };
        Ok(CpuProbe { clock: Since::new(start) })
    }

    /// The target was armed at its exec, its exec'ing thread's total being
    /// `runtime_at_exec_ns` then: counting starts there.
    pub fn armed(&self, pid: u32, runtime_at_exec_ns: u64) {
        self.clock.armed(pid, [runtime_at_exec_ns]);
    }

    /// On-CPU time since counting started.
    pub fn read(&self) -> CpuReading {
        let [on_cpu_ns] = self.clock.read(|pid| process_cpu_ns(pid).map(|ns| [ns]));
        CpuReading { on_cpu_ns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_clock_grows_with_work_and_agrees_with_getrusage() {
        let pid = std::process::id();
        let probe = CpuProbe::new(Some(pid)).unwrap();
        // 50 ms of this thread's CPU, however long that takes on a busy
        // machine (a 50 ms wall-clock spin got 26 ms of CPU beside a build).
        let thread_ns = || {
            let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
            // SAFETY: a valid, writable timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let t0 = thread_ns();
        let mut x = 0u64;
        while thread_ns() - t0 < 50_000_000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let on_cpu = probe.read().on_cpu_ns;
        // At least the 50 ms spin (other test threads only add).
        assert!(on_cpu >= 50_000_000, "{on_cpu} ns");
        // The same clock as this process's own CLOCK_PROCESS_CPUTIME_ID.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        let own = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let total = process_cpu_ns(pid).unwrap();
        assert!(total >= own.saturating_sub(1_000_000) && total <= own + 50_000_000);
    }

    /// The way to the run queue's clock exists on the kernels this runs on
    /// (profiling's `sched_switch` falls back to `bpf_ktime_get_ns`
    /// without it): `se.cfs_rq`, `cfs_rq.rq`, `rq.clock`.
    #[test]
    fn the_switch_clock_fields_are_in_this_kernels_btf() {
        let btf = Btf::vmlinux().unwrap();
        let mut o = agent_common::TracepointOffsets::default();
        offsets(&btf, &mut o).unwrap();
        assert!(o.task_cfs_rq != 0 && o.cfs_rq_rq != 0 && o.rq_clock != 0, "{o:?}");
    }

    #[test]
    fn a_gone_process_has_no_clock() {
        assert_eq!(process_cpu_ns(u32::MAX - 1), None);
    }
}
