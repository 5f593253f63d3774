//! The `/proc` ground truth beside the run-queue waits: each thread's
//! `sched_info.run_delay` (`/proc/PID/task/TID/schedstat`), read at the
//! edges of the profiler's window. `/proc` lists live threads only, so a
//! thread that exits inside the window takes its waits with it (a server
//! with a thread per connection loses nearly all of them); the thread
//! group's CPU clock, which keeps what dead threads ran, says how much of
//! the run such threads were, and the summary says so beside the number.

use std::collections::HashMap;

/// Each live thread's `(ns on CPU, ns waiting on a run queue)` and the
/// thread group's CPU clock, read at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    threads: HashMap<u32, (u64, u64)>,
    group_cpu_ns: u64,
}

impl Snapshot {
    /// `None` when the process is gone.
    pub fn read(pid: u32) -> Option<Snapshot> {
        let threads = crate::procfs::thread_schedstats(pid).ok()?;
        Some(Snapshot { threads, group_cpu_ns: crate::procfs::process_cpu_ns(pid).ok()? })
    }
}

/// What `/proc` says of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunDelayTruth {
    /// Run-queue delay gained in the window by the threads alive at its
    /// end (all of it for those born inside).
    pub run_delay_ns: u64,
    /// The thread group's CPU time in the window, and the part of it no
    /// thread alive at the end accounts for: threads that exited inside
    /// the window, whose waits `/proc` no longer shows.
    pub cpu_ns: u64,
    pub exited_cpu_ns: u64,
}

impl RunDelayTruth {
    /// Between two snapshots of one process.
    pub fn between(start: &Snapshot, end: &Snapshot) -> RunDelayTruth {
        let (mut delay, mut covered) = (0, 0);
        for (tid, &(cpu, waited)) in &end.threads {
            let (cpu0, waited0) = start.threads.get(tid).copied().unwrap_or((0, 0));
            delay += waited.saturating_sub(waited0);
            covered += cpu.saturating_sub(cpu0);
        }
        let cpu = end.group_cpu_ns.saturating_sub(start.group_cpu_ns);
        RunDelayTruth {
            run_delay_ns: delay,
            cpu_ns: cpu,
            exited_cpu_ns: cpu.saturating_sub(covered),
        }
    }

    /// Whether threads that exited in the window ran enough of it for the
    /// ground truth to be short: over 1 % of the group's CPU time and
    /// 10 ms (a live thread's running slice is in the CPU clock but not
    /// yet in `schedstat`: a few ms each).
    pub fn misses_exited_threads(&self) -> bool {
        self.exited_cpu_ns > 10_000_000 && self.exited_cpu_ns * 100 > self.cpu_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(threads: &[(u32, u64, u64)], group_cpu_ns: u64) -> Snapshot {
        Snapshot { threads: threads.iter().map(|&(t, c, d)| (t, (c, d))).collect(), group_cpu_ns }
    }

    #[test]
    fn threads_born_count_whole_and_exited_ones_are_told() {
        // 1 lives throughout, 2 exits inside, 3 is born inside.
        let start = snapshot(&[(1, 100, 10), (2, 50, 5)], 150);
        let end = snapshot(&[(1, 300, 30), (3, 40, 7)], 150 + 200 + 40 + 60);
        let t = RunDelayTruth::between(&start, &end);
        assert_eq!(t.run_delay_ns, 20 + 7);
        assert_eq!(t.cpu_ns, 300);
        assert_eq!(t.exited_cpu_ns, 60, "thread 2's CPU in the window");
    }

    #[test]
    fn slices_still_running_are_not_taken_for_exited_threads() {
        let t = RunDelayTruth { run_delay_ns: 0, cpu_ns: 9_000_000_000, exited_cpu_ns: 6_000_000 };
        assert!(!t.misses_exited_threads());
        let t = RunDelayTruth { exited_cpu_ns: 2_000_000_000, ..t };
        assert!(t.misses_exited_threads());
    }

    #[test]
    fn this_process_reads_and_grows() {
        let pid = std::process::id();
        let a = Snapshot::read(pid).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x ^ i.wrapping_mul(31));
        }
        let b = Snapshot::read(pid).unwrap();
        assert!(!a.threads.is_empty());
        assert!(RunDelayTruth::between(&a, &b).cpu_ns > 0);
        assert!(Snapshot::read(u32::MAX - 1).is_none());
    }
}
