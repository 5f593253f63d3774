//! The attribution on simulated proxies whose truth is known, and on
//! small cases worked by hand.

use std::{cmp::Reverse, collections::BinaryHeap};

use super::*;
use crate::percentile::percentile_sorted;
use crate::requests::{Request, UpstreamCall};

const US: u64 = 1_000;

/// xorshift64*: failures reproduce.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }
}

fn request(start: u64, first_response: u64, end: u64) -> Request {
    Request {
        start_ns: start,
        first_response_ns: first_response,
        end_ns: end,
        ..Default::default()
    }
}

fn call(start: u64, end: u64) -> UpstreamCall {
    UpstreamCall { start_ns: start, first_response_ns: end, end_ns: end }
}

/// The proxy's own time between two steps: mostly 5-30 µs, one time in
/// eight 100-400 µs (held up: preempted, or behind other tasks).
fn lag(rng: &mut Rng) -> u64 {
    if rng.below(8) == 0 { rng.between(100 * US, 400 * US) } else { rng.between(5 * US, 30 * US) }
}

/// A trace of a proxy and the truth behind it.
struct Trace {
    reqs: Vec<Request>,
    calls: Vec<UpstreamCall>,
    /// Per request: ns waited on its own calls.
    truth: Vec<u64>,
}

/// `clients` closed-loop keep-alive clients through a proxy with a pool
/// of `pool` upstream connections (FIFO wait beyond), two workers'
/// worth of jitter before and after each call; one request in
/// `local_in` answered without upstream and one in `two_in` making two
/// calls (0: never). Upstream calls last 1-1.3 ms.
fn simulate(seed: u64, n: usize, clients: usize, pool: usize, local_in: u64, two_in: u64) -> Trace {
    let mut rng = Rng(seed | 1);
    let mut next_send: BinaryHeap<Reverse<u64>> =
        (0..clients as u64).map(|c| Reverse(c * 7 * US)).collect();
    let mut conn_free = vec![0u64; pool];
    let mut t = Trace { reqs: Vec::new(), calls: Vec::new(), truth: Vec::new() };
    for _ in 0..n {
        let Reverse(sent) = next_send.pop().unwrap();
        let start = sent + rng.between(5 * US, 15 * US);
        let calls = if local_in > 0 && rng.below(local_in) == 0 {
            0
        } else if two_in > 0 && rng.below(two_in) == 0 {
            2
        } else {
            1
        };
        let mut ready = start + lag(&mut rng);
        let mut waited = 0;
        for _ in 0..calls {
            let conn = (0..pool).min_by_key(|&i| conn_free[i]).unwrap();
            let c_start = ready.max(conn_free[conn]) + rng.between(2 * US, 30 * US);
            let c_end = c_start + rng.between(1_000 * US, 1_300 * US);
            conn_free[conn] = c_end;
            t.calls.push(call(c_start, c_end));
            waited += c_end - c_start;
            ready = c_end + lag(&mut rng);
        }
        let end = ready + rng.between(0, 10 * US);
        t.reqs.push(request(start, ready, end));
        t.truth.push(waited);
        next_send.push(Reverse(end + rng.between(20 * US, 60 * US)));
    }
    t
}

fn overheads(reqs: &[Request], upstream: &[u64]) -> Vec<u64> {
    let mut v: Vec<u64> = reqs
        .iter()
        .zip(upstream)
        .filter(|(_, u)| **u > 0)
        .map(|(r, u)| r.latency_ns() - u)
        .collect();
    v.sort_unstable();
    v
}

/// ≥ 99 % of proxied requests get a call, none that made none, and
/// overhead p50/p95 within max(10 %, 50 µs) of the truth.
fn check(t: &Trace, what: &str) {
    let a = attribute(&t.reqs, &t.calls);
    let proxied = t.truth.iter().filter(|u| **u > 0).count();
    let got = a.upstream_ns.iter().filter(|u| **u > 0).count();
    let wrong = t.truth.iter().zip(&a.upstream_ns).filter(|(t, a)| **t == 0 && **a > 0).count();
    assert!(got * 100 >= proxied * 99, "{what}: {got} of {proxied} proxied requests attributed");
    assert!(wrong * 100 <= proxied, "{what}: {wrong} requests without upstream were given calls");
    let (truth, ours) = (overheads(&t.reqs, &t.truth), overheads(&t.reqs, &a.upstream_ns));
    for p in [50.0, 95.0] {
        let (x, y) = (percentile_sorted(&truth, p), percentile_sorted(&ours, p));
        let tolerance = (x * 0.1).max(50.0 * US as f64);
        assert!((x - y).abs() <= tolerance, "{what}: overhead p{p} {y} vs true {x}");
    }
}

