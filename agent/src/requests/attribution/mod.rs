//! Which inbound request each upstream call served, from times alone: the
//! kernel side reports requests and calls with no link between them (on an
//! async runtime the thread that writes a call is often not the one that
//! read its request, so no per-thread rule links them reliably). Pure.
//!
//! A call can serve request `r` when it lies within `r` as causality
//! requires: written after `r`'s first byte was read, its reply's first byte
//! read before `r`'s response started, its last byte read before `r`'s
//! response ended. Calls are placed in the order they started:
//!
//! 1. Each goes to the request that can hold it whose response starts
//!    first (earliest deadline), if that request is not waiting on another
//!    call then; else that other call is moved to another request that can
//!    hold it, and so on ([`Matcher::augment`], up to `MAX_MOVES` moves),
//!    else the next request by deadline is tried. Earliest deadline first is
//!    what gives the most requests a call when each makes one (Glover's
//!    rule for such matchings): a request that could still take a later
//!    call is left for it. A call no free request can take goes to the
//!    first that can hold it anyway (a fan-out: concurrent calls of one
//!    request).
//! 2. Requests holding several calls are then improved locally
//!    ([`refine`]): a call moves, or swaps with another request's call,
//!    when that makes the two requests' chains (first read → calls →
//!    response) more even, by the sum of the squares of their gaps. This
//!    fixes what step 1 cannot see coming with sequential calls: a request
//!    left one call short next to one holding one too many.
//!
//! Wrong choices remain between requests read close together whose calls
//! end close together too, so a swap moves little time. Measured on
//! simulated proxies (`tests.rs`) and the async-proxy fixture
//! (`agent/tests/proxy_async.rs`); errors in `docs/metrics.md`.

mod refine;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use super::{Request, UpstreamCall};

/// The result: per request (same order as given), the ns it waited on the
/// calls given to it; per call, the index of the request it was given to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub upstream_ns: Vec<u64>,
    pub parent: Vec<Option<usize>>,
}

/// Above this many requests open at one call's start, only the most recent
/// ones are candidates: bounds the work per call (long-lived requests such
/// as streams would otherwise be scanned by every call).
const MAX_CANDIDATES: usize = 1024;
/// The longest chain of calls moved to place one.
const MAX_MOVES: u32 = 6;
/// Per call, the requests [`refine`] considers moving it to.
const MAX_ALTERNATIVES: usize = 32;

/// Gives each call in `calls` to at most one request of `reqs` (see the
/// module's rule). Work: O(calls × requests open at once).
pub fn attribute(reqs: &[Request], calls: &[UpstreamCall]) -> Attribution {
    if calls.is_empty() {
        // A target without upstreams: nothing to sort.
        return Attribution { upstream_ns: vec![0; reqs.len()], parent: Vec::new() };
    }
    let mut m = Matcher {
        reqs,
        calls,
        given: vec![Vec::new(); reqs.len()],
        parent: vec![None; calls.len()],
        holders_of: vec![Vec::new(); calls.len()],
    };
    let mut req_order: Vec<usize> = (0..reqs.len()).collect();
    req_order.sort_unstable_by_key(|&i| reqs[i].start_ns);
    let mut call_order: Vec<usize> = (0..calls.len()).collect();
    call_order.sort_unstable_by_key(|&i| calls[i].start_ns);
    let mut open: Vec<usize> = Vec::new();
    let mut next = 0;
    for ci in call_order {
        let c = &calls[ci];
        while next < req_order.len() && reqs[req_order[next]].start_ns <= c.start_ns {
            open.push(req_order[next]);
            next += 1;
        }
        // A request whose response started before this call can hold no
        // later call either (they start later still).
        open.retain(|&ri| reqs[ri].first_response_ns >= c.start_ns);
        let open = &open[open.len().saturating_sub(MAX_CANDIDATES)..];
        m.holders_of[ci] = m.holders(ci, open);
        m.place(ci, open);
        m.holders_of[ci].truncate(MAX_ALTERNATIVES);
    }
    refine::refine(&mut m);
    let upstream_ns = m
        .given
        .iter()
        .zip(reqs)
        .map(|(cs, r)| {
            let waited: u64 = cs.iter().map(|&ci| calls[ci].end_ns - calls[ci].start_ns).sum();
            waited.min(r.latency_ns())
        })
        .collect();
    Attribution { upstream_ns, parent: m.parent }
}

struct Matcher<'a> {
    reqs: &'a [Request],
    calls: &'a [UpstreamCall],
    /// Per request, the calls given to it.
    given: Vec<Vec<usize>>,
    parent: Vec<Option<usize>>,
    /// Per call, the requests that can hold it, first response first.
    holders_of: Vec<Vec<usize>>,
}

impl Matcher<'_> {
    /// Whether request `ri` can hold call `ci` (causality).
    fn holds(&self, ri: usize, ci: usize) -> bool {
        let (r, c) = (&self.reqs[ri], &self.calls[ci]);
        r.start_ns <= c.start_ns
            && c.first_response_ns <= r.first_response_ns
            && c.end_ns <= r.end_ns
    }

    /// The requests of `open` that hold `ci`, the first response first.
    fn holders(&self, ci: usize, open: &[usize]) -> Vec<usize> {
        let mut holders: Vec<usize> =
            open.iter().copied().filter(|&ri| self.holds(ri, ci)).collect();
        holders
            .sort_unstable_by_key(|&ri| (self.reqs[ri].first_response_ns, self.reqs[ri].start_ns));
        holders
    }

    /// The calls given to `ri` that overlap call `ci`.
    fn overlapping(&self, ri: usize, ci: usize) -> Vec<usize> {
        let c = &self.calls[ci];
        self.given[ri]
            .iter()
            .copied()
            .filter(|&o| {
                o != ci && self.calls[o].start_ns < c.end_ns && c.start_ns < self.calls[o].end_ns
            })
            .collect()
    }

    fn give(&mut self, ri: usize, ci: usize) {
        self.parent[ci] = Some(ri);
        self.given[ri].push(ci);
    }

    fn take(&mut self, ri: usize, ci: usize) {
        self.parent[ci] = None;
        self.given[ri].retain(|&o| o != ci);
    }

    /// Step 1 of the module's rule for call `ci`.
    fn place(&mut self, ci: usize, open: &[usize]) {
        let mut visited = HashSet::new();
        if !self.augment(ci, open, MAX_MOVES, &mut visited)
            && let Some(&ri) = self.holders_of[ci].first()
        {
            self.give(ri, ci);
        }
    }

    /// Gives `ci` to the first holder by deadline that is free while it
    /// runs, or that is busy with one call which can be moved (recursively,
    /// `moves` more times) to another holder. Whether it could.
    fn augment(
        &mut self,
        ci: usize,
        open: &[usize],
        moves: u32,
        visited: &mut HashSet<usize>,
    ) -> bool {
        for ri in self.holders(ci, open) {
            if !visited.insert(ri) {
                continue;
            }
            let busy = self.overlapping(ri, ci);
            if busy.is_empty() {
                self.give(ri, ci);
                return true;
            }
            if let [o] = busy[..]
                && moves > 0
            {
                self.take(ri, o);
                self.give(ri, ci);
                if self.augment(o, open, moves - 1, visited) {
                    return true;
                }
                self.take(ri, ci);
                self.give(ri, o);
            }
        }
        false
    }
}
