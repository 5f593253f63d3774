//! The requests and upstream calls the kernel side reported, and the numbers
//! of a time window computed from them: counts, rates, percentiles (k6's
//! interpolation, within 1/2048 of exact), errors, upstream time and proxy
//! overhead. Pure.

pub mod segments;

use agent_common::{NetEvent, conn_flags, event_kind};

use self::segments::{Counts, Segment, Segments};
use crate::{
    histogram::{self, SparseHistogram},
    percentile::Percentiles,
};

/// One request served on an inbound connection. Times are CLOCK_MONOTONIC ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// First request byte read.
    pub start_ns: u64,
    /// First response byte written.
    pub first_response_ns: u64,
    /// Last response byte written.
    pub end_ns: u64,
    /// Time spent waiting on upstream calls made for this request.
    pub upstream_ns: u64,
    /// HTTP status from the first response bytes; 0 when not HTTP/1.x or not read.
    pub status: u16,
    pub flags: u16,
}

impl Request {
    pub fn latency_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
    pub fn ttfb_ns(&self) -> u64 {
        self.first_response_ns - self.start_ns
    }
    /// The proxy's own time: latency minus time waiting on upstream.
    pub fn overhead_ns(&self) -> u64 {
        self.latency_ns().saturating_sub(self.upstream_ns)
    }
}

/// One call the target made on an outbound connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamCall {
    /// First byte of the call written.
    pub start_ns: u64,
    /// Last byte of the upstream's response read.
    pub end_ns: u64,
}

/// The first responses startup milestones need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstResponse {
    Any,
    /// A 2xx.
    Ok,
    /// A 2xx to a request for `--health-path`.
    HealthOk,
    /// A 2xx to a request for `--ready-path`.
    ReadyOk,
}

/// Everything reported so far, in memory bounded by time rather than by the
/// number of requests: recent requests are kept as they are (`pending`),
/// older ones folded into time segments of counts and sparse histograms
/// ([`crate::histogram`]). Segments end at the registered cuts (phase edges
/// known while the run goes: k6's markers and plan, marks, startup
/// milestones) and at every whole second; a window whose edges are cuts
/// gets exact counts, and percentiles within 1/2048 of the exact ones.
#[derive(Clone, Debug, Default)]
pub struct RequestLog {
    pending: Vec<Request>,
    pending_calls: Vec<UpstreamCall>,
    segments: Segments,
    /// Events whose timestamps were out of order (a response before its
    /// request): never stored, counted.
    pub rejected: u64,
    count: u64,
    firsts: [Option<u64>; 4],
    /// Also cut this long after each startup milestone (the idle phase).
    idle_after_startup_ns: u64,
}

impl RequestLog {
    /// A log that also cuts `idle_after_startup_ns` after each candidate
    /// end of startup, where the idle phase after startup ends.
    pub fn with_idle_after_startup(idle_after_startup_ns: u64) -> RequestLog {
        RequestLog { idle_after_startup_ns, ..Default::default() }
    }

    pub fn push(&mut self, e: &NetEvent) {
        let ordered =
            e.start_ns != 0 && e.start_ns <= e.first_response_ns && e.first_response_ns <= e.end_ns;
        if !ordered {
            self.rejected += 1;
            return;
        }
        match e.kind {
            event_kind::REQUEST => {
                let r = Request {
                    start_ns: e.start_ns,
                    first_response_ns: e.first_response_ns,
                    end_ns: e.end_ns,
                    upstream_ns: e.upstream_ns.min(e.end_ns - e.start_ns),
                    status: e.status.min(u16::MAX as u32) as u16,
                    flags: (e.flags & conn_flags::MASK) as u16,
                };
                self.note_first(&r);
                self.count += 1;
                self.pending.push(r);
            }
            event_kind::UPSTREAM_CALL => {
                self.pending_calls.push(UpstreamCall { start_ns: e.start_ns, end_ns: e.end_ns })
            }
            _ => self.rejected += 1,
        }
    }

    /// Requests reported so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// When the first response of a kind ended.
    pub fn first_response_end(&self, kind: FirstResponse) -> Option<u64> {
        self.firsts[kind as usize]
    }

