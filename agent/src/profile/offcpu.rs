//! Off-CPU time per stack. Each target thread's total comes from the
//! scheduler's own counters, read at every off-CPU tick (`tick_totals.rs`:
//! exact for the time asleep, the waits for a CPU after wake-ups split
//! from those after preemptions by what the ticks saw). Its stacks come
//! from a sample: at a tick, a few blocked threads are chosen at random
//! and each weighs the tick's period over its chance of being chosen for
//! the stack of its block (`offcpu_ticks.rs`). Summing those weights per
//! stack would be an unbiased estimate, but a noisy one (a count of a few
//! hundred samples a second).
//!
//! So the weights only split time, the totals are the counters': each
//! tick's reading of a thread carries its total so far, and a thread's
//! time over a window is divided among its stacks in proportion to their
//! weights in that window (a ratio estimator). A thread that always
//! blocks in one place gets all its time there; a thread that blocks in
//! several gets its total split by the sample (consistent: the split
//! converges as its sampled ticks grow; with very few of them in a window
//! it leans to the stacks blocked longest). Time that no weight of its
//! thread claims (a thread never chosen while blocked in the window) is
//! the difference between the total of all threads and what the threads'
//! weighted stacks account for: it is shown as `[stack not sampled]`.
//!
//! Everything is placed in time at the tick that read it: a phase's
//! off-CPU time is what the ticks inside it counted (to within a tick's
//! period at its edges).

use std::collections::HashMap;

use super::{aggregate::StackCounts, unwind::Frame};

/// One thread's sampled ticks.
#[derive(Default)]
struct ThreadBlocks {
    /// The thread's total at its last reading, ns.
    last_total_ns: u64,
    /// Weighted ns (a tick's period over its chance) per stack, at the ticks.
    weighted: StackCounts,
    /// The thread's ns since its reading before, at each reading (the one
    /// stack `[]`).
    exact: StackCounts,
}

impl ThreadBlocks {
    /// The thread's total reached `total_ns` at `time_ns`: its growth
    /// since the reading before goes there.
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
    /// ns off CPU of every thread, where they were read (the one stack
    /// `[]`).
    all: StackCounts,
}

impl OffCpuTimes {
    /// A tick at `time_ns` chose `tid`, blocked in `stack` (where
    /// [`OffCpuTimes::all_blocks`] counts its time too): its weight, and
    /// the thread's total then.
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

    /// A tick at `time_ns` read `tid`'s total without choosing a stack of
    /// it: its time goes to the thread's stacks like the rest of its time.
    pub fn unsampled(&mut self, tid: u32, time_ns: u64, thread_total_ns: u64) {
        self.threads.entry(tid).or_default().exact_since(time_ns, thread_total_ns);
    }

    /// `ns` off CPU of all threads together, read at `time_ns` since the
    /// last call (each tick's growth of the threads' totals).
    pub fn all_blocks(&mut self, time_ns: u64, ns: u64) {
        self.all.add_weighted(time_ns, &[], ns);
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
        // Two chosen ticks weighing 5 and 150 µs (an estimate of 155
        // µs); the thread's total from its counters reached 20 µs.
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
}
