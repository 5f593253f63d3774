//! The targets node mode follows and what it counted for each: counters
//! and fixed-bucket histograms, so memory grows with the number of targets
//! and buckets, never with uptime or requests. A target is a process (one
//! `pid` label set): a restarted service is a new target, its old series
//! stay, unchanged, for [`EXITED_KEPT_NS`] and are then dropped (Prometheus
//! marks them stale); a counter never goes down within a label set.

use std::collections::BTreeMap;

use agent_common::{NetEvent, conn_flags, event_kind};

use crate::requests::delivery::Delivery;

/// How long an exited target's series are still exposed: long enough for
/// scrapes every minute to see their last increments.
pub const EXITED_KEPT_NS: u64 = 120_000_000_000;

/// The default buckets of `http.server.request.duration` in OpenTelemetry's
/// semantic conventions (seconds).
pub const DEFAULT_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// Status classes of `http_server_requests_total{status_class}`: 1xx..5xx,
/// then a response with no status line read, then none sent before a reset.
pub const STATUS_CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "unknown", "reset"];

/// A Prometheus histogram: counts per bucket (not cumulative; the last is
/// +Inf), their sum in ns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum_ns: u64,
    pub count: u64,
}

impl Histogram {
    fn new(buckets: usize) -> Histogram {
        Histogram { counts: vec![0; buckets + 1], sum_ns: 0, count: 0 }
    }

    fn observe(&mut self, bounds_ns: &[u64], ns: u64) {
        let i = bounds_ns.partition_point(|&b| b < ns);
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.wrapping_add(ns);
        self.count += 1;
    }
}

/// One followed process and what it did.
#[derive(Clone, Debug)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    /// The `selector` label (`kind=value`).
    pub selector: String,
    /// CLOCK_MONOTONIC ns of the exec that made it a target (0: found running).
    pub exec_ns: u64,
    /// `/proc/PID/stat` start time: tells this process from a later one
    /// with the same PID.
    pub starttime_ticks: u64,
    pub requests: [u64; STATUS_CLASSES.len()],
    pub duration: Histogram,
    pub ttfb: Histogram,
    /// Upstream calls made by the target (client side).
    pub upstream: Histogram,
    /// Requests that waited on upstreams: their time minus that wait.
    pub overhead: Histogram,
    /// Delivery (issue 14), per acknowledged response: arrival → first
    /// read, last write → acknowledged, arrival → acknowledged.
    pub queue: Histogram,
    pub drain: Histogram,
    pub delivered: Histogram,
    /// End of the first response seen, for the startup gauge.
    pub first_response_ns: u64,
    /// When it was seen gone (CLOCK_MONOTONIC ns).
    pub exited_ns: Option<u64>,
}

/// Every target, live and recently exited, and the agent's own counters.
pub struct Registry {
    /// Histogram bucket bounds (seconds, ascending) and in ns.
    pub buckets: Vec<f64>,
    bounds_ns: Vec<u64>,
    /// Keyed by (pid, start time): a reused PID is another target.
    pub targets: BTreeMap<(u32, u64), Target>,
    /// Events whose owner is no target (a connection of a process no longer
    /// followed).
    pub unattributed: u64,
    /// `--delivery`: the queue/drain/delivered histograms are measured
    /// (off: their families are not exported, not exported empty).
    pub delivery: bool,
}

impl Registry {
    pub fn new(buckets: Vec<f64>) -> Registry {
        let bounds_ns = buckets.iter().map(|s| (s * 1e9).round() as u64).collect();
        Registry { buckets, bounds_ns, targets: BTreeMap::new(), unattributed: 0, delivery: false }
    }

    /// Starts following a process (nothing if it is followed already).
    pub fn add(
        &mut self,
        key: (u32, u64),
        selector: String,
        exec_ns: u64,
        comm: String,
        exe: String,
    ) {
        let n = self.buckets.len();
        self.targets.entry(key).or_insert_with(|| Target {
            pid: key.0,
            comm,
            exe,
            selector,
            exec_ns,
            starttime_ticks: key.1,
            requests: [0; STATUS_CLASSES.len()],
            duration: Histogram::new(n),
            ttfb: Histogram::new(n),
            upstream: Histogram::new(n),
            overhead: Histogram::new(n),
            queue: Histogram::new(n),
            drain: Histogram::new(n),
            delivered: Histogram::new(n),
            first_response_ns: 0,
            exited_ns: None,
        });
    }

    /// The live target with this PID.
    pub fn live_mut(&mut self, pid: u32) -> Option<&mut Target> {
        self.targets.values_mut().find(|t| t.pid == pid && t.exited_ns.is_none())
    }

    pub fn live_count(&self) -> usize {
        self.targets.values().filter(|t| t.exited_ns.is_none()).count()
    }

    /// Counts one finished request or upstream call for its owner.
    pub fn record(&mut self, e: &NetEvent) {
        let owner = conn_flags::owner(e.flags);
        let bounds = std::mem::take(&mut self.bounds_ns);
        match self.live_mut(owner) {
            Some(t) => observe(t, &bounds, e),
            None => self.unattributed += 1,
        }
        self.bounds_ns = bounds;
    }

    /// Drops the series of targets that exited more than
    /// [`EXITED_KEPT_NS`] before `now_ns`.
    pub fn forget_exited(&mut self, now_ns: u64) {
        self.targets.retain(|_, t| t.exited_ns.is_none_or(|x| now_ns - x < EXITED_KEPT_NS));
    }
}

