//! A bounded, time-ordered list of segments `(lo, hi]` that end at
//! registered cuts (phase edges) and at whole seconds. When there are too
//! many segments (or, optionally, too many histogram entries in all),
//! neighbours not separated by a cut are merged, so memory stays bounded
//! whatever the run's length and rate, while every window between cuts
//! stays exact. Shared by request segments and delivery segments. Pure.

use std::collections::BTreeSet;

/// Regular segment length: an edge that was never registered (e.g. from
/// a `--k6-results` file, known only after the run) is placed within this
/// (until long runs merge segments).
pub const SEGMENT_NS: u64 = 1_000_000_000;

/// Where a segment lies: it holds what ended in `(lo, hi]`, the earliest
/// at `first_end`, the latest at `last_end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub lo: u64,
    pub hi: u64,
    pub first_end: u64,
    pub last_end: u64,
}

impl Span {
    /// The union with a neighbour's or an overlapping segment's span.
    fn absorb(&mut self, o: &Span) {
        self.lo = self.lo.min(o.lo);
        self.hi = self.hi.max(o.hi);
        self.first_end = self.first_end.min(o.first_end);
        self.last_end = self.last_end.max(o.last_end);
    }
}

/// What the list needs of a segment: its span, a way to add a neighbour's
/// contents, and (optionally) a measure of its size.
pub trait TimeSegment {
    /// Beyond this many segments, neighbours not separated by a cut merge.
    const MAX_SEGMENTS: usize;
    /// Beyond this many entries in all, likewise; `None`: no such limit.
    const MAX_ENTRIES: Option<usize> = None;

    fn span(&self) -> &Span;
    fn span_mut(&mut self) -> &mut Span;
    /// Adds another segment's contents (counts, histograms); the span is
    /// the list's business.
    fn absorb_contents(&mut self, other: &Self);
    /// Size counted against `MAX_ENTRIES`.
    fn entries(&self) -> usize {
        0
    }
}

/// Takes in a neighbour or an overlapping segment.
fn absorb<S: TimeSegment>(a: &mut S, b: &S) {
    a.span_mut().absorb(b.span());
    a.absorb_contents(b);
}

#[derive(Clone, Debug)]
pub struct SegmentList<S> {
    /// Sorted by time, disjoint.
    list: Vec<S>,
    cuts: BTreeSet<u64>,
    /// Everything that ended by this is folded.
    folded_until: u64,
}

impl<S> Default for SegmentList<S> {
    fn default() -> Self {
        SegmentList { list: Vec::new(), cuts: BTreeSet::new(), folded_until: 0 }
    }
}

impl<S: TimeSegment> SegmentList<S> {
    /// A new edge: the segment still open across it (all its contents
    /// ended before it) now ends there. Returns true when the edge is new
    /// but falls in what is already folded: it then splits nothing (late).
    pub fn cut(&mut self, t: u64) -> bool {
        if !self.cuts.insert(t) {
            return false;
        }
        if t < self.folded_until {
            return true;
        }
        if let Some(s) = self.list.iter_mut().find(|s| s.span().lo < t && t < s.span().hi) {
            s.span_mut().hi = t;
        }
        false
    }

    /// Whether a fold up to `horizon` has anything new to fold.
    pub fn fold_point(&self, horizon: u64) -> Option<u64> {
        Some(horizon).filter(|&u| u > self.folded_until)
    }

    /// The segment boundaries around `t`: `(lo, hi]` holds it.
    pub fn bounds(&self, t: u64) -> (u64, u64) {
        if let Some(s) = self.list.iter().map(S::span).find(|s| s.lo < t && t <= s.hi) {
            return (s.lo, s.hi);
        }
        let lo_regular = t.saturating_sub(1) / SEGMENT_NS * SEGMENT_NS;
        let lo = self.cuts.range(..t).next_back().map_or(lo_regular, |&c| c.max(lo_regular));
        let hi_regular = t.div_ceil(SEGMENT_NS) * SEGMENT_NS;
        let hi = self.cuts.range(t..).next().map_or(hi_regular, |&c| c.min(hi_regular));
        (lo, hi)
    }

    /// Adds a segment made within `bounds`: absorbed by the one it
    /// overlaps, else placed in order.
    pub fn insert(&mut self, seg: S) {
        let new = *seg.span();
        match self.list.iter_mut().find(|s| s.span().lo < new.hi && new.lo < s.span().hi) {
            Some(s) => absorb(s, &seg),
            None => {
                let at = self.list.partition_point(|s| s.span().hi <= new.lo);
                self.list.insert(at, seg);
            }
        }
    }

