//! Sparse log-linear histograms with HdrHistogram's bucketing at 3
//! significant digits, so a run's request durations take memory bounded by
//! the number of distinct buckets, not by the number of requests. Pure.
//!
//! Buckets: every value below 2048 ns is its own bucket; above, a value in
//! `[1024·2^e, 2048·2^e)` falls in a bucket `2^e` wide. That is exactly
//! HdrHistogram's layout for `sigfig = 3` and lowest discernible value 1
//! (checked against the `hdrhistogram` crate in the tests). A value is read
//! back as its bucket's midpoint, so it is off by at most half a bucket:
//! `2^(e−1) / (1024·2^e)` = 1/2048 ≈ 0.049 % of the value.
//!
//! Why not the crate's `Histogram` itself: its counts array is dense (one
//! counter per bucket up to the largest value: ~100–230 KB per histogram for
//! request latencies), and a run keeps one histogram per metric and time
//! segment; the sparse form holds only the buckets that were hit (a few
//! hundred to a few thousand per segment), 6 bytes each.

use crate::percentile::Percentiles;

/// Values below this have a bucket each.
const EXACT_BELOW: u64 = 2048;
const HALF_BITS: u32 = 10;

/// The bucket of `v` (monotonic in `v`; at most 56 319, for `u64::MAX`).
pub fn bucket_of(v: u64) -> u16 {
    if v < EXACT_BELOW {
        return v as u16;
    }
    let e = 63 - v.leading_zeros() - HALF_BITS; // v >> e is in [1024, 2048)
    ((e << HALF_BITS) + (v >> e) as u32) as u16
}

/// The values `[lo, hi]` of bucket `b`.
pub fn bucket_range(b: u16) -> (u64, u64) {
    let b = u64::from(b);
    if b < EXACT_BELOW {
        return (b, b);
    }
    let e = (b >> HALF_BITS) - 1;
    let sub = (b & ((1 << HALF_BITS) - 1)) | (1 << HALF_BITS);
    let lo = sub << e;
    (lo, lo + ((1u64 << e) - 1))
}

/// The value a bucket stands for: its midpoint.
pub fn bucket_value(b: u16) -> u64 {
    let (lo, hi) = bucket_range(b);
    lo + (hi - lo).div_ceil(2)
}

/// Counts per bucket, sorted by bucket, only buckets that were hit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseHistogram {
    buckets: Vec<u16>,
    counts: Vec<u32>,
}

impl SparseHistogram {
    pub fn from_values(values: impl IntoIterator<Item = u64>) -> SparseHistogram {
        let mut buckets: Vec<u16> = values.into_iter().map(bucket_of).collect();
        buckets.sort_unstable();
        let mut h = SparseHistogram::default();
        for b in buckets {
            h.add(b, 1);
        }
        h.shrink();
        h
    }

    /// Adds `n` to bucket `b`, which must be ≥ the last bucket.
    fn add(&mut self, b: u16, n: u32) {
        match self.buckets.last() {
            Some(&last) if last == b => {
                let c = self.counts.last_mut().expect("same length");
                *c = c.saturating_add(n);
            }
            _ => {
                self.buckets.push(b);
                self.counts.push(n);
            }
        }
    }

    fn shrink(&mut self) {
        self.buckets.shrink_to_fit();
        self.counts.shrink_to_fit();
    }

    /// Buckets held (memory: 6 bytes each).
    pub fn entries(&self) -> usize {
        self.buckets.len()
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.buckets.iter().copied().zip(self.counts.iter().copied())
    }

    /// Both histograms' counts.
    pub fn merge(&self, other: &SparseHistogram) -> SparseHistogram {
        let mut out = SparseHistogram::default();
        let (mut a, mut b) = (self.iter().peekable(), other.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            let (bucket, n) = next.expect("peeked");
            out.add(bucket, n);
        }
        out.shrink();
        out
    }
}

