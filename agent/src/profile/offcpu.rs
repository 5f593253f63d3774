//! Off-CPU time per stack. The kernel side times every block of a target
//! thread (switch-out to switch-in, on the scheduler's clock: see
//! `docs/metrics.md` for where that ends a block at its wake-up) but sends
//! the stack of only 1
//! in N blocks, each weighted N times its time. Summing those weights per
//! stack is an unbiased estimate, but a noisy one: its error is that of a
//! count of a few hundred samples a second, plus the rare long block
//! (a wake-up followed by a long run-queue wait) that weighs N times a
//! millisecond or more when it happens to be chosen: ±5-10 % on a
//! thread blocking 20 000 times a second.
//!
//! So the weights only split time, the totals are exact: each sampled
//! block's record carries its thread's exact total so far, and a thread's
//! exact time over a window is divided among its stacks in proportion to
//! their weighted times in that window (a ratio estimator). A thread that
//! always blocks in one place gets exactly its time; a thread that blocks
//! in several gets the kernel's total split by the sample (consistent: the
//! split converges as its sampled blocks grow; with very few of them in a
//! window it leans to the stacks blocked most often). Time that no record
//! of its thread carries (a thread none of whose blocks was chosen in the
//! window, or its blocks after its last chosen one) is the difference
//! between the exact total of all threads and what the threads' records
//! account for: it is shown as `[stack not sampled]`.
//!
//! Everything is placed in time where the block ended: the kernel's
//! per-CPU totals can only be (they grow at each block's end), so the
//! records are too, and a block still going on at the end of the run is
//! placed there. A phase's off-CPU time is that of the blocks that ended
//! in it; a block that spans phases counts whole in the last.

use std::collections::HashMap;

use super::{aggregate::StackCounts, unwind::Frame};

/// One thread's sampled blocks.
#[derive(Default)]
struct ThreadBlocks {
    /// The thread's exact total at its last record, ns.
    last_total_ns: u64,
    /// Weighted ns (block time × N) per stack, at the blocks' end.
    weighted: StackCounts,
    /// The thread's exact ns since its record before, at each record's
    /// block end (the one stack `[]`).
    exact: StackCounts,
}

impl ThreadBlocks {
    /// The thread's exact total reached `total_ns` at `time_ns`: its
    /// growth since the record before goes there.
    fn exact_since(&mut self, time_ns: u64, total_ns: u64) {
        // A total below the last one is a new thread that reused the tid.
        let since =
            if total_ns >= self.last_total_ns { total_ns - self.last_total_ns } else { total_ns };
        self.last_total_ns = total_ns;
        self.exact.add_weighted(time_ns, &[], since);
    }
}

/// Off-CPU time of a run, per thread and stack, cut into windows at the end.
#[derive(Default)]
pub struct OffCpuTimes {
    threads: HashMap<u32, ThreadBlocks>,
    /// Exact ns of every block of every thread, where they were read (the
    /// one stack `[]`).
    all: StackCounts,
    /// Blocks still going on at the end, counted as they stand.
    ongoing: StackCounts,
}

impl OffCpuTimes {
    /// A sampled block of `tid` in `stack` that ended at `time_ns` (where
    /// [`OffCpuTimes::all_blocks`] counts it too): its time × N, and the
    /// thread's exact total then.
    pub fn sampled(
        &mut self,
        tid: u32,
        time_ns: u64,
        stack: &[Frame],
        weighted_ns: u64,
        thread_total_ns: u64,
    ) {
        let t = self.threads.entry(tid).or_default();
        t.weighted.add_weighted(time_ns, stack, weighted_ns);
        t.exact_since(time_ns, thread_total_ns);
    }

    /// A long block of `tid` whose stack was not taken ended at `time_ns`
    /// (`sched_kind::OFF_CPU_LONG_END`): the thread's exact total then.
    /// Its time goes to the thread's stacks like the rest of its time.
    pub fn unsampled(&mut self, tid: u32, time_ns: u64, thread_total_ns: u64) {
        self.threads.entry(tid).or_default().exact_since(time_ns, thread_total_ns);
    }

    /// `ns` of blocks of any thread that ended by `time_ns` since the last
    /// call (the kernel's per-CPU totals, read every 100 ms).
    pub fn all_blocks(&mut self, time_ns: u64, ns: u64) {
        self.all.add_weighted(time_ns, &[], ns);
    }

    /// A block still going on at the end (`time_ns`): `ns` since its start.
    pub fn ongoing(&mut self, time_ns: u64, stack: &[Frame], ns: u64) {
        self.ongoing.add_weighted(time_ns, stack, ns);
    }

