//! Where each request's time goes (issue 14): its BMF rows
//! (`latency/queue_*`, `latency/drain_*`, `latency/delivered_*`,
//! `tcp/retransmits`), the summary's "where the time goes" table per phase
//! (queue / app / drain / delivered beside the client's number) and the
//! diagnosis lines, each from a pattern the kernel saw in the events
//! (`docs/metrics.md#delivery-queue-drain-accept-wait`).

use std::fmt::Write as _;

use agent_common::names::programs;

use super::RunReport;
use crate::{
    bmf::{BmfReport, Measure},
    percentile::Percentiles,
    requests::{RequestStats, delivery::DeliveryStats},
    timeline::WindowStats,
    units::human_ns,
};

fn add_percentiles(b: &mut BmfReport, prefix: &str, suffix: &str, p: &Percentiles) {
    for name in Percentiles::NAMES {
        b.add(format!("{prefix}{name}{suffix}"), Measure::Latency, p.get(name));
    }
}

/// The percentiles of a window, named `<id><suffix>` (empty sets left out).
pub fn add_percentile_metrics(b: &mut BmfReport, suffix: &str, d: &DeliveryStats) {
    add_percentiles(b, "latency/queue_", suffix, &d.queue);
    add_percentiles(b, "latency/drain_", suffix, &d.drain);
    add_percentiles(b, "latency/delivered_", suffix, &d.delivered);
    for name in ["p50", "p99"] {
        let id = format!("latency/accept_wait_{name}{suffix}");
        b.add(id, Measure::Latency, d.accept_wait.get(name));
    }
}

/// Every delivery metric of a window, named `<id><suffix>`: those the
/// delivery hooks measure when `d` is given (`--delivery`), and
/// `tcp/listen_overflows` always (it comes from /proc, not from the hooks).
pub fn add_metrics(b: &mut BmfReport, suffix: &str, d: Option<&DeliveryStats>, w: &WindowStats) {
    if let Some(d) = d {
        add_percentile_metrics(b, suffix, d);
        b.add(format!("tcp/retransmits{suffix}"), Measure::Count, d.counts.retransmits as f64);
    }
    b.add(format!("tcp/listen_overflows{suffix}"), Measure::Count, w.listen_overflows as f64);
}

/// The delivery hooks. Their runs skipped by the kernel (recursion misses:
/// `tcp_probe` in process context, processing a socket's backlog with
/// softirqs on, interrupted by `tcp_probe` in a softirq) lose no request.
pub const PROGRAMS: [&str; 3] =
    [programs::SK_DATA_READY, programs::TCP_PROBE, programs::TCP_RETRANSMIT_SKB];

/// What the delivery numbers lost over the whole run: delivery events that
/// found their CPU's ring more than half full, and the delivery hooks'
/// recursion misses (an arrival, an ACK or a retransmit not seen). Their
/// requests are counted; only their queue/drain numbers may be missing or,
/// for a missed ACK, late.
pub fn dropped(r: &RunReport) -> u64 {
    let misses: u64 = r
        .programs
        .iter()
        .filter(|p| PROGRAMS.contains(&p.name.as_str()))
        .map(|p| p.recursion_misses)
        .sum();
    r.kernel.net.stats.deliveries_dropped + misses
}

/// Whole-run rows: `agent/dropped_deliveries` ([`dropped`]), with
/// `--delivery`.
pub fn add_run_metrics(b: &mut BmfReport, r: &RunReport) {
    if !r.delivery {
        return;
    }
    b.add("agent/dropped_deliveries", Measure::Count, dropped(r) as f64);
}

/// The known patterns that dominate a window, each a line naming the cause
/// and the fix; none when no pattern holds for most requests.
pub fn diagnose(q: &RequestStats) -> Vec<String> {
    let d = &q.delivery;
    let c = &d.counts;
    let mut lines = Vec::new();
    if c.count == 0 {
        return lines;
    }
    let most = |n: u64| n * 2 >= c.count;
    if most(c.nagle_held) {
        let mean_held_ns = c.held_us as f64 * 1e3 / c.nagle_held as f64;
        lines.push(format!(
            "{} of {} responses stalled {} (mean) on the client's delayed ACK after a partial \
             write: Nagle held their last bytes until the peer acknowledged the first ones; \
             set TCP_NODELAY on the socket or send each response in one write (writev)",
            c.nagle_held,
            c.count,
            human_ns(mean_held_ns)
        ));
    }
    // A connection's first request waits in its queue while the connection
    // waits to be accepted: when most requests are first ones, that is the
    // accept diagnosis below, not this one.
    if most(c.queue_known) && !most(c.accepted) && d.queue.p50 > q.latency.p50 {
        lines.push(format!(
            "requests waited in the receive queue (p50 {}) longer than the application took to \
             serve them (p50 {}): the server is saturated or its event loop is blocked; add \
             workers or move blocking work off the loop",
            human_ns(d.queue.p50),
            human_ns(q.latency.p50)
        ));
    }
    if most(c.window_held) && d.drain.p50 > q.latency.p50 {
        lines.push(format!(
            "responses waited on the clients' receive window (drain p50 {}, app p50 {}): slow \
             readers; the server's time is fine, the clients read slowly or have small buffers",
            human_ns(d.drain.p50),
            human_ns(q.latency.p50)
        ));
    }
    // Most requests are the first of their connection (a new connection
    // per request, or a burst of them): the accept wait is theirs.
    if most(c.accepted) && d.accept_wait.p50 > q.latency.p50 {
        lines.push(format!(
            "connections waited to be accepted (p50 {} from the handshake to the first read, \
             app p50 {}): the server accepts too slowly for its connection rate; accept \
             faster (more acceptors) or raise the listen backlog",
            human_ns(d.accept_wait.p50),
            human_ns(q.latency.p50)
        ));
    }
    lines
}