#[test]
fn one_call_per_request_many_clients() {
    for seed in 1..=5 {
        check(&simulate(seed, 5_000, 12, 64, 0, 0), "12 clients, big pool");
    }
}

#[test]
fn pool_smaller_than_concurrency_waits_count_as_overhead() {
    for seed in 1..=5 {
        let t = simulate(seed, 5_000, 12, 3, 0, 0);
        check(&t, "12 clients, pool of 3");
    }
}

#[test]
fn paths_without_upstream() {
    for seed in 1..=5 {
        check(&simulate(seed, 5_000, 12, 64, 4, 0), "a quarter local, big pool");
        check(&simulate(seed, 5_000, 12, 4, 4, 0), "a quarter local, pool of 4");
    }
}

#[test]
fn paths_with_two_calls() {
    for seed in 1..=5 {
        check(&simulate(seed, 5_000, 12, 64, 0, 10), "a tenth two calls, big pool");
        check(&simulate(seed, 5_000, 12, 64, 4, 4), "mixed, big pool");
        check(&simulate(seed, 5_000, 12, 64, 0, 4), "a quarter two calls, big pool");
        check(&simulate(seed, 5_000, 12, 64, 0, 1), "all two calls, big pool");
        check(&simulate(seed, 5_000, 12, 4, 0, 1), "all two calls, pool of 4");
        check(&simulate(seed, 5_000, 12, 4, 4, 4), "mixed, pool of 4");
    }
}

#[test]
fn a_call_outside_every_request_is_given_to_none() {
    let reqs = [request(10, 100, 110), request(200, 300, 310)];
    // Before any request, straddling a response start, after the last;
    // then one within the first.
    let calls = [call(0, 5), call(50, 150), call(400, 500), call(20, 90)];
    let a = attribute(&reqs, &calls);
    assert_eq!(a.parent, vec![None, None, None, Some(0)]);
    assert_eq!(a.upstream_ns, vec![70, 0]);
}

#[test]
fn the_request_with_the_smallest_slack_gets_the_call() {
    // Two requests read on two workers 5 µs apart; their calls are
    // written in the other order: each goes to its own.
    let reqs = [request(0, 1_030, 1_040), request(5, 1_020, 1_030)];
    let calls = [call(20, 1_025), call(15, 1_015)];
    let a = attribute(&reqs, &calls);
    assert_eq!(a.parent, vec![Some(0), Some(1)]);
    assert_eq!(a.upstream_ns, vec![1_005, 1_000]);
}

#[test]
fn sequential_calls_of_one_request_are_summed() {
    let reqs = [request(0, 2_100, 2_110)];
    let calls = [call(10, 1_000), call(1_050, 2_050)];
    let a = attribute(&reqs, &calls);
    assert_eq!(a.upstream_ns, vec![1_990]);
}

/// A fan-out: both calls are credited, their sum capped by the latency.
#[test]
fn concurrent_calls_of_one_request_are_each_credited() {
    let reqs = [request(0, 2_000, 2_010)];
    let calls = [call(10, 1_000), call(20, 1_100)];
    let a = attribute(&reqs, &calls);
    assert_eq!(a.parent, vec![Some(0), Some(0)]);
    assert_eq!(a.upstream_ns, vec![2_010]);
}

/// A request busy with a call it took from its neighbour gives it back
/// when its own second call comes (an augmenting move).
#[test]
fn a_call_taken_by_mistake_is_moved_to_free_its_request() {
    // r0 reads at 0 and calls 10..1000 then 1010..2000; r1 reads at 5
    // and calls 8..1020. By start, 8..1020 goes to r0 (its response
    // starts first); 1010..2000 then finds r0 busy until 1020, so
    // 8..1020 moves to r1, and 10..1000 (r1's by then) back to r0.
    let reqs = [request(0, 2_010, 2_020), request(5, 2_030, 2_040)];
    let calls = [call(10, 1_000), call(1_010, 2_000), call(8, 1_020)];
    let a = attribute(&reqs, &calls);
    assert_eq!(a.parent[1], Some(0));
    assert_eq!(a.parent.iter().filter(|p| **p == Some(0)).count(), 2);
    assert_eq!(a.parent.iter().filter(|p| **p == Some(1)).count(), 1);
}
