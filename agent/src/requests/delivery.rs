//! Where each request's time goes outside the application (issue 14): the
//! kernel's `DELIVERY` events (`agent-ebpf/src/net/delivery.rs`), one per
//! request whose response the peer acknowledged, folded like the requests
//! into time segments of counts and sparse histograms, so memory is bounded
//! by time. A delivery belongs to the window in which its response was
//! acknowledged. Pure.

use agent_common::{NetEvent, conn_flags, event_kind};

use super::segment_list::{SegmentList, Span, TimeSegment};
use crate::{
    histogram::{self, SparseHistogram},
    percentile::Percentiles,
};

/// Beyond this many segments, neighbours not separated by a cut are merged.
const MAX_SEGMENTS: usize = 4096;

/// One request's delivery. Times are CLOCK_MONOTONIC ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Its first byte became readable (`sk_data_ready`); the first read
    /// when that was not seen (`queue_known` false).
    pub arrived_ns: u64,
    /// First read (the application's start).
    pub read_ns: u64,
    /// Last write (the application's end).
    pub written_ns: u64,
    /// The peer acknowledged the response's last byte.
    pub acked_ns: u64,
    pub queue_known: bool,
    /// Nagle held the response's tail until an ACK released it.
    pub nagle_held: bool,
    /// The peer's receive window held the response back.
    pub window_held: bool,
    pub retransmits: u32,
    /// µs the tail waited for an ACK while held by Nagle.
    pub held_us: u32,
    /// The connection's first request: handshake complete → this read, ns.
    pub accept_wait_ns: Option<u64>,
}

impl Delivery {
    /// The kernel's event, if it is a delivery with ordered times.
    pub fn of(e: &NetEvent) -> Option<Delivery> {
        let d = Delivery {
            arrived_ns: e.start_ns,
            read_ns: e.first_response_ns,
            written_ns: e.upstream_ns,
            acked_ns: e.end_ns,
            queue_known: e.flags & conn_flags::QUEUE_KNOWN != 0,
            nagle_held: e.flags & conn_flags::NAGLE_HELD != 0,
            window_held: e.flags & conn_flags::WINDOW_HELD != 0,
            retransmits: e.bytes_in,
            held_us: e.bytes_out,
            accept_wait_ns: (e.flags & conn_flags::ACCEPT_KNOWN != 0)
                .then_some(u64::from(e.status) * 1000),
        };
        let ordered = d.arrived_ns != 0
            && d.arrived_ns <= d.read_ns
            && d.read_ns <= d.written_ns
            && d.written_ns <= d.acked_ns;
        (e.kind == event_kind::DELIVERY && ordered).then_some(d)
    }
    pub fn queue_ns(&self) -> u64 {
        self.read_ns - self.arrived_ns
    }
    pub fn drain_ns(&self) -> u64 {
        self.acked_ns - self.written_ns
    }
    /// queue + app + drain.
    pub fn delivered_ns(&self) -> u64 {
        self.acked_ns - self.arrived_ns
    }
}

/// Exact counts of a segment or window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub count: u64,
    pub queue_known: u64,
    pub nagle_held: u64,
    pub window_held: u64,
    pub retransmits: u64,
    /// Σ µs responses waited held by Nagle.
    pub held_us: u64,
    /// Connections whose accept wait is known (first requests).
    pub accepted: u64,
}

impl DeliveryCounts {
    fn add(&mut self, d: &Delivery) {
        self.count += 1;
        self.queue_known += u64::from(d.queue_known);
        self.nagle_held += u64::from(d.nagle_held);
        self.window_held += u64::from(d.window_held);
        self.retransmits += u64::from(d.retransmits);
        self.held_us += u64::from(d.held_us);
        self.accepted += u64::from(d.accept_wait_ns.is_some());
    }
    fn merge(&mut self, o: &DeliveryCounts) {
        self.count += o.count;
        self.queue_known += o.queue_known;
        self.nagle_held += o.nagle_held;
        self.window_held += o.window_held;
        self.retransmits += o.retransmits;
        self.held_us += o.held_us;
        self.accepted += o.accepted;
    }
}

/// The deliveries acknowledged in `(lo, hi]`.
#[derive(Clone, Debug, Default)]
struct Segment {
    span: Span,
    counts: DeliveryCounts,
    /// Over deliveries whose queue time is known.
    queue: SparseHistogram,
    delivered: SparseHistogram,
    /// Over all.
    drain: SparseHistogram,
    accept_wait: SparseHistogram,
}

