//! Percentiles computed the way k6 computes them, so server-side and
//! client-side numbers are comparable: all samples sorted, rank `p·(n−1)`,
//! linear interpolation between the two neighbouring order statistics
//! (numpy's default, "linear").

/// `p` in [0, 100] of already **sorted** values; NaN for no values.
pub fn percentile_sorted(sorted: &[u64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0] as f64,
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            let frac = rank - lo as f64;
            sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac
        }
    }
}

/// p50 / p95 / p99 of `values` (sorted in place).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Percentiles {
    pub fn of(values: &mut [u64]) -> Percentiles {
        values.sort_unstable();
        Percentiles {
            p50: percentile_sorted(values, 50.0),
            p95: percentile_sorted(values, 95.0),
            p99: percentile_sorted(values, 99.0),
        }
    }

    /// The value for a percentile name used in metric IDs.
    pub fn get(&self, name: &str) -> f64 {
        match name {
            "p50" => self.p50,
            "p95" => self.p95,
            "p99" => self.p99,
            _ => f64::NAN,
        }
    }

    pub const NAMES: [&'static str; 3] = ["p50", "p95", "p99"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], [50, 95, 99]) = [2.5, 3.85, 3.97]
        let v = [1, 2, 3, 4];
        assert_eq!(percentile_sorted(&v, 50.0), 2.5);
        assert!((percentile_sorted(&v, 95.0) - 3.85).abs() < 1e-12);
        assert!((percentile_sorted(&v, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile_sorted(&v, 0.0), 1.0);
        assert_eq!(percentile_sorted(&v, 100.0), 4.0);
    }

    #[test]
    fn odd_count_median_is_the_middle_value() {
        let mut v = vec![50, 10, 40, 20, 30];
        let p = Percentiles::of(&mut v);
        assert_eq!(p.p50, 30.0);
        // rank 0.99 * 4 = 3.96 → 40 + 0.96 * 10
        assert!((p.p99 - 49.6).abs() < 1e-9);
    }

    #[test]
    fn empty_and_single() {
        assert!(percentile_sorted(&[], 50.0).is_nan());
        assert_eq!(percentile_sorted(&[7], 99.0), 7.0);
    }

    #[test]
    fn large_values_keep_nanosecond_precision() {
        let v = [20_000_123_456u64, 20_000_123_458];
        assert_eq!(percentile_sorted(&v, 50.0), 20_000_123_457.0);
    }
}