    fn note_first(&mut self, r: &Request) {
        let ok = (200..300).contains(&r.status);
        let flag = |f: u32| r.flags as u32 & f != 0;
        let kinds =
            [true, ok, ok && flag(conn_flags::PATH_HEALTH), ok && flag(conn_flags::PATH_READY)];
        for (i, hit) in kinds.into_iter().enumerate() {
            if hit && self.firsts[i].is_none_or(|t| r.end_ns < t) {
                self.firsts[i] = Some(r.end_ns);
                self.cut(r.end_ns);
                if self.idle_after_startup_ns > 0 {
                    self.cut(r.end_ns + self.idle_after_startup_ns);
                }
            }
        }
    }

    /// Registers a phase edge: windows starting or ending here get exact
    /// counts. An edge older than what was already folded splits nothing
    /// (counted in [`RequestLog::late_cuts`]).
    pub fn cut(&mut self, t_ns: u64) {
        self.segments.cut(t_ns);
    }

    /// Edges registered after their time had been folded.
    pub fn late_cuts(&self) -> u64 {
        self.segments.late_cuts
    }

    /// Folds the requests and calls that ended by `horizon_ns` into
    /// segments. Call it with a horizon older than any edge still to be
    /// registered.
    pub fn fold(&mut self, horizon_ns: u64) {
        let Some(until) = self.segments.fold_point(horizon_ns) else { return };
        let (reqs, keep): (Vec<Request>, Vec<Request>) =
            self.pending.drain(..).partition(|r| r.end_ns <= until);
        self.pending = keep;
        let (calls, keep): (Vec<UpstreamCall>, Vec<UpstreamCall>) =
            self.pending_calls.drain(..).partition(|c| c.end_ns <= until);
        self.pending_calls = keep;
        self.segments.fold(&reqs, &calls, until);
    }