impl Segment {
    fn of(lo: u64, hi: u64, ds: &[Delivery]) -> Segment {
        let mut counts = DeliveryCounts::default();
        ds.iter().for_each(|d| counts.add(d));
        let known = || ds.iter().filter(|d| d.queue_known);
        let first_end = ds.iter().map(|d| d.acked_ns).min().unwrap_or(0);
        let last_end = ds.iter().map(|d| d.acked_ns).max().unwrap_or(0);
        Segment {
            span: Span { lo, hi, first_end, last_end },
            counts,
            queue: SparseHistogram::from_values(known().map(Delivery::queue_ns)),
            delivered: SparseHistogram::from_values(known().map(Delivery::delivered_ns)),
            drain: SparseHistogram::from_values(ds.iter().map(Delivery::drain_ns)),
            accept_wait: SparseHistogram::from_values(ds.iter().filter_map(|d| d.accept_wait_ns)),
        }
    }
}

impl TimeSegment for Segment {
    const MAX_SEGMENTS: usize = MAX_SEGMENTS;

    fn span(&self) -> &Span {
        &self.span
    }
    fn span_mut(&mut self) -> &mut Span {
        &mut self.span
    }

    fn absorb_contents(&mut self, o: &Segment) {
        self.counts.merge(&o.counts);
        self.queue = self.queue.merge(&o.queue);
        self.delivered = self.delivered.merge(&o.delivered);
        self.drain = self.drain.merge(&o.drain);
        self.accept_wait = self.accept_wait.merge(&o.accept_wait);
    }
}

/// Deliveries reported so far: recent ones raw, older ones folded into
/// segments ending at the registered cuts and at whole seconds (as
/// `segments::Segments` does for requests).
#[derive(Clone, Debug, Default)]
pub struct DeliveryLog {
    pending: Vec<Delivery>,
    list: SegmentList<Segment>,
    /// Delivery events with inconsistent times: never stored, counted.
    pub rejected: u64,
}

impl DeliveryLog {
    /// Keeps a delivery event; false (and counted) when it is inconsistent.
    pub fn push(&mut self, e: &NetEvent) -> bool {
        let Some(d) = Delivery::of(e) else {
            self.rejected += 1;
            return false;
        };
        self.pending.push(d);
        true
    }

    /// A phase edge (see `RequestLog::cut`); a late one splits nothing.
    pub fn cut(&mut self, t: u64) {
        self.list.cut(t);
    }

    /// Folds the deliveries acknowledged by `horizon` (see `RequestLog::fold`).
    pub fn fold(&mut self, horizon: u64) {
        let Some(horizon) = self.list.fold_point(horizon) else { return };
        let (mut done, keep): (Vec<Delivery>, Vec<Delivery>) =
            self.pending.drain(..).partition(|d| d.acked_ns <= horizon);
        self.pending = keep;
        done.sort_unstable_by_key(|d| d.acked_ns);
        let mut i = 0;
        while i < done.len() {
            let (lo, hi) = self.list.bounds(done[i].acked_ns);
            let end = i + done[i..].partition_point(|d| d.acked_ns <= hi);
            self.list.insert(Segment::of(lo, hi, &done[i..end]));
            i = end;
        }
        self.list.folded(horizon);
    }

    /// The deliveries acknowledged in `(start_ns, end_ns]`.
    pub fn window(&self, start_ns: u64, end_ns: u64) -> DeliveryStats {
        let in_window = |t: u64| t > start_ns && t <= end_ns;
        let segs = self.list.within(start_ns, end_ns);
        let raw: Vec<&Delivery> = self.pending.iter().filter(|d| in_window(d.acked_ns)).collect();
        let mut counts = DeliveryCounts::default();
        segs.iter().for_each(|s| counts.merge(&s.counts));
        raw.iter().for_each(|d| counts.add(d));
        let hist = |pick: fn(&Segment) -> &SparseHistogram, values: Vec<u64>| {
            let parts: Vec<&SparseHistogram> = segs.iter().map(|s| pick(s)).collect();
            histogram::percentiles(&parts, &values)
        };
        let known = || raw.iter().filter(|d| d.queue_known);
        DeliveryStats {
            counts,
            queue: hist(|s| &s.queue, known().map(|d| d.queue_ns()).collect()),
            delivered: hist(|s| &s.delivered, known().map(|d| d.delivered_ns()).collect()),
            drain: hist(|s| &s.drain, raw.iter().map(|d| d.drain_ns()).collect()),
            accept_wait: hist(
                |s| &s.accept_wait,
                raw.iter().filter_map(|d| d.accept_wait_ns).collect(),
            ),
        }
    }
}

