//! Where each request's time goes (issue 14): its BMF rows
//! (`latency/queue_*`, `latency/drain_*`, `latency/delivered_*`,
//! `tcp/retransmits`), the summary's "where the time goes" table per phase
//! (queue / app / drain / delivered beside the client's number) and the
//! diagnosis lines, each from a pattern the kernel saw in the events
//! (`docs/metrics.md#delivery-queue-drain-accept-wait`).

use std::fmt::Write as _;

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

/// Every delivery metric of a window, named `<id><suffix>`.
pub fn add_metrics(b: &mut BmfReport, suffix: &str, d: &DeliveryStats, w: &WindowStats) {
    add_percentile_metrics(b, suffix, d);
    b.add(format!("tcp/retransmits{suffix}"), Measure::Count, d.counts.retransmits as f64);
    b.add(format!("tcp/listen_overflows{suffix}"), Measure::Count, w.listen_overflows as f64);
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
    if c.accepted > 0 && d.accept_wait.p50 > q.latency.p50 {
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
/// phases), then the diagnosis of each.
pub fn summary(out: &mut String, r: &RunReport) {
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
