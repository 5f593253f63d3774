//! Time segments of folded requests: per segment, exact counts and sparse
//! histograms of latency, time to first byte, proxy overhead and upstream
//! call time. Segments end at registered cuts (phase edges) and at whole
//! seconds; when there are too many (long runs), neighbours not separated
//! by a cut are merged, so memory stays bounded whatever the run's length
//! and rate. Pure.

use super::{
    Request, UpstreamCall,
    segment_list::{SegmentList, Span, TimeSegment},
};
use crate::histogram::SparseHistogram;

/// Above this many histogram buckets in all (6 bytes each: 6 MiB) or this
/// many segments, neighbours not separated by a cut are merged.
const MAX_ENTRIES: usize = 1 << 20;
const MAX_SEGMENTS: usize = 4096;

/// Exact counts of a segment or window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub count: u64,
    pub status_known: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub with_upstream: u64,
    pub upstream_calls: u64,
    pub max_latency_ns: u64,
}

impl Counts {
    pub fn add_request(&mut self, r: &Request) {
        self.count += 1;
        self.status_known += u64::from(r.status != 0);
        self.status_4xx += u64::from((400..500).contains(&r.status));
        self.status_5xx += u64::from(r.status >= 500);
        self.with_upstream += u64::from(r.upstream_ns > 0);
        self.max_latency_ns = self.max_latency_ns.max(r.latency_ns());
    }

    pub fn merge(&mut self, o: &Counts) {
        self.count += o.count;
        self.status_known += o.status_known;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.with_upstream += o.with_upstream;
        self.upstream_calls += o.upstream_calls;
        self.max_latency_ns = self.max_latency_ns.max(o.max_latency_ns);
    }
}

/// The requests and calls that ended in `(lo, hi]`.
#[derive(Clone, Debug, Default)]
pub struct Segment {
    pub span: Span,
    pub counts: Counts,
    pub latency: SparseHistogram,
    pub ttfb: SparseHistogram,
    pub overhead: SparseHistogram,
    pub upstream: SparseHistogram,
}

impl Segment {
    fn of(lo: u64, hi: u64, reqs: &[&Request], calls: &[&UpstreamCall]) -> Segment {
        let mut counts = Counts::default();
        reqs.iter().for_each(|r| counts.add_request(r));
        counts.upstream_calls = calls.len() as u64;
        let ends = reqs.iter().map(|r| r.end_ns).chain(calls.iter().map(|c| c.end_ns));
        let (first_end, last_end) = ends.fold((u64::MAX, 0), |(a, b), t| (a.min(t), b.max(t)));
        Segment {
            span: Span { lo, hi, first_end, last_end },
            counts,
            latency: SparseHistogram::from_values(reqs.iter().map(|r| r.latency_ns())),
            ttfb: SparseHistogram::from_values(reqs.iter().map(|r| r.ttfb_ns())),
            overhead: SparseHistogram::from_values(
                reqs.iter().filter(|r| r.upstream_ns > 0).map(|r| r.overhead_ns()),
            ),
            upstream: SparseHistogram::from_values(calls.iter().map(|c| c.end_ns - c.start_ns)),
        }
    }
}

impl TimeSegment for Segment {
    const MAX_SEGMENTS: usize = MAX_SEGMENTS;
    const MAX_ENTRIES: Option<usize> = Some(MAX_ENTRIES);

    fn span(&self) -> &Span {
        &self.span
    }
    fn span_mut(&mut self) -> &mut Span {
        &mut self.span
    }

    fn absorb_contents(&mut self, o: &Segment) {
        self.counts.merge(&o.counts);
        self.latency = self.latency.merge(&o.latency);
        self.ttfb = self.ttfb.merge(&o.ttfb);
        self.overhead = self.overhead.merge(&o.overhead);
        self.upstream = self.upstream.merge(&o.upstream);
    }

    fn entries(&self) -> usize {
        self.latency.entries()
            + self.ttfb.entries()
            + self.overhead.entries()
            + self.upstream.entries()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Segments {
    list: SegmentList<Segment>,
    pub late_cuts: u64,
}

impl Segments {
    /// A new edge: the segment still open across it (all its requests
    /// ended before it) now ends there. An edge in what is already folded
    /// splits nothing and is counted late.
    pub fn cut(&mut self, t: u64) {
        self.late_cuts += u64::from(self.list.cut(t));
    }

    /// Whether a fold up to `horizon` has anything new to fold.
    pub fn fold_point(&self, horizon: u64) -> Option<u64> {
        self.list.fold_point(horizon)
    }

    /// Folds requests and calls (all ended by `until`) into their segments.
    pub fn fold(&mut self, reqs: &[Request], calls: &[UpstreamCall], until: u64) {
        let mut reqs: Vec<&Request> = reqs.iter().collect();
        let mut calls: Vec<&UpstreamCall> = calls.iter().collect();
        reqs.sort_unstable_by_key(|r| r.end_ns);
        calls.sort_unstable_by_key(|c| c.end_ns);
        let (mut i, mut j) = (0, 0);
        while i < reqs.len() || j < calls.len() {
            let t = match (reqs.get(i), calls.get(j)) {
                (Some(r), Some(c)) => r.end_ns.min(c.end_ns),
                (Some(r), None) => r.end_ns,
                (None, Some(c)) => c.end_ns,
                (None, None) => unreachable!(),
            };
            let (lo, hi) = self.list.bounds(t);
            let i_end = i + reqs[i..].partition_point(|r| r.end_ns <= hi);
            let j_end = j + calls[j..].partition_point(|c| c.end_ns <= hi);
            self.list.insert(Segment::of(lo, hi, &reqs[i..i_end], &calls[j..j_end]));
            (i, j) = (i_end, j_end);
        }
        self.list.folded(until);
    }

    /// The segments whose requests count in `(start, end]`: those whose
    /// requests' middle end time is in it (all of a segment's requests are,
    /// when the window's edges are cuts).
    pub fn within(&self, start: u64, end: u64) -> Vec<&Segment> {
        self.list.within(start, end)
    }
}
