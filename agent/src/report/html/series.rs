//! The run's timelines for the report: per sampling interval (CPU, RSS,
//! from the sample series) and per request bucket (requests/s, p50/p99,
//! errors, from the request log). Pure.
//!
//! Request buckets are whole seconds of CLOCK_MONOTONIC (or a whole number
//! of them): the request log's segments end there, so each bucket's count
//! is exact and the buckets add up to the run's `requests/count`. The first
//! and last buckets are cut at the run's edges.

use std::time::Duration;

use crate::{
    requests::{RequestLog, segment_list::SEGMENT_NS},
    timeline::{self, Interval, Sample},
};

/// At most this many points per series (longer runs are coarser).
const MAX_POINTS: usize = 3000;

/// The requests that ended in `(t0_ns, t1_ns]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub t0_ns: u64,
    pub t1_ns: u64,
    pub count: u64,
    /// Over the bucket's own length.
    pub rps: f64,
    /// NaN without requests.
    pub p50_ns: f64,
    pub p99_ns: f64,
    /// 4xx, 5xx and resets (the resets read from the series at the edges).
    pub errors: u64,
}

/// Both kinds of series, times on CLOCK_MONOTONIC.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// The first and last samples: the run's window.
    pub t0_ns: u64,
    pub t1_ns: u64,
    pub interval: Duration,
    pub intervals: Vec<Interval>,
    pub bucket_ns: u64,
    pub buckets: Vec<Bucket>,
}

impl Series {
    /// `interval`: the sampling interval (the buckets are at least that long).
    pub fn of(samples: &[Sample], log: &RequestLog, interval: Duration) -> Series {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return Series::default();
        };
        let (t0_ns, t1_ns) = (first.t_ns, last.t_ns);
        let span_secs = (t1_ns - t0_ns).div_ceil(SEGMENT_NS);
        let secs = (interval.as_nanos() as u64).div_ceil(SEGMENT_NS).max(1);
        let bucket_ns = secs.max(span_secs.div_ceil(MAX_POINTS as u64)) * SEGMENT_NS;
        Series {
            t0_ns,
            t1_ns,
            interval,
            intervals: timeline::intervals(samples, MAX_POINTS),
            bucket_ns,
            buckets: buckets(samples, log, bucket_ns),
        }
    }
}

/// Buckets over the run's request window `(first sample − 1, last sample]`
/// (the whole-run numbers' own), edges at multiples of `bucket_ns`.
fn buckets(samples: &[Sample], log: &RequestLog, bucket_ns: u64) -> Vec<Bucket> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return Vec::new() };
    let start = first.t_ns.saturating_sub(1);
    let mut edges = vec![start];
    let mut edge = (start / bucket_ns + 1) * bucket_ns;
    while edge < last.t_ns {
        edges.push(edge);
        edge += bucket_ns;
    }
    edges.push(last.t_ns);
    let resets_at = |t: u64| timeline::at(samples, t.max(first.t_ns)).map_or(0, |s| s.resets);
    edges
        .windows(2)
        .map(|w| {
            let (t0_ns, t1_ns) = (w[0], w[1]);
            let r = log.window(t0_ns, t1_ns);
            let resets = resets_at(t1_ns).saturating_sub(resets_at(t0_ns));
            Bucket {
                t0_ns,
                t1_ns,
                count: r.count,
                rps: r.rps,
                p50_ns: if r.count > 0 { r.latency.p50 } else { f64::NAN },
                p99_ns: if r.count > 0 { r.latency.p99 } else { f64::NAN },
                errors: r.http_errors() + resets,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use agent_common::{NetEvent, event_kind};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn sample(t_ns: u64, resets: u64) -> Sample {
        Sample { t_ns, resets, ..Default::default() }
    }

    #[test]
    fn buckets_are_whole_seconds_and_add_up_to_the_run() {
        let samples: Vec<Sample> = (0..=35).map(|i| sample(S / 2 + i * S / 10, i / 10)).collect(); // 0.5 s .. 4.0 s
        let mut log = RequestLog::default();
        for i in 1..400u64 {
            let end = S / 2 + i * S / 100; // every 10 ms from 0.51 s
            log.push(&NetEvent {
                start_ns: end - 1_000_000,
                first_response_ns: end - 500_000,
                end_ns: end,
                kind: event_kind::REQUEST,
                status: if i % 50 == 0 { 500 } else { 200 },
                ..Default::default()
            });
            log.fold(end.saturating_sub(S / 5));
        }
        let series = Series::of(&samples, &log, Duration::from_millis(100));
        let edges: Vec<(u64, u64)> = series.buckets.iter().map(|b| (b.t0_ns, b.t1_ns)).collect();
        assert_eq!(edges, [(S / 2 - 1, S), (S, 2 * S), (2 * S, 3 * S), (3 * S, 4 * S)]);
        let whole = log.window(S / 2 - 1, 4 * S);
        assert_eq!(series.buckets.iter().map(|b| b.count).sum::<u64>(), whole.count);
        assert_eq!(series.buckets[1].count, 100);
        assert!((series.buckets[1].rps - 100.0).abs() < 1e-9);
        assert!((series.buckets[1].p50_ns - 1e6).abs() <= 1e6 / 2048.0);
        // 2 × 500 per second and the resets (one per second of samples).
        assert_eq!(series.buckets.iter().map(|b| b.errors).sum::<u64>(), 7 + 3);
        assert_eq!(series.intervals.len(), 35);
        assert_eq!(series.bucket_ns, S);
    }

    #[test]
    fn long_runs_get_coarser_buckets_and_empty_ones_have_no_percentiles() {
        let samples = [sample(0, 0), sample(10_000 * S, 0)];
        let series = Series::of(&samples, &RequestLog::default(), Duration::from_millis(100));
        assert_eq!(series.bucket_ns, 4 * S, "10 000 s in at most {MAX_POINTS} buckets");
        assert!(series.buckets.len() <= MAX_POINTS);
        assert!(series.buckets[0].p50_ns.is_nan() && series.buckets[0].count == 0);
        let slow = Series::of(&samples[..1], &RequestLog::default(), Duration::from_millis(2500));
        assert_eq!(slow.bucket_ns, 3 * S, "never shorter than the sampling interval");
    }
}
