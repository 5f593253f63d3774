//! Step 2 of the attribution: local improvement of requests holding
//! several calls, by the evenness of their chains.

use super::Matcher;
use crate::requests::Request;

/// Passes over all calls at most.
const ROUNDS: usize = 2;
/// Weight of an overlap between two calls of one request against a gap
/// of the same length (see [`chain_cost`]).
const OVERLAP_WEIGHT: u128 = 16;
/// Chains longer than this are not improved (their cost is not computed).
const MAX_CHAIN: usize = 8;

/// Moves a call to another request that can hold it, or swaps it with one
/// of that request's calls, when that lowers the two requests' summed
/// [`chain_cost`]; only calls of requests holding several (a request with
/// one call could only swap it for another of about the same length: not
/// worth the work). Repeated while anything changes, `ROUNDS` times at most.
pub(super) fn refine(m: &mut Matcher) {
    for _ in 0..ROUNDS {
        let mut changed = false;
        for ci in 0..m.calls.len() {
            changed |= improve(m, ci);
        }
        if !changed {
            return;
        }
    }
}

/// The best move or swap of call `ci`, applied; whether there was one.
fn improve(m: &mut Matcher, ci: usize) -> bool {
    let Some(a) = m.parent[ci] else { return false };
    if m.given[a].len() < 2 {
        return false;
    }
    let a_now = cost(m, a, m.given[a].iter().copied());
    let a_without = || m.given[a].iter().copied().filter(|&o| o != ci);
    // (gain, to, swapped with)
    let mut best: Option<(u128, usize, Option<usize>)> = None;
    let mut consider = |gain: u128, b: usize, d: Option<usize>| {
        if gain > 0 && best.is_none_or(|(g, ..)| gain > g) {
            best = Some((gain, b, d));
        }
    };
    for &b in &m.holders_of[ci] {
        if b == a {
            continue;
        }
        let b_calls = &m.given[b];
        let before = a_now.saturating_add(cost(m, b, b_calls.iter().copied()));
        let b_with = || b_calls.iter().copied().chain([ci]);
        let moved = cost(m, a, a_without()).saturating_add(cost(m, b, b_with()));
        consider(before.saturating_sub(moved), b, None);
        for &d in b_calls {
            if !m.holds(a, d) {
                continue;
            }
            let swapped = cost(m, a, a_without().chain([d])).saturating_add(cost(
                m,
                b,
                b_with().filter(|&o| o != d),
            ));
            consider(before.saturating_sub(swapped), b, Some(d));
        }
    }
    let Some((_, b, swap)) = best else { return false };
    m.take(a, ci);
    m.give(b, ci);
    if let Some(d) = swap {
        m.take(b, d);
        m.give(a, d);
    }
    true
}

/// [`chain_cost`] of request `ri` holding `calls`; `u128::MAX` beyond
/// `MAX_CHAIN` calls.
fn cost(m: &Matcher, ri: usize, calls: impl Iterator<Item = usize>) -> u128 {
    let mut spans = [(0u64, 0u64); MAX_CHAIN];
    let mut n = 0;
    for ci in calls {
        if n == MAX_CHAIN {
            return u128::MAX;
        }
        spans[n] = (m.calls[ci].start_ns, m.calls[ci].end_ns);
        n += 1;
    }
    chain_cost(&m.reqs[ri], &mut spans[..n])
}

/// How unlikely it is that request `r` made exactly the calls `spans`
/// (start, end): the sum of the squares of the gaps in its chain (first
/// read → first call, each call's end → the next call, the last call's end
/// → the response), an overlap between calls weighing `OVERLAP_WEIGHT`
/// times a gap. A proxy acts soon after each step, so its true chain has
/// small gaps; a request missing a call has one long gap, and squares make
/// two halves cheaper than the whole. With no call, the whole time to
/// first byte is one gap.
fn chain_cost(r: &Request, spans: &mut [(u64, u64)]) -> u128 {
    spans.sort_unstable();
    let mut total = 0u128;
    let mut at = r.start_ns;
    for &(start, end) in spans.iter() {
        let gap = u128::from(start.abs_diff(at));
        total += if start >= at { gap * gap } else { OVERLAP_WEIGHT * gap * gap };
        at = at.max(end);
    }
    let last = u128::from(r.first_response_ns.saturating_sub(at));
    total + last * last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_even_chain_costs_less_than_a_missing_call() {
        let r =
            Request { start_ns: 0, first_response_ns: 2_100, end_ns: 2_110, ..Default::default() };
        let both = chain_cost(&r, &mut [(1_050, 2_050), (10, 1_000)]);
        let one = chain_cost(&r, &mut [(10, 1_000)]);
        let overlapping = chain_cost(&r, &mut [(10, 1_000), (900, 2_050)]);
        assert_eq!(both, 10 * 10 + 50 * 50 + 50 * 50);
        assert_eq!(one, 10 * 10 + 1_100 * 1_100);
        assert_eq!(overlapping, 10 * 10 + 16 * 100 * 100 + 50 * 50);
    }
}
