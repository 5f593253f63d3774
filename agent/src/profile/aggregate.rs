//! Stacks counted per time bucket, so that any phase (known only at the end
//! of the run) can be cut out of one aggregation. Memory is bounded: each
//! distinct stack is stored once, and when there are more than
//! [`MAX_BUCKETS`] buckets, neighbours merge and the width doubles (phase
//! edges then fall on coarser boundaries; see `docs/metrics.md`).

use std::collections::BTreeMap;

/// Stacks are hashed at every sample: a fast hash (no defence against
/// chosen keys is needed: the keys are addresses the kernel saw).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use super::unwind::Frame;

/// Buckets kept before neighbours merge.
pub const MAX_BUCKETS: usize = 1024;
/// Starting bucket width.
pub const FIRST_WIDTH_NS: u64 = 100_000_000;

/// Counts (or weights) of interned stacks per time bucket.
pub struct StackCounts {
    stacks: Vec<Box<[Frame]>>,
    ids: HashMap<Box<[Frame]>, u32>,
    /// Bucket index (`time / width_ns`) → stack id → samples.
    buckets: BTreeMap<u64, HashMap<u32, u64>>,
    width_ns: u64,
}

impl Default for StackCounts {
    fn default() -> Self {
        StackCounts::with_width(FIRST_WIDTH_NS)
    }
}

impl StackCounts {
    pub fn with_width(width_ns: u64) -> StackCounts {
        StackCounts {
            stacks: Vec::new(),
            ids: HashMap::default(),
            buckets: BTreeMap::new(),
            width_ns: width_ns.max(1),
        }
    }

    /// Counts one sample of `stack` (outermost frame first) at `time_ns`.
    pub fn add(&mut self, time_ns: u64, stack: &[Frame]) {
        self.add_weighted(time_ns, stack, 1);
    }

    /// Adds `weight` (samples, or ns blocked) to `stack` at `time_ns`.
    pub fn add_weighted(&mut self, time_ns: u64, stack: &[Frame], weight: u64) {
        let id = match self.ids.get(stack) {
            Some(&id) => id,
            None => {
                let id = self.stacks.len() as u32;
                self.stacks.push(stack.into());
                self.ids.insert(stack.into(), id);
                id
            }
        };
        *self.buckets.entry(time_ns / self.width_ns).or_default().entry(id).or_default() += weight;
        if self.buckets.len() > MAX_BUCKETS {
            self.halve();
        }
    }

    /// Doubles the bucket width, merging neighbours.
    fn halve(&mut self) {
        let old = std::mem::take(&mut self.buckets);
        for (index, counts) in old {
            let merged = self.buckets.entry(index / 2).or_default();
            for (id, n) in counts {
                *merged.entry(id).or_default() += n;
            }
        }
        self.width_ns *= 2;
    }

    pub fn width_ns(&self) -> u64 {
        self.width_ns
    }

    pub fn distinct_stacks(&self) -> usize {
        self.stacks.len()
    }

    pub fn stack(&self, id: u32) -> &[Frame] {
        &self.stacks[id as usize]
    }

    /// Samples per stack id over the buckets whose middle lies in
    /// `[start_ns, end_ns)`; `None`: the whole run.
    pub fn window(&self, range: Option<(u64, u64)>) -> HashMap<u32, u64> {
        let mut out: HashMap<u32, u64> = HashMap::default();
        for (&index, counts) in &self.buckets {
            let mid = index * self.width_ns + self.width_ns / 2;
            if range.is_some_and(|(a, b)| mid < a || mid >= b) {
                continue;
            }
            for (&id, &n) in counts {
                *out.entry(id).or_default() += n;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(a: u64) -> Vec<Frame> {
        vec![Frame::Kernel(1), Frame::Kernel(a)]
    }

    #[test]
    fn windows_pick_buckets_by_their_middle() {
        let mut c = StackCounts::with_width(10);
        c.add(3, &stack(1)); // bucket [0,10), middle 5
        c.add(14, &stack(1)); // [10,20), middle 15
        c.add(17, &stack(2));
        c.add(25, &stack(2)); // [20,30)
        assert_eq!(c.distinct_stacks(), 2);
        let all = c.window(None);
        assert_eq!(all.values().sum::<u64>(), 4);
        let w = c.window(Some((10, 20)));
        assert_eq!((w[&0], w[&1]), (1, 1));
        assert!(c.window(Some((6, 15))).is_empty());
    }

    #[test]
    fn memory_stays_bounded_by_merging_neighbours() {
        let mut c = StackCounts::with_width(1);
        for t in 0..(MAX_BUCKETS as u64 * 8) {
            c.add(t, &stack(t % 3));
        }
        assert!(c.buckets.len() <= MAX_BUCKETS);
        assert_eq!(c.width_ns(), 8);
        assert_eq!(c.window(None).values().sum::<u64>(), MAX_BUCKETS as u64 * 8);
        // A window on merged buckets still counts each sample once.
        assert_eq!(c.window(Some((0, 80))).values().sum::<u64>(), 80);
    }
}