/// p50 / p95 / p99 of everything in `parts` and `raw`, the way k6 computes
/// percentiles (rank `p·(n−1)`, linear interpolation between neighbouring
/// order statistics), each order statistic read as its bucket's midpoint:
/// within 1/2048 of the exact percentile of the same values.
pub fn percentiles(parts: &[&SparseHistogram], raw: &[u64]) -> Percentiles {
    let mut all: Vec<(u16, u32)> = parts.iter().flat_map(|h| h.iter()).collect();
    all.extend(raw.iter().map(|&v| (bucket_of(v), 1)));
    all.sort_unstable_by_key(|&(b, _)| b);
    // Cumulative counts: `cum[i]` order statistics are in buckets 0..=i.
    let mut cum = Vec::with_capacity(all.len());
    let mut total = 0u64;
    for &(_, n) in &all {
        total += u64::from(n);
        cum.push(total);
    }
    let nth = |k: u64| -> f64 {
        let i = cum.partition_point(|&c| c <= k);
        bucket_value(all[i].0) as f64
    };
    let at = |p: f64| -> f64 {
        match total {
            0 => f64::NAN,
            1 => nth(0),
            n => {
                let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
                let lo = rank.floor() as u64;
                let hi = (lo + 1).min(n - 1);
                let (a, b) = (nth(lo), nth(hi));
                a + (b - a) * (rank - lo as f64)
            }
        }
    };
    Percentiles { p50: at(50.0), p95: at(95.0), p99: at(99.0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::percentile::percentile_sorted;

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Log-uniform in [1, 2^bits).
        fn log_uniform(&mut self, bits: u32) -> u64 {
            let e = self.next() % u64::from(bits);
            (1u64 << e) + self.next() % (1u64 << e)
        }
    }

    #[test]
    fn buckets_are_hdrhistograms_at_three_significant_digits() {
        let hdr = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let mut rng = Rng(1);
        let mut values: Vec<u64> = (0..20_000).map(|_| rng.log_uniform(63)).collect();
        values.extend([0, 1, 2047, 2048, 2049, 4095, 4096, u64::MAX >> 1, u64::MAX]);
        for v in values {
            let (lo, hi) = bucket_range(bucket_of(v));
            assert!(lo <= v && v <= hi, "{v} not in its bucket [{lo}, {hi}]");
            if v < u64::MAX >> 2 {
                assert_eq!((lo, hi), (hdr.lowest_equivalent(v), hdr.highest_equivalent(v)), "{v}");
            }
            let mid = bucket_value(bucket_of(v));
            assert!(mid.abs_diff(v) as f64 <= v as f64 / 2048.0, "{v} read back as {mid}");
        }
        assert!(bucket_of(u64::MAX) < u16::MAX);
    }

    #[test]
    fn merge_adds_counts_bucket_by_bucket() {
        let a = SparseHistogram::from_values([1, 5, 5, 3000, 1 << 40]);
        let b = SparseHistogram::from_values([5, 3001, 7]);
        let m = a.merge(&b);
        assert_eq!(m, SparseHistogram::from_values([1, 5, 5, 3000, 1 << 40, 5, 3001, 7]));
        assert_eq!(m.total(), 8);
        assert_eq!(m.entries(), 5, "3000 and 3001 share a 2 ns bucket");
    }

    fn assert_close(parts: &[&SparseHistogram], raw: &[u64], exact_values: &mut [u64]) {
        exact_values.sort_unstable();
        let got = percentiles(parts, raw);
        for (name, p) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0)] {
            let exact = percentile_sorted(exact_values, p);
            let err = (got.get(name) - exact).abs();
            assert!(
                err <= exact / 2048.0 + 1e-9,
                "{name}: {} vs exact {exact} ({} values)",
                got.get(name),
                exact_values.len()
            );
        }
    }

    /// Random distributions, split at random into histograms and raw
    /// values: every percentile within 1/2048 (< 0.1 %) of the exact one.
    #[test]
    fn percentiles_stay_within_a_2048th_of_exact_ones() {
        let mut rng = Rng(0x5eed);
        for case in 0..300 {
            let n = 1 + (rng.next() % 5_000) as usize;
            let mut values: Vec<u64> = match case % 4 {
                0 => (0..n).map(|_| rng.log_uniform(40)).collect(),
                1 => (0..n).map(|_| 20_000 + rng.next() % 200_000).collect(),
                // Bimodal: fast hits and slow misses.
                2 => (0..n)
                    .map(|_| if rng.next().is_multiple_of(10) { 50_000_000 } else { 40_000 } + rng.next() % 999)
                    .collect(),
                _ => vec![1 + rng.next() % 1_000_000_000; n],
            };
            let cut1 = (rng.next() % (n as u64 + 1)) as usize;
            let cut2 = cut1 + (rng.next() % (n - cut1 + 1) as u64) as usize;
            let a = SparseHistogram::from_values(values[..cut1].iter().copied());
            let b = SparseHistogram::from_values(values[cut1..cut2].iter().copied());
            let raw = values[cut2..].to_vec();
            assert_close(&[&a, &b], &raw, &mut values);
            assert_close(&[&a.merge(&b)], &raw, &mut values);
        }
        assert!(percentiles(&[], &[]).p50.is_nan());
    }

    /// Latencies recorded by k6 (`http_req_duration`, ns; 4 VUs for 2 s
    /// against the demo server on loopback, 21 µs to 23 ms).
    #[test]
    fn recorded_latencies_match_their_exact_percentiles() {
        let mut values: Vec<u64> = include_str!("../tests/data/latencies_ns.txt")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert!(values.len() > 1000);
        let h = SparseHistogram::from_values(values.iter().copied());
        assert!(h.entries() < values.len() / 2, "{} buckets", h.entries());
        assert_close(&[&h], &[], &mut values);
    }
}