    /// Ends a fold: everything that ended by `until` is in, and the list
    /// is brought back under its limits.
    pub fn folded(&mut self, until: u64) {
        self.folded_until = self.folded_until.max(until);
        self.coarsen();
    }

    fn over_limits(&self) -> bool {
        self.list.len() > S::MAX_SEGMENTS
            || S::MAX_ENTRIES
                .is_some_and(|max| self.list.iter().map(S::entries).sum::<usize>() > max)
    }

    /// Merges neighbours not separated by a cut while over the limits.
    fn coarsen(&mut self) {
        while self.over_limits() {
            let mut merged = Vec::with_capacity(self.list.len() / 2 + 1);
            let mut any = false;
            let mut it = std::mem::take(&mut self.list).into_iter().peekable();
            while let Some(mut a) = it.next() {
                let joinable = it
                    .peek()
                    .is_some_and(|b| self.cuts.range(a.span().hi..=b.span().lo).next().is_none());
                if joinable {
                    absorb(&mut a, &it.next().expect("peeked"));
                    any = true;
                }
                merged.push(a);
            }
            self.list = merged;
            if !any {
                break;
            }
        }
    }

    /// The segments whose contents count in `(start, end]`: those whose
    /// middle end time is in it (all of a segment's contents are, when the
    /// window's edges are cuts).
    pub fn within(&self, start: u64, end: u64) -> Vec<&S> {
        self.list
            .iter()
            .filter(|s| {
                let Span { first_end, last_end, .. } = *s.span();
                let mid = first_end + (last_end - first_end) / 2;
                mid > start && mid <= end
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment that counts what ended in it.
    #[derive(Clone, Debug, PartialEq)]
    struct Tally {
        span: Span,
        n: u64,
    }

    impl TimeSegment for Tally {
        const MAX_SEGMENTS: usize = 4;
        const MAX_ENTRIES: Option<usize> = Some(100);
        fn span(&self) -> &Span {
            &self.span
        }
        fn span_mut(&mut self) -> &mut Span {
            &mut self.span
        }
        fn absorb_contents(&mut self, o: &Tally) {
            self.n += o.n;
        }
        fn entries(&self) -> usize {
            self.n as usize
        }
    }

    fn add(l: &mut SegmentList<Tally>, t: u64, n: u64) {
        let (lo, hi) = l.bounds(t);
        l.insert(Tally { span: Span { lo, hi, first_end: t, last_end: t }, n });
    }

    fn count(l: &SegmentList<Tally>, start: u64, end: u64) -> u64 {
        l.within(start, end).iter().map(|s| s.n).sum()
    }

    #[test]
    fn bounds_end_at_cuts_and_whole_seconds() {
        let mut l = SegmentList::<Tally>::default();
        assert_eq!(l.bounds(1), (0, SEGMENT_NS));
        assert_eq!(l.bounds(SEGMENT_NS), (0, SEGMENT_NS));
        l.cut(300);
        assert_eq!(l.bounds(300), (0, 300));
        assert_eq!(l.bounds(301), (300, SEGMENT_NS));
        // An existing segment's bounds win, and a cut inside it (before
        // anything is folded past it) ends it there.
        add(&mut l, 500, 1);
        assert_eq!(l.bounds(900), (300, SEGMENT_NS));
        assert!(!l.cut(700));
        assert_eq!(l.bounds(900), (700, SEGMENT_NS));
        add(&mut l, 600, 2);
        assert_eq!(l.list.len(), 1, "absorbed by the segment it overlaps");
        assert_eq!(l.list[0].n, 3);
    }

    #[test]
    fn coarsening_keeps_cuts_and_respects_both_limits() {
        let mut l = SegmentList::<Tally>::default();
        let edge = 5 * SEGMENT_NS;
        l.cut(edge);
        for s in 0..10 {
            add(&mut l, s * SEGMENT_NS + 1, 1);
        }
        l.folded(10 * SEGMENT_NS);
        assert!(l.list.len() <= Tally::MAX_SEGMENTS, "{}", l.list.len());
        assert_eq!((count(&l, 0, edge), count(&l, edge, u64::MAX)), (5, 5));
        // Entries over the limit merge too; a cut already folded is late.
        add(&mut l, 2 * SEGMENT_NS + 1, 200);
        l.folded(10 * SEGMENT_NS);
        assert_eq!(l.list.len(), 2, "only the cut keeps them apart");
        assert_eq!((count(&l, 0, edge), count(&l, edge, u64::MAX)), (205, 5));
        assert!(l.cut(SEGMENT_NS / 2));
        assert_eq!(l.fold_point(10 * SEGMENT_NS), None);
        assert_eq!(l.fold_point(10 * SEGMENT_NS + 1), Some(10 * SEGMENT_NS + 1));
    }
}