/// The delivery numbers of a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeliveryStats {
    pub counts: DeliveryCounts,
    /// Arrival → first read, over deliveries whose arrival was seen.
    pub queue: Percentiles,
    /// Last write → ACK of the last byte.
    pub drain: Percentiles,
    /// Arrival → ACK of the last byte (queue + app + drain).
    pub delivered: Percentiles,
    /// Handshake complete → first read, per connection.
    pub accept_wait: Percentiles,
}

impl Default for DeliveryStats {
    fn default() -> DeliveryStats {
        DeliveryLog::default().window(0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn event(arrived: u64, read: u64, written: u64, acked: u64, flags: u32) -> NetEvent {
        NetEvent {
            start_ns: arrived,
            first_response_ns: read,
            upstream_ns: written,
            end_ns: acked,
            kind: event_kind::DELIVERY,
            flags,
            bytes_in: 1,
            bytes_out: 40_000,
            ..Default::default()
        }
    }

    #[test]
    fn components_add_up_and_known_queues_alone_count() {
        let mut log = DeliveryLog::default();
        // 1 ms queued, 5 ms of work, 40 ms drain.
        let first = conn_flags::QUEUE_KNOWN | conn_flags::ACCEPT_KNOWN;
        log.push(&NetEvent { status: 700, ..event(10 * MS, 11 * MS, 16 * MS, 56 * MS, first) });
        // Arrival not seen: no queue, no delivered; its drain counts.
        log.push(&event(20 * MS, 20 * MS, 25 * MS, 27 * MS, conn_flags::NAGLE_HELD));
        let w = log.window(0, 100 * MS);
        let close = |got: f64, exact: u64| (got - exact as f64).abs() <= exact as f64 / 2048.0;
        assert_eq!((w.counts.count, w.counts.queue_known, w.counts.nagle_held), (2, 1, 1));
        assert_eq!((w.counts.retransmits, w.counts.held_us), (2, 80_000));
        assert_eq!(w.counts.accepted, 1);
        assert!(close(w.accept_wait.p50, 700_000), "{}", w.accept_wait.p50);
        assert!(close(w.queue.p50, MS), "{}", w.queue.p50);
        assert!(close(w.delivered.p50, 46 * MS), "{}", w.delivered.p50);
        let drain_p50 = (40 * MS + 2 * MS) as f64 / 2.0;
        assert!((w.drain.p50 - drain_p50).abs() <= drain_p50 / 2048.0, "{}", w.drain.p50);
    }

    #[test]
    fn out_of_order_deliveries_are_rejected() {
        let mut log = DeliveryLog::default();
        log.push(&event(10, 9, 12, 13, 0)); // read before arrival
        log.push(&event(10, 11, 14, 13, 0)); // ACK before the last write
        log.push(&NetEvent { kind: event_kind::REQUEST, ..event(1, 2, 3, 4, 0) });
        assert_eq!((log.rejected, log.window(0, 100).counts.count), (3, 0));
    }

    /// Folded or not, a window between cuts counts exactly and by ACK time.
    #[test]
    fn folding_keeps_windows_between_cuts_exact() {
        let mut log = DeliveryLog::default();
        let edge = 2_500 * MS;
        log.cut(edge);
        for i in 1..5_000u64 {
            let acked = i * MS;
            let flags = conn_flags::QUEUE_KNOWN;
            let us = MS / 1000;
            log.push(&event(acked - 750 * us, acked - 500 * us, acked - 250 * us, acked, flags));
            if i % 100 == 0 {
                log.fold(acked.saturating_sub(200 * MS));
            }
        }
        log.fold(u64::MAX);
        let (a, b) = (log.window(0, edge), log.window(edge, 10_000 * MS));
        assert_eq!((a.counts.count, b.counts.count), (2_500, 2_499));
        for w in [a, b] {
            assert!((w.queue.p99 - 250e3).abs() <= 250e3 / 2048.0, "{}", w.queue.p99);
            assert!((w.delivered.p50 - 750e3).abs() <= 750e3 / 2048.0, "{}", w.delivered.p50);
        }
    }
}