    /// ns off CPU per stack over the buckets whose middle lies in
    /// `[start_ns, end_ns)` (`None`: the whole run), heaviest first.
    pub fn estimate(&self, range: Option<(u64, u64)>) -> Vec<(Box<[Frame]>, u64)> {
        let mut out: HashMap<Box<[Frame]>, u64> = HashMap::new();
        let mut accounted: u64 = 0;
        for t in self.threads.values() {
            let exact: u64 = t.exact.window(range).values().sum();
            // A window in which none of the thread's sampled blocks ended
            // (only long unsampled ones): its stacks over the whole run.
            let mut weighted = t.weighted.window(range);
            if weighted.values().sum::<u64>() == 0 && exact > 0 {
                weighted = t.weighted.window(None);
            }
            let total_weight: u64 = weighted.values().sum();
            if total_weight == 0 {
                continue;
            }
            for (id, w) in weighted {
                let ns = (u128::from(exact) * u128::from(w) / u128::from(total_weight)) as u64;
                *out.entry(t.weighted.stack(id).into()).or_default() += ns;
                accounted += ns;
            }
        }
        let all: u64 = self.all.window(range).values().sum();
        let rest = all.saturating_sub(accounted);
        if rest > 0 {
            *out.entry([Frame::Unsampled].into()).or_default() += rest;
        }
        for (id, ns) in self.ongoing.window(range) {
            *out.entry(self.ongoing.stack(id).into()).or_default() += ns;
        }
        let mut v: Vec<(Box<[Frame]>, u64)> = out.into_iter().filter(|(_, n)| *n > 0).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(a: u64) -> Vec<Frame> {
        vec![Frame::Kernel(1), Frame::Kernel(a)]
    }

    fn ns_of(v: &[(Box<[Frame]>, u64)], s: &[Frame]) -> u64 {
        v.iter().find(|(f, _)| &f[..] == s).map_or(0, |x| x.1)
    }

    #[test]
    fn a_thread_blocking_in_one_place_gets_its_exact_time() {
        let mut o = OffCpuTimes::default();
        // Two chosen blocks of 100 and 3000 ns weighing 50 each (an
        // estimate of 155 µs); the thread's exact total reached 20 µs.
        o.sampled(7, 1_000, &stack(2), 100 * 50, 12_000);
        o.sampled(7, 2_000, &stack(2), 3_000 * 50, 20_000);
        o.all_blocks(3_000, 21_000);
        let v = o.estimate(None);
        assert_eq!(ns_of(&v, &stack(2)), 20_000);
        // The 1 µs after its last record (or of threads never chosen).
        assert_eq!(ns_of(&v, &[Frame::Unsampled]), 1_000);
    }

    #[test]
    fn a_thread_time_is_split_by_the_weights_of_its_stacks() {
        let mut o = OffCpuTimes::default();
        o.sampled(7, 10, &stack(2), 300, 1_000);
        o.sampled(7, 20, &stack(3), 100, 2_000);
        o.sampled(8, 30, &stack(3), 5, 500);
        o.all_blocks(40, 2_500);
        let v = o.estimate(None);
        assert_eq!(ns_of(&v, &stack(2)), 1_500);
        assert_eq!(ns_of(&v, &stack(3)), 500 + 500);
        assert_eq!(ns_of(&v, &[Frame::Unsampled]), 0);
        assert_eq!(v[0].0[..], stack(2)[..], "heaviest first");
    }

    #[test]
    fn a_reused_tid_starts_a_new_total_and_windows_cut_by_time() {
        let mut o = OffCpuTimes::default();
        o.sampled(7, 50_000_000, &stack(2), 10, 9_000);
        // A new thread with the same tid: its total restarts.
        o.sampled(7, 250_000_000, &stack(3), 10, 4_000);
        let first = o.estimate(Some((0, 100_000_000)));
        assert_eq!(ns_of(&first, &stack(2)), 9_000);
        assert_eq!(ns_of(&first, &stack(3)), 0);
        let second = o.estimate(Some((200_000_000, 300_000_000)));
        assert_eq!(ns_of(&second, &stack(3)), 4_000);
    }

    #[test]
    fn a_long_unsampled_block_goes_to_its_threads_stacks() {
        let mut o = OffCpuTimes::default();
        // Thread 7 blocked in two places while busy (weights 3:1), then
        // waited 2 s unsampled; thread 8 has no stack at all.
        o.sampled(7, 1_000_000_000, &stack(2), 300, 1_000);
        o.sampled(7, 1_100_000_000, &stack(3), 100, 2_000);
        o.unsampled(7, 5_000_000_000, 2_002_000);
        o.unsampled(8, 5_000_000_000, 7_000);
        o.all_blocks(5_050_000_000, 2_000_000 + 7_000);
        let late = o.estimate(Some((4_000_000_000, 6_000_000_000)));
        assert_eq!(ns_of(&late, &stack(2)), 1_500_000);
        assert_eq!(ns_of(&late, &stack(3)), 500_000);
        assert_eq!(ns_of(&late, &[Frame::Unsampled]), 7_000, "thread 8's");
        // The window of the sampled blocks keeps only their own time.
        let early = o.estimate(Some((0, 2_000_000_000)));
        assert_eq!(ns_of(&early, &stack(2)) + ns_of(&early, &stack(3)), 2_000);
    }

    #[test]
    fn ongoing_blocks_count_as_they_stand() {
        let mut o = OffCpuTimes::default();
        o.ongoing(5, &stack(4), 777);
        assert_eq!(ns_of(&o.estimate(None), &stack(4)), 777);
    }
}
