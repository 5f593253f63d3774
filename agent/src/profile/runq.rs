//! Run-queue waits (from a target thread's wake-up or preemption to the
//! moment it runs) per time bucket. With `--runq-waits`, as log-linear
//! histograms: the kernel side counts them in
//! `agent_common::profile::runq_bin`'s bins (16 per power of two, so a
//! percentile read from them is within 1/32, ~3 %, of the exact value),
//! user space adds the counts read every 100 ms to the bucket of that
//! time. With the off-CPU ticks (the default), their mean: the growth of
//! the threads' `run_delay` over that of their switches, as each tick
//! reads them ([`RunqWaits::add_delays`]), which costs nothing at context
//! switches. Memory is bounded like the stack counts'.

use std::collections::{BTreeMap, HashMap};

use super::aggregate::{FIRST_WIDTH_NS, MAX_BUCKETS, StackCounts};

/// The middle of a bin's value range (`agent_common::profile::runq_bin`'s
/// bins: exact below 16, then 16 per power of two).
pub fn bin_middle(bin: u32) -> f64 {
    const SUB: u64 = 16;
    let bin = bin as u64;
    if bin < SUB {
        return bin as f64;
    }
    let e = (bin - SUB) / SUB + 4;
    let m = (bin - SUB) % SUB;
    let lo = (SUB + m) << (e - 4);
    let width = 1u64 << (e - 4);
    lo as f64 + (width as f64 - 1.0) / 2.0
}

/// Histograms of waits per time bucket; and the ticks' sums of waited ns
/// and of waits (one weight each, under the empty stack).
pub struct RunqWaits {
    buckets: BTreeMap<u64, HashMap<u32, u64>>,
    width_ns: u64,
    delay_ns: StackCounts,
    waits: StackCounts,
}

impl Default for RunqWaits {
    fn default() -> Self {
        RunqWaits {
            buckets: BTreeMap::new(),
            width_ns: FIRST_WIDTH_NS,
            delay_ns: StackCounts::default(),
            waits: StackCounts::default(),
        }
    }
}

/// Percentiles of the waits in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunqSummary {
    pub count: u64,
    pub p50_ns: f64,
    pub p99_ns: f64,
}

impl RunqWaits {
    /// Waits counted per bin, placed at `time_ns`.
    pub fn add_bins(&mut self, time_ns: u64, bins: &[u64]) {
        if bins.iter().all(|&n| n == 0) {
            return;
        }
        let bucket = self.buckets.entry(time_ns / self.width_ns).or_default();
        for (bin, &n) in bins.iter().enumerate().filter(|(_, n)| **n > 0) {
            *bucket.entry(bin as u32).or_default() += n;
        }
        if self.buckets.len() > MAX_BUCKETS {
            let old = std::mem::take(&mut self.buckets);
            for (index, bins) in old {
                let merged = self.buckets.entry(index / 2).or_default();
                for (bin, n) in bins {
                    *merged.entry(bin).or_default() += n;
                }
            }
            self.width_ns *= 2;
        }
    }

    /// A tick's growth of the threads' `run_delay` (`delay_ns`) and of
    /// their switches (`waits`: each switch-out is followed by a wait
    /// before the switch-in), placed at `time_ns`.
    pub fn add_delays(&mut self, time_ns: u64, delay_ns: u64, waits: u64) {
        if waits > 0 || delay_ns > 0 {
            self.delay_ns.add_weighted(time_ns, &[], delay_ns);
            self.waits.add_weighted(time_ns, &[], waits);
        }
    }

    /// The mean wait, ns, from the ticks' sums over the buckets whose
    /// middle lies in `range` (`None`: the whole run); `None` without a
    /// wait there.
    pub fn mean(&self, range: Option<(u64, u64)>) -> Option<f64> {
        let sum = |c: &StackCounts| c.window(range).values().sum::<u64>();
        let waits = sum(&self.waits);
        (waits > 0).then(|| sum(&self.delay_ns) as f64 / waits as f64)
    }

    /// p50 and p99 over the buckets whose middle lies in `[start, end)`
    /// (`None`: the whole run); `None` when no wait fell there.
    pub fn window(&self, range: Option<(u64, u64)>) -> Option<RunqSummary> {
        let mut bins: BTreeMap<u32, u64> = BTreeMap::new();
        for (&index, counts) in &self.buckets {
            let mid = index * self.width_ns + self.width_ns / 2;
            if range.is_some_and(|(a, b)| mid < a || mid >= b) {
                continue;
            }
            for (&bin, &n) in counts {
                *bins.entry(bin).or_default() += n;
            }
        }
        let count: u64 = bins.values().sum();
        if count == 0 {
            return None;
        }
        // The value at rank ceil(p·count), as the middle of its bin.
        let at = |p: f64| {
            let rank = ((p * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (&bin, &n) in &bins {
                seen += n;
                if seen >= rank {
                    return bin_middle(bin);
                }
            }
            bin_middle(*bins.keys().last().expect("not empty"))
        };
        Some(RunqSummary { count, p50_ns: at(0.50), p99_ns: at(0.99) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::profile::{RUNQ_BINS, runq_bin};

    #[test]
    fn bin_middles_are_within_three_percent() {
        for v in (0..100_000u64).chain([1 << 20, 123_456_789]) {
            let mid = bin_middle(runq_bin(v) as u32);
            assert!((mid - v as f64).abs() <= v as f64 / 32.0 + 0.5, "{v}: {mid}");
        }
        assert_eq!(RUNQ_BINS, runq_bin(u64::MAX) + 1);
    }

    fn bins_of(values: impl Iterator<Item = u64>) -> Vec<u64> {
        let mut bins = vec![0; RUNQ_BINS];
        values.for_each(|v| bins[runq_bin(v)] += 1);
        bins
    }

    #[test]
    fn percentiles_of_a_window() {
        let mut w = RunqWaits::default();
        w.add_bins(0, &bins_of((1..=100u64).map(|i| i * 1000))); // 1 µs .. 100 µs
        w.add_bins(FIRST_WIDTH_NS * 5, &bins_of(std::iter::once(10_000_000)));
        let s = w.window(Some((0, FIRST_WIDTH_NS))).unwrap();
        assert_eq!(s.count, 100);
        assert!((s.p50_ns - 50_000.0).abs() <= 50_000.0 / 32.0, "{s:?}");
        assert!((s.p99_ns - 99_000.0).abs() <= 99_000.0 / 32.0, "{s:?}");
        assert_eq!(w.window(None).unwrap().count, 101);
        assert!(w.window(Some((FIRST_WIDTH_NS, FIRST_WIDTH_NS * 2))).is_none());
    }

    #[test]
    fn the_mean_wait_of_a_window_is_its_delay_over_its_waits() {
        let mut w = RunqWaits::default();
        assert_eq!(w.mean(None), None);
        w.add_delays(0, 3_000_000, 1_000); // 3 µs each
        w.add_delays(FIRST_WIDTH_NS * 3, 9_000_000, 1_000); // 9 µs each
        w.add_delays(FIRST_WIDTH_NS * 4, 0, 0); // nothing: not counted
        assert_eq!(w.mean(Some((0, FIRST_WIDTH_NS))), Some(3_000.0));
        assert_eq!(w.mean(None), Some(6_000.0));
        assert_eq!(w.mean(Some((FIRST_WIDTH_NS, FIRST_WIDTH_NS * 2))), None);
    }
}