fn observe(t: &mut Target, bounds: &[u64], e: &NetEvent) {
    let total = e.end_ns.saturating_sub(e.start_ns);
    match e.kind {
        event_kind::REQUEST => {
            t.requests[status_class(e)] += 1;
            t.duration.observe(bounds, total);
            if e.first_response_ns != 0 {
                t.ttfb.observe(bounds, e.first_response_ns.saturating_sub(e.start_ns));
                if t.first_response_ns == 0 || e.end_ns < t.first_response_ns {
                    t.first_response_ns = e.end_ns;
                }
            }
            if e.upstream_ns > 0 {
                t.overhead.observe(bounds, total.saturating_sub(e.upstream_ns));
            }
        }
        event_kind::UPSTREAM_CALL => t.upstream.observe(bounds, total),
        event_kind::DELIVERY => {
            if let Some(d) = Delivery::of(e) {
                t.queue.observe(bounds, d.queue_ns());
                t.drain.observe(bounds, d.drain_ns());
                t.delivered.observe(bounds, d.delivered_ns());
            }
        }
        _ => {}
    }
}

/// Index into [`STATUS_CLASSES`].
fn status_class(e: &NetEvent) -> usize {
    match e.status / 100 {
        c @ 1..=5 => c as usize - 1,
        _ if e.first_response_ns == 0 && e.flags & conn_flags::RESET != 0 => 6,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(owner: u32, status: u32, latency_ns: u64) -> NetEvent {
        NetEvent {
            start_ns: 1_000,
            first_response_ns: 1_500,
            end_ns: 1_000 + latency_ns,
            kind: event_kind::REQUEST,
            status,
            flags: owner << conn_flags::OWNER_SHIFT | conn_flags::ADOPTED,
            ..Default::default()
        }
    }

    #[test]
    fn events_go_to_their_owner_by_status_class_and_bucket() {
        let mut r = Registry::new(vec![0.001, 0.01]);
        r.add((42, 7), "comm=x".into(), 0, "x".into(), "/x".into());
        r.record(&request(42, 200, 500_000)); // 0.5 ms: first bucket
        r.record(&request(42, 503, 5_000_000)); // 5 ms: second
        r.record(&request(42, 200, 1_000_000)); // exactly 1 ms: le="0.001"
        r.record(&request(43, 200, 1)); // no such target
        let t = &r.targets[&(42, 7)];
        assert_eq!(t.requests, [0, 2, 0, 0, 1, 0, 0]);
        assert_eq!(t.duration.counts, vec![2, 1, 0]);
        assert_eq!(t.duration.sum_ns, 6_500_000);
        assert_eq!(r.unattributed, 1);
    }

    #[test]
    fn a_restarted_pid_is_a_new_target_and_old_series_expire() {
        let mut r = Registry::new(DEFAULT_BUCKETS.to_vec());
        r.add((42, 7), "exe=/x".into(), 0, "x".into(), "/x".into());
        r.record(&request(42, 200, 10));
        r.live_mut(42).unwrap().exited_ns = Some(1_000);
        r.add((42, 9), "exe=/x".into(), 5, "x".into(), "/x".into());
        r.record(&request(42, 200, 10));
        assert_eq!(r.targets[&(42, 7)].requests[1], 1);
        assert_eq!(r.targets[&(42, 9)].requests[1], 1);
        r.forget_exited(1_000 + EXITED_KEPT_NS - 1);
        assert_eq!(r.targets.len(), 2);
        r.forget_exited(1_000 + EXITED_KEPT_NS);
        assert_eq!(r.targets.keys().collect::<Vec<_>>(), [&(42, 9)]);
    }

    #[test]
    fn deliveries_fill_queue_drain_and_delivered_of_their_owner() {
        let mut r = Registry::new(vec![0.001, 0.01]);
        r.add((42, 7), "comm=x".into(), 0, "x".into(), "/x".into());
        // Arrived at 0, read at 2 ms, written at 3 ms, acknowledged at 23 ms.
        let ms = 1_000_000;
        r.record(&NetEvent {
            start_ns: 1_000,
            first_response_ns: 1_000 + 2 * ms,
            upstream_ns: 1_000 + 3 * ms,
            end_ns: 1_000 + 23 * ms,
            kind: event_kind::DELIVERY,
            flags: 42 << conn_flags::OWNER_SHIFT | conn_flags::QUEUE_KNOWN,
            ..Default::default()
        });
        let t = &r.targets[&(42, 7)];
        assert_eq!((t.queue.counts.clone(), t.queue.sum_ns), (vec![0, 1, 0], 2 * ms));
        assert_eq!((t.drain.counts.clone(), t.drain.sum_ns), (vec![0, 0, 1], 20 * ms));
        assert_eq!(t.delivered.sum_ns, 23 * ms);
        assert_eq!(t.requests, [0; STATUS_CLASSES.len()], "a delivery is no request");
        assert_eq!(r.unattributed, 0);
    }

    #[test]
    fn reset_before_any_response_is_its_own_class() {
        let mut e = request(1, 0, 10);
        e.first_response_ns = 0;
        e.flags |= conn_flags::RESET;
        assert_eq!(STATUS_CLASSES[status_class(&e)], "reset");
        e.flags &= !conn_flags::RESET;
        assert_eq!(STATUS_CLASSES[status_class(&e)], "unknown");
    }
}
