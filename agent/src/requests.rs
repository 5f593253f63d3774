//! The requests and upstream calls the kernel side reported, and the numbers
//! of a time window computed from them: counts, rates, exact percentiles
//! (k6's interpolation), errors, upstream time and proxy overhead. Pure.

use agent_common::{NetEvent, event_kind};

use crate::percentile::Percentiles;

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
    pub bytes_in: u64,
    pub bytes_out: u64,
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

/// Everything reported so far, in arrival order.
#[derive(Clone, Debug, Default)]
pub struct RequestLog {
    pub requests: Vec<Request>,
    pub calls: Vec<UpstreamCall>,
    /// Events whose timestamps were out of order (a response before its
    /// request): never stored, counted.
    pub rejected: u64,
}

impl RequestLog {
    pub fn push(&mut self, e: &NetEvent) {
        let ordered =
            e.start_ns != 0 && e.start_ns <= e.first_response_ns && e.first_response_ns <= e.end_ns;
        if !ordered {
            self.rejected += 1;
            return;
        }
        match e.kind {
            event_kind::REQUEST => self.requests.push(Request {
                start_ns: e.start_ns,
                first_response_ns: e.first_response_ns,
                end_ns: e.end_ns,
                upstream_ns: e.upstream_ns.min(e.end_ns - e.start_ns),
                bytes_in: e.bytes_in.into(),
                bytes_out: e.bytes_out.into(),
                status: e.status.min(u16::MAX as u32) as u16,
                flags: e.flags as u16,
            }),
            event_kind::UPSTREAM_CALL => {
                self.calls.push(UpstreamCall { start_ns: e.start_ns, end_ns: e.end_ns })
            }
            _ => self.rejected += 1,
        }
    }

    /// The numbers of the requests and calls that *ended* in
    /// `(start_ns, end_ns]` (k6 stamps a request when its response ends),
    /// with rates over that window's own length.
    pub fn window(&self, start_ns: u64, end_ns: u64) -> RequestStats {
        let in_window = |t: u64| t > start_ns && t <= end_ns;
        let reqs: Vec<&Request> = self.requests.iter().filter(|r| in_window(r.end_ns)).collect();
        let collect =
            |f: &dyn Fn(&Request) -> u64| -> Vec<u64> { reqs.iter().map(|r| f(r)).collect() };
        let mut latency = collect(&|r| r.latency_ns());
        let mut ttfb = collect(&|r| r.ttfb_ns());
        let mut overhead: Vec<u64> =
            reqs.iter().filter(|r| r.upstream_ns > 0).map(|r| r.overhead_ns()).collect();
        let mut upstream: Vec<u64> = self
            .calls
            .iter()
            .filter(|c| in_window(c.end_ns))
            .map(|c| c.end_ns - c.start_ns)
            .collect();
        let seconds = end_ns.saturating_sub(start_ns) as f64 / 1e9;
        let count = reqs.len() as u64;
        RequestStats {
            count,
            rps: if seconds > 0.0 { count as f64 / seconds } else { f64::NAN },
            latency: Percentiles::of(&mut latency),
            ttfb: Percentiles::of(&mut ttfb),
            with_upstream: overhead.len() as u64,
            overhead: Percentiles::of(&mut overhead),
            upstream_calls: upstream.len() as u64,
            upstream: Percentiles::of(&mut upstream),
            status_known: reqs.iter().filter(|r| r.status != 0).count() as u64,
            status_4xx: reqs.iter().filter(|r| (400..500).contains(&r.status)).count() as u64,
            status_5xx: reqs.iter().filter(|r| r.status >= 500).count() as u64,
            max_latency_ns: latency.last().copied().unwrap_or(0),
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
        assert_eq!(w.latency.p50, 20.0 * MS as f64);
        assert_eq!(w.ttfb.p99, 5.0 * MS as f64);
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
        assert_eq!(w.overhead.p50, 1.5 * MS as f64);
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
        assert!(log.requests.is_empty());
        assert_eq!(log.rejected, 2);
    }

    #[test]
    fn upstream_larger_than_latency_is_clamped() {
        let mut log = RequestLog::default();
        log.push(&req(1, 2, 3, 50, 200));
        assert_eq!(log.requests[0].overhead_ns(), 0);
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
        assert_eq!(w.upstream.p50, 5.0 * MS as f64);
    }
}
