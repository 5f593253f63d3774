//! RequestLog: windows, folding, first responses, upstream attribution.

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

fn call(start_ms: u64, end_ms: u64) -> NetEvent {
    NetEvent {
        start_ns: start_ms * MS,
        first_response_ns: end_ms * MS,
        end_ns: end_ms * MS,
        kind: event_kind::UPSTREAM_CALL,
        ..Default::default()
    }
}

#[test]
fn overhead_is_latency_minus_upstream_over_proxied_requests() {
    for fold_at in [None, Some(50 * MS)] {
        let mut log = RequestLog::default();
        log.push(&req(1, 7, 8, 0, 200)); // 7 ms, a 5 ms call → 2 ms own
        log.push(&call(2, 7));
        log.push(&req(10, 14, 14, 0, 200)); // 4 ms, a 3 ms call → 1 ms
        log.push(&call(11, 14));
        log.push(&req(20, 21, 21, 0, 200)); // no upstream: not in overhead
        // The kernel's per-thread credit is ignored.
        log.push(&req(30, 35, 35, 4, 200));
        if let Some(t) = fold_at {
            log.fold(t);
        }
        let w = log.window(0, 100 * MS);
        assert_eq!((w.count, w.with_upstream, w.upstream_calls), (4, 2, 2), "{fold_at:?}");
        assert!(close(w.overhead.p50, 1.5 * MS as f64), "{}", w.overhead.p50);
    }
}

/// A request whose call is reported late (a pooled connection reports
/// a call when its next one starts) is held back for it, up to a second.
#[test]
fn requests_wait_unfolded_for_calls_reported_late() {
    let mut log = RequestLog::default();
    log.push(&req(1, 7, 8, 0, 200));
    log.push(&call(2, 7));
    log.push(&req(10, 17, 18, 0, 200)); // its call comes later
    log.push(&req(20, 21, 21, 0, 200)); // none ever comes
    log.fold(500 * MS);
    assert_eq!(log.pending.len(), 2);
    log.push(&call(11, 16));
    log.fold(900 * MS);
    assert_eq!(log.pending.len(), 1);
    log.fold(1_100 * MS);
    assert!(log.pending.is_empty());
    let w = log.window(0, 2_000 * MS);
    assert_eq!((w.count, w.with_upstream), (3, 2));
    // 7 − 5 and 8 − 5 ms of the proxy's own.
    assert!(close(w.overhead.p50, 2.5 * MS as f64), "{}", w.overhead.p50);
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
    log.push(&req(1, 5, 6, 0, 200));
    // A fan-out: two concurrent calls, 7 ms of wait in a 5 ms request.
    log.push(&call(1, 5));
    log.push(&call(2, 5));
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
    assert_eq!((w.count, w.upstream_calls, w.with_upstream), (0, 1, 0));
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
    let windows =
        [(0, edges[0]), (edges[0], edges[1]), (edges[1], edges[2]), (edges[2], 30 * 1_000 * MS)];
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