/// The summary's part: a row per phase (or the whole run when there are no
/// phases), then the diagnosis of each; without `--delivery`, one line
/// saying how to get them (when there were requests). Listen overflows
/// either way.
pub fn summary(out: &mut String, r: &RunReport) {
    if r.delivery {
        time_table(out, r);
    } else if r.requests.count > 0 {
        let _ = writeln!(
            out,
            "where the time goes (queue, drain, delivered, accept wait, retransmits): run with \
             --delivery"
        );
    }
    if r.window.listen_overflows > 0 {
        let _ = writeln!(
            out,
            "listen overflows: {} handshakes dropped on a full accept queue (TcpExt \
             ListenOverflows of the target's network namespace, all its listeners): raise the \
             listen backlog (and net.core.somaxconn) or accept faster",
            r.window.listen_overflows
        );
    }
}

/// The "where the time goes" table and its diagnoses (`--delivery`).
fn time_table(out: &mut String, r: &RunReport) {
    let mut rows: Vec<(&str, &RequestStats, Option<f64>)> = r
        .phases
        .iter()
        .map(|p| (p.phase.name.as_str(), &p.requests, p.client.as_ref().map(|c| c.duration.p50)))
        .collect();
    if rows.is_empty() {
        rows.push(("run", &r.requests, None));
    }
    rows.retain(|(_, q, _)| q.delivery.counts.count > 0);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "where the time goes (p50; delivered = queue + app + drain, per request; the client \
         also sees one network trip):"
    );
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>11}",
        "phase", "delivered", "queue", "app", "drain", "total", "client", "retrans", "accept wait"
    );
    for (name, q, client) in &rows {
        let d = &q.delivery;
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>11}",
            name,
            d.counts.count,
            human_ns(d.queue.p50),
            human_ns(q.latency.p50),
            human_ns(d.drain.p50),
            human_ns(d.delivered.p50),
            client.map_or("-".into(), human_ns),
            d.counts.retransmits,
            human_ns(d.accept_wait.p50)
        );
    }
    for (name, q, _) in &rows {
        for line in diagnose(q) {
            let _ = writeln!(out, "diagnosis ({name}): {line}");
        }
    }
    let lost = dropped(r);
    if lost > 0 {
        let _ = writeln!(
            out,
            "({lost} delivery events lost to a busy event ring or to skipped hook runs: their \
             requests are counted, some of their queue and drain times are not)"
        );
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{NetEvent, conn_flags, event_kind};

    use super::*;
    use crate::requests::RequestLog;

    const MS: u64 = 1_000_000;

    /// 10 requests of 5 ms of app time after `queue_ms` in the queue, with
    /// `drain_ms` of drain and the delivery flags `flags` (`status`: the
    /// accept wait in µs).
    fn window(queue_ms: u64, drain_ms: u64, flags: u32, status: u32) -> RequestStats {
        let mut log = RequestLog::default();
        for i in 1..=10 {
            let arrived = i * 100 * MS;
            let (read, written) = (arrived + queue_ms * MS, arrived + (queue_ms + 5) * MS);
            let request = NetEvent {
                start_ns: read,
                first_response_ns: written,
                end_ns: written,
                kind: event_kind::REQUEST,
                status: 200,
                ..Default::default()
            };
            log.push(&request);
            log.push(&NetEvent {
                start_ns: arrived,
                first_response_ns: read,
                upstream_ns: written,
                end_ns: written + drain_ms * MS,
                kind: event_kind::DELIVERY,
                flags: conn_flags::QUEUE_KNOWN | flags,
                bytes_out: (drain_ms * 1000) as u32,
                status,
                ..Default::default()
            });
        }
        log.window(0, 10_000 * MS)
    }

    #[test]
    fn a_clean_window_has_no_diagnosis() {
        assert_eq!(diagnose(&window(0, 0, 0, 0)), Vec::<String>::new());
    }

    #[test]
    fn nagle_held_responses_name_delayed_ack_and_the_fix() {
        let lines = diagnose(&window(0, 40, conn_flags::NAGLE_HELD, 0));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("delayed ACK") && lines[0].contains("TCP_NODELAY"));
        assert!(lines[0].contains("40.00 ms"), "{}", lines[0]);
    }

    #[test]
    fn queueing_is_named_unless_it_is_the_accept_wait() {
        let lines = diagnose(&window(20, 0, 0, 0));
        assert!(lines.len() == 1 && lines[0].contains("receive queue"), "{lines:?}");
        // Every request the first of its connection, accepted 20 ms late.
        let lines = diagnose(&window(20, 0, conn_flags::ACCEPT_KNOWN, 20_000));
        assert!(lines.len() == 1 && lines[0].contains("accepted"), "{lines:?}");
    }

    #[test]
    fn window_held_drain_names_slow_readers() {
        let lines = diagnose(&window(0, 50, conn_flags::WINDOW_HELD, 0));
        assert!(lines.len() == 1 && lines[0].contains("slow readers"), "{lines:?}");
    }

    /// A skipped `tcp_probe` run or a delivery the ring refused loses no
    /// request: `agent/dropped_deliveries`, not `agent/dropped_events`.
    #[test]
    fn delivery_losses_are_not_lost_requests() {
        use crate::outcome::EndReason;
        let mut r = super::super::test_report(EndReason::DurationElapsed);
        let mut probe = super::super::test_program(programs::TCP_PROBE, 100, 10_000);
        probe.recursion_misses = 7;
        let mut recv = super::super::test_program(programs::TCP_RCV_SPACE_ADJUST, 100, 10_000);
        recv.recursion_misses = 2;
        r.programs = vec![probe, recv];
        r.kernel.net.stats.deliveries_dropped = 5;
        assert_eq!((dropped(&r), super::super::dropped_events(&r)), (12, 2));
        let b = crate::report::metrics::document(&r);
        assert_eq!(b.get("agent/dropped_deliveries", Measure::Count), Some(12.0));
        assert_eq!(b.get("agent/dropped_events", Measure::Count), Some(2.0));
    }

    /// Without `--delivery` nothing the hooks measure is reported, not even
    /// as zeros; listen overflows (from /proc) still are.
    #[test]
    fn without_delivery_no_delivery_numbers_are_reported() {
        use crate::outcome::EndReason;
        let mut r = super::super::test_report(EndReason::DurationElapsed);
        r.requests = window(1, 2, 0, 0);
        r.window.listen_overflows = 3;
        r.delivery = false;
        let b = crate::report::metrics::document(&r);
        let json = b.to_json();
        for id in [
            "\"latency/queue_",
            "\"latency/drain_",
            "\"latency/delivered_",
            "\"latency/accept_wait",
            "\"tcp/retransmits",
            "\"agent/dropped_deliveries",
        ] {
            assert!(!json.contains(id), "{id} without --delivery: {json}");
        }
        assert!(json.contains("\"latency/p50\""), "the report has its other rows: {json}");
        assert_eq!(b.get("tcp/listen_overflows", Measure::Count), Some(3.0));
        let mut text = String::new();
        summary(&mut text, &r);
        assert!(text.contains("run with --delivery") && !text.contains("diagnosis"), "{text}");
        assert!(text.contains("listen overflows: 3"), "{text}");
        // The same run with --delivery has them.
        r.delivery = true;
        let b = crate::report::metrics::document(&r);
        assert!(b.get("latency/queue_p50", Measure::Latency).is_some());
        assert_eq!(b.get("tcp/retransmits", Measure::Count), Some(0.0));
        let mut text = String::new();
        summary(&mut text, &r);
        assert!(
            text.contains("where the time goes (p50") && !text.contains("--delivery"),
            "{text}"
        );
    }

    #[test]
    fn metrics_are_named_and_empty_sets_left_out() {
        let mut b = BmfReport::default();
        add_metrics(&mut b, "@load", Some(&window(1, 2, 0, 0).delivery), &WindowStats::default());
        let delivered = b.get("latency/delivered_p50@load", Measure::Latency).unwrap();
        assert!((delivered - 8e6).abs() <= 8e6 / 2048.0, "{delivered}");
        assert_eq!(b.get("tcp/retransmits@load", Measure::Count), Some(0.0));
        assert_eq!(b.get("latency/accept_wait_p50@load", Measure::Latency), None);
    }
}
