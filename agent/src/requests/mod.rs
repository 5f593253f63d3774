//! The requests and upstream calls the kernel side reported, and the numbers
//! of a time window computed from them: counts, rates, percentiles (k6's
//! interpolation, within 1/2048 of exact), errors, upstream time and proxy
//! overhead (which request each call served: [`attribution`]). Pure.

pub mod attribution;
pub mod delivery;
pub mod segment_list;
pub mod segments;

use agent_common::{NetEvent, conn_flags, event_kind};

use self::{
    delivery::{DeliveryLog, DeliveryStats},
    segments::{Counts, Segment, Segments},
};

/// How long past its end a request given no upstream call is kept unfolded
/// (when the target has upstreams), waiting for calls still unreported.
const UNPAIRED_HOLD_NS: u64 = 1_000_000_000;
/// How long past its end a call given to no folded request stays a candidate.
const UNPAIRED_CALL_KEEP_NS: u64 = 10_000_000_000;
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
    /// Time spent waiting on upstream calls made for this request (set by
    /// [`attribution`] when it is folded or a window is computed).
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
    /// First byte of the upstream's response read.
    pub first_response_ns: u64,
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
    /// Calls not yet given to a folded request: what [`attribution`]
    /// matches `pending` against (kept `UNPAIRED_CALL_KEEP_NS` at most).
    unpaired_calls: Vec<UpstreamCall>,
    /// Whether any upstream call was reported: only then are requests
    /// without one held back for calls still to come.
    upstreams_seen: bool,
    segments: Segments,
    /// Events whose timestamps were out of order (a response before its
    /// request): never stored, counted.
    pub rejected: u64,
    count: u64,
    firsts: [Option<u64>; 4],
    /// Also cut this long after each startup milestone (the idle phase).
    idle_after_startup_ns: u64,
    /// Queue and drain times (issue 14), cut and folded with the requests.
    delivery: DeliveryLog,
}

impl RequestLog {
    /// A log that also cuts `idle_after_startup_ns` after each candidate
    /// end of startup, where the idle phase after startup ends.
    pub fn with_idle_after_startup(idle_after_startup_ns: u64) -> RequestLog {
        RequestLog { idle_after_startup_ns, ..Default::default() }
    }

    pub fn push(&mut self, e: &NetEvent) {
        if e.kind == event_kind::DELIVERY {
            self.rejected += u64::from(!self.delivery.push(e));
            return;
        }
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
                    // The kernel's per-thread credit is not used: calls are
                    // matched to requests in user space (`attribution`).
                    upstream_ns: 0,
                    status: e.status.min(u16::MAX as u32) as u16,
                    flags: (e.flags & conn_flags::MASK) as u16,
                };
                self.note_first(&r);
                self.count += 1;
                self.pending.push(r);
            }
            event_kind::UPSTREAM_CALL => {
                let call = UpstreamCall {
                    start_ns: e.start_ns,
                    first_response_ns: e.first_response_ns,
                    end_ns: e.end_ns,
                };
                self.pending_calls.push(call);
                self.unpaired_calls.push(call);
                self.upstreams_seen = true;
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
        self.delivery.cut(t_ns);
    }

    /// Edges registered after their time had been folded.
    pub fn late_cuts(&self) -> u64 {
        self.segments.late_cuts
    }

    /// Folds the requests and calls that ended by `horizon_ns` into
    /// segments, requests with the upstream time of the calls given to them
    /// ([`attribution`]). Call it with a horizon older than any edge still to
    /// be registered. A request given no call while the target has upstreams
    /// is kept up to `UNPAIRED_HOLD_NS` longer: a call on a pooled
    /// connection is reported only when the connection's next call starts.
    pub fn fold(&mut self, horizon_ns: u64) {
        self.delivery.fold(horizon_ns);
        let Some(until) = self.segments.fold_point(horizon_ns) else { return };
        // Only what started by `until` can be, or compete with, a request
        // folded now: a call of one ends before its response does.
        let reqs_in: Vec<usize> =
            (0..self.pending.len()).filter(|&i| self.pending[i].start_ns <= until).collect();
        let calls_in: Vec<usize> = (0..self.unpaired_calls.len())
            .filter(|&j| self.unpaired_calls[j].start_ns <= until)
            .collect();
        let paired = attribution::attribute(
            &reqs_in.iter().map(|&i| self.pending[i]).collect::<Vec<_>>(),
            &calls_in.iter().map(|&j| self.unpaired_calls[j]).collect::<Vec<_>>(),
        );
        let mut upstream_ns = vec![0; self.pending.len()];
        reqs_in.iter().zip(&paired.upstream_ns).for_each(|(&i, &ns)| upstream_ns[i] = ns);
        let mut folded = vec![false; self.pending.len()];
        let mut reqs = Vec::new();
        let mut keep = Vec::new();
        for (i, r) in self.pending.drain(..).enumerate() {
            let r = Request { upstream_ns: upstream_ns[i], ..r };
            let settled = r.upstream_ns > 0
                || !self.upstreams_seen
                || r.end_ns.saturating_add(UNPAIRED_HOLD_NS) <= until;
            if r.end_ns <= until && settled {
                folded[i] = true;
                reqs.push(r);
            } else {
                keep.push(Request { upstream_ns: 0, ..r });
            }
        }
        self.pending = keep;
        let mut taken = vec![false; self.unpaired_calls.len()];
        for (&j, parent) in calls_in.iter().zip(&paired.parent) {
            taken[j] = parent.is_some_and(|k| folded[reqs_in[k]]);
        }
        let unpaired = std::mem::take(&mut self.unpaired_calls);
        self.unpaired_calls = unpaired
            .into_iter()
            .zip(taken)
            .filter(|(c, taken)| !taken && c.end_ns.saturating_add(UNPAIRED_CALL_KEEP_NS) > until)
            .map(|(c, _)| c)
            .collect();
        let (calls, keep): (Vec<UpstreamCall>, Vec<UpstreamCall>) =
            self.pending_calls.drain(..).partition(|c| c.end_ns <= until);
        self.pending_calls = keep;
        self.segments.fold(&reqs, &calls, until);
    }

    /// The requests not folded yet, with the upstream time [`attribution`]
    /// gives them now.
    fn pending_attributed(&self) -> Vec<Request> {
        let paired = attribution::attribute(&self.pending, &self.unpaired_calls);
        self.pending
            .iter()
            .zip(paired.upstream_ns)
            .map(|(r, upstream_ns)| Request { upstream_ns, ..*r })
            .collect()
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
        let pending = self.pending_attributed();
        let reqs: Vec<&Request> = pending.iter().filter(|r| in_window(r.end_ns)).collect();
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
            delivery: self.delivery.window(start_ns, end_ns),
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
    /// Queue, drain and delivered time (issue 14).
    pub delivery: DeliveryStats,
}

impl RequestStats {
    pub fn http_errors(&self) -> u64 {
        self.status_4xx + self.status_5xx
    }
}

#[cfg(test)]
mod tests;