    /// The numbers of the requests and calls that *ended* in
    /// `(start_ns, end_ns]` (k6 stamps a request when its response ends),
    /// with rates over that window's own length. Exact for requests not yet
    /// folded and for segments between cuts; a segment straddling an edge
    /// that was never registered counts where the middle of its requests is.
    pub fn window(&self, start_ns: u64, end_ns: u64) -> RequestStats {
        let in_window = |t: u64| t > start_ns && t <= end_ns;
        let segs = self.segments.within(start_ns, end_ns);
        let mut counts = Counts::default();
        for s in &segs {
            counts.merge(&s.counts);
        }
        let reqs: Vec<&Request> = self.pending.iter().filter(|r| in_window(r.end_ns)).collect();
        let calls: Vec<&UpstreamCall> =
            self.pending_calls.iter().filter(|c| in_window(c.end_ns)).collect();
        reqs.iter().for_each(|r| counts.add_request(r));
        calls.iter().for_each(|_| counts.upstream_calls += 1);
        let raw = |f: &dyn Fn(&Request) -> Option<u64>| -> Vec<u64> {
            reqs.iter().filter_map(|r| f(r)).collect()
        };
        let hist = |pick: fn(&Segment) -> &SparseHistogram, raw: Vec<u64>| {
            let parts: Vec<&SparseHistogram> = segs.iter().map(|s| pick(s)).collect();
            histogram::percentiles(&parts, &raw)
        };
        let upstream_raw: Vec<u64> = calls.iter().map(|c| c.end_ns - c.start_ns).collect();
        let seconds = end_ns.saturating_sub(start_ns) as f64 / 1e9;
        RequestStats {
            count: counts.count,
            rps: if seconds > 0.0 { counts.count as f64 / seconds } else { f64::NAN },
            latency: hist(|s| &s.latency, raw(&|r| Some(r.latency_ns()))),
            ttfb: hist(|s| &s.ttfb, raw(&|r| Some(r.ttfb_ns()))),
            with_upstream: counts.with_upstream,
            overhead: hist(|s| &s.overhead, raw(&|r| (r.upstream_ns > 0).then(|| r.overhead_ns()))),
            upstream_calls: counts.upstream_calls,
            upstream: hist(|s| &s.upstream, upstream_raw),
            status_known: counts.status_known,
            status_4xx: counts.status_4xx,
            status_5xx: counts.status_5xx,
            max_latency_ns: counts.max_latency_ns,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestStats {
    pub count: u64,
    pub rps: f64,
    pub latency: Percentiles,
    pub ttfb: Percentiles,
    /// Requests that waited on at least one upstream call; `overhead` is over these.
    pub with_upstream: u64,
    pub overhead: Percentiles,
    pub upstream_calls: u64,
    pub upstream: Percentiles,
    /// Requests whose response status could be read.
    pub status_known: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub max_latency_ns: u64,
}

impl RequestStats {
    pub fn http_errors(&self) -> u64 {
        self.status_4xx + self.status_5xx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn req(start_ms: u64, ttfb_ms: u64, end_ms: u64, upstream_ms: u64, status: u32) -> NetEvent {
        NetEvent {
            start_ns: start_ms * MS,
            first_response_ns: ttfb_ms * MS,
            end_ns: end_ms * MS,
            upstream_ns: upstream_ms * MS,
            kind: event_kind::REQUEST,
            status,
            ..Default::default()
        }
    }

    /// Within the histograms' 1/2048.
    fn close(got: f64, exact: f64) -> bool {
        (got - exact).abs() <= exact / 2048.0
    }

    #[test]
    fn window_counts_by_end_time_and_rates_over_its_own_length() {
        let mut log = RequestLog::default();
        for i in 0..10 {
            log.push(&req(i * 100, i * 100 + 5, i * 100 + 20, 0, 200));
        }
        // Ends at 20, 120, ..., 920 ms. Window (100, 600] holds 120..520: 5.
        let w = log.window(100 * MS, 600 * MS);
        assert_eq!(w.count, 5);
        assert!((w.rps - 10.0).abs() < 1e-9);
        assert!(close(w.latency.p50, 20.0 * MS as f64), "{}", w.latency.p50);
        assert!(close(w.ttfb.p99, 5.0 * MS as f64), "{}", w.ttfb.p99);
        assert_eq!(w.status_known, 5);
        assert_eq!(w.http_errors(), 0);
    }

    #[test]
    fn overhead_is_latency_minus_upstream_over_proxied_requests() {
        let mut log = RequestLog::default();
        log.push(&req(1, 6, 8, 5, 200)); // 7 ms, 5 upstream → 2 ms own
        log.push(&req(10, 14, 14, 3, 200)); // 4 ms, 3 upstream → 1 ms
        log.push(&req(20, 21, 21, 0, 200)); // no upstream: not in overhead
        let w = log.window(0, 100 * MS);
        assert_eq!(w.with_upstream, 2);
        assert!(close(w.overhead.p50, 1.5 * MS as f64), "{}", w.overhead.p50);
    }

    #[test]
    fn errors_by_status_class() {
        let mut log = RequestLog::default();
        for status in [200, 404, 500, 503, 0] {
            log.push(&req(1, 2, 3, 0, status));
        }
        let w = log.window(0, 10 * MS);
        assert_eq!((w.status_4xx, w.status_5xx, w.status_known), (1, 2, 4));
    }

    #[test]
    fn out_of_order_events_are_rejected_not_stored() {
        let mut log = RequestLog::default();
        log.push(&req(10, 5, 20, 0, 200)); // first byte before start
        log.push(&req(0, 5, 20, 0, 200)); // start 0: never set
        assert_eq!(log.count(), 0);
        assert_eq!(log.rejected, 2);
    }

    #[test]
    fn upstream_larger_than_latency_is_clamped() {
        let mut log = RequestLog::default();
        log.push(&req(1, 2, 3, 50, 200));
        let w = log.window(0, 10 * MS);
        assert_eq!((w.with_upstream, w.overhead.p50), (1, 0.0));
    }

    #[test]
    fn calls_are_kept_apart_from_requests() {
        let mut log = RequestLog::default();
        log.push(&NetEvent {
            start_ns: MS,
            first_response_ns: 5 * MS,
            end_ns: 6 * MS,
            kind: event_kind::UPSTREAM_CALL,
            ..Default::default()
        });
        let w = log.window(0, 10 * MS);
        assert_eq!((w.count, w.upstream_calls), (0, 1));
        assert!(close(w.upstream.p50, 5.0 * MS as f64), "{}", w.upstream.p50);
    }

    /// Folded or not, windows between cuts count exactly, and their
    /// percentiles stay within 1/2048 of the exact ones; a window whose
    /// edge was never cut is placed within a segment.
    #[test]
    fn folding_keeps_counts_exact_between_cuts() {
        let mut log = RequestLog::default();
        let mut exact = RequestLog::default();
        // 20 s of requests every 1 ms, latencies 20..219 µs, a 5xx in 100.
        let events: Vec<NetEvent> = (1..20_000u64)
            .map(|i| {
                let end = i * MS;
                let lat = 20_000 + (i * 7919) % 200_000;
                NetEvent {
                    start_ns: end - lat,
                    first_response_ns: end - lat / 2,
                    end_ns: end,
                    kind: event_kind::REQUEST,
                    status: if i % 100 == 0 { 503 } else { 200 },
                    ..Default::default()
                }
            })
            .collect();
        let edges = [3_333_333_333, 7_000_000_123, 12_500_000_000];
        for (i, e) in events.iter().enumerate() {
            log.push(e);
            exact.push(e);
            if i % 100 == 99 {
                // A tick every 100 ms: an edge is known at most 100 ms ahead
                // (so it splits a segment already open), fold 200 ms back.
                let now = e.end_ns;
                edges.iter().filter(|t| **t <= now + 100 * MS).for_each(|t| log.cut(*t));
                log.fold(now.saturating_sub(200 * MS));
            }
        }
        assert!(log.pending.len() <= 300, "{} requests still raw", log.pending.len());
        assert_eq!(log.late_cuts(), 0);
        let windows = [
            (0, edges[0]),
            (edges[0], edges[1]),
            (edges[1], edges[2]),
            (edges[2], 30 * 1_000 * MS),
        ];
        let mut total = 0;
        for (a, b) in windows {
            let (w, x) = (log.window(a, b), exact.window(a, b));
            assert_eq!(w.count, x.count, "({a}, {b}]");
            assert_eq!((w.status_5xx, w.max_latency_ns), (x.status_5xx, x.max_latency_ns));
            let mut lat: Vec<u64> = (1..20_000u64)
                .filter(|i| i * MS > a && i * MS <= b)
                .map(|i| 20_000 + (i * 7919) % 200_000)
                .collect();
            let truth = Percentiles::of(&mut lat);
            for p in Percentiles::NAMES {
                assert!(
                    close(w.latency.get(p), truth.get(p)),
                    "{p}: {} vs {}",
                    w.latency.get(p),
                    truth.get(p)
                );
            }
            total += w.count;
        }
        assert_eq!(total, 19_999);
        // An edge never cut (4.5 s): within a second of it.
        let w = log.window(0, 4_500_000_000);
        assert!(w.count.abs_diff(4_500) <= 1_000, "{}", w.count);
    }

    #[test]
    fn first_responses_for_startup_are_exact_and_cut() {
        let mut log = RequestLog::with_idle_after_startup(2_000 * MS);
        log.push(&req(1, 2, 7, 0, 503));
        log.push(&req(3, 4, 5, 0, 200));
        assert_eq!(log.first_response_end(FirstResponse::Any), Some(5 * MS));
        assert_eq!(log.first_response_end(FirstResponse::Ok), Some(5 * MS));
        assert_eq!(log.first_response_end(FirstResponse::HealthOk), None);
        log.fold(10_000 * MS);
        // Startup ends at 5 ms: (0, 5 ms] and the idle (5 ms, 2005 ms] are exact.
        assert_eq!(log.window(0, 5 * MS).count, 1);
        assert_eq!(log.window(5 * MS, 2_005 * MS).count, 1);
    }
}
