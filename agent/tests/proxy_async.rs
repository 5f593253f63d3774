//! Privileged end-to-end tests of upstream attribution in a multi-threaded
//! async proxy: `async-proxy` (tokio, 2 worker threads, a pooled client
//! whose connection tasks write upstream from whichever worker runs them)
//! in front of a `demo-server` that answers after 2 ms, driven by ≥ 10
//! concurrent keep-alive clients. The proxy logs its own timings of every
//! request; the agent's `requests/proxied`, `overhead/latency_*` and
//! `upstream/latency_p50` are compared with them.

mod common;

use std::path::Path;

use common::*;

/// One line of the proxy's log: CLOCK_MONOTONIC ns. Reads are stamped
/// after they return, writes just before and just after: the kernel side
/// times a read when it returns and a write when it starts (before its
/// copy), so the "before" stamps are the ones that measure like it.
struct Logged {
    read: u64,
    /// Just before the response's write.
    writing: u64,
    /// Just after it.
    done: u64,
    /// (sending, sent, got) per call: just before and after the write
    /// upstream, whole reply read.
    calls: Vec<[u64; 3]>,
}

fn read_log(path: &Path) -> Vec<Logged> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading the proxy's log {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: Vec<u64> = line.split(' ').map(|f| f.parse().expect("a number")).collect();
            let n = v[3] as usize;
            assert_eq!(v.len(), 4 + 3 * n, "log line {line:?}");
            let calls = (0..n).map(|i| [v[4 + 3 * i], v[5 + 3 * i], v[6 + 3 * i]]).collect();
            Logged { read: v[0], writing: v[1], done: v[2], calls }
        })
        .collect()
}

impl Logged {
    /// The proxy's own time: from the request read to the response's write,
    /// less the calls' (write upstream → reply read), with writes stamped
    /// before (`stamp_after` false, as the kernel sees them) or after.
    fn overhead(&self, stamp_after: bool) -> u64 {
        let (end, sent) = if stamp_after { (self.done, 1) } else { (self.writing, 0) };
        let upstream: u64 = self.calls.iter().map(|c| c[2] - c[sent]).sum();
        (end - self.read).saturating_sub(upstream)
    }
}

/// numpy's default (linear) percentile, as the agent computes its own.
fn percentile(values: &mut [u64], p: f64) -> f64 {
    values.sort_unstable();
    let rank = p / 100.0 * (values.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    values[lo] as f64 + (values[hi] as f64 - values[lo] as f64) * (rank - lo as f64)
}

/// One load: `requests` GETs of `path` over `connections` keep-alive
/// connections.
struct Load {
    path: &'static str,
    requests: u64,
    connections: u64,
}

/// Starts the upstream and the proxy (pool of `pool`), attaches the agent,
/// runs `loads` at the same time, and returns the agent's BMF and the
/// proxy's log.
fn measure(test: &str, pool: u32, loads: &[Load]) -> (serde_json::Value, Vec<Logged>) {
    let upstream = Target::start("demo-server", &["--delay-ms", "2"]);
    let log = scratch_dir().join(format!("{test}-{}.log", std::process::id()));
    let proxy = Target::start(
        "async-proxy",
        &[
            "--upstream",
            &upstream.addr(),
            "--log",
            log.to_str().unwrap(),
            "--workers",
            "2",
            "--pool",
            &pool.to_string(),
        ],
    );
    let (bmf, _) = measure_during(proxy.pid, test, || {
        std::thread::scope(|s| {
            for load in loads {
                let url = format!("http://{}{}", proxy.addr(), load.path);
                s.spawn(move || {
                    let args = [
                        "--requests",
                        &load.requests.to_string(),
                        "--connections",
                        &load.connections.to_string(),
                    ];
                    let result = http_load(&url, &args);
                    assert_eq!(result.status_2xx, load.requests, "{url}: {result:?}");
                });
            }
        });
    });
    let logged = read_log(&log);
    let _ = std::fs::remove_file(&log);
    (bmf, logged)
}

/// Within max(10 %, 50 µs) of the proxy's own number.
fn assert_close(what: &str, agent: f64, truth: f64) {
    let tolerance = (0.1 * truth).max(50_000.0);
    eprintln!("{what}: agent {:.1} µs, proxy's own {:.1} µs", agent / 1e3, truth / 1e3);
    assert!(
        (agent - truth).abs() <= tolerance,
        "{what}: agent {agent:.0} ns vs the proxy's own {truth:.0} ns (tolerance {tolerance:.0})"
    );
}

/// Counts exact; ≥ 99 % of proxied requests attributed and no more than
/// were proxied; overhead p50/p95 and upstream p50 close to the proxy's.
fn check(bmf: &serde_json::Value, logged: &[Logged]) {
    let proxied: Vec<&Logged> = logged.iter().filter(|l| !l.calls.is_empty()).collect();
    let calls: usize = logged.iter().map(|l| l.calls.len()).sum();
    assert_eq!(bmf_value(bmf, "requests/count", "count"), logged.len() as f64);
    assert_eq!(bmf_value(bmf, "upstream/calls", "count"), calls as f64);
    let attributed = bmf_value(bmf, "requests/proxied", "count");
    eprintln!("proxied: agent {attributed}, proxy's own {}", proxied.len());
    assert!(
        attributed >= 0.99 * proxied.len() as f64 && attributed <= proxied.len() as f64,
        "requests/proxied {attributed}: the proxy made calls for {} of {} requests",
        proxied.len(),
        logged.len()
    );
    let mut overhead: Vec<u64> = proxied.iter().map(|l| l.overhead(false)).collect();
    let mut upstream: Vec<u64> =
        logged.iter().flat_map(|l| l.calls.iter().map(|c| c[2] - c[0])).collect();
    for p in [50.0, 95.0] {
        let agent = bmf_value(bmf, &format!("overhead/latency_p{p}"), "latency");
        assert_close(&format!("overhead p{p}"), agent, percentile(&mut overhead, p));
    }
    let agent = bmf_value(bmf, "upstream/latency_p50", "latency");
    assert_close("upstream p50", agent, percentile(&mut upstream, 50.0));
    print_measurement_error(bmf, &proxied);
}

/// Not compared, printed to tell measurement from attribution: the
/// overhead the proxy would log stamping its writes after they return (as
/// it did before), the time its writes take to return, and the latency.
fn print_measurement_error(bmf: &serde_json::Value, proxied: &[&Logged]) {
    let mut stamped_after: Vec<u64> = proxied.iter().map(|l| l.overhead(true)).collect();
    let mut writes: Vec<u64> = proxied
        .iter()
        .flat_map(|l| {
            std::iter::once(l.done - l.writing).chain(l.calls.iter().map(|c| c[1] - c[0]))
        })
        .collect();
    let mut latency: Vec<u64> = proxied.iter().map(|l| l.writing - l.read).collect();
    for p in [50.0, 95.0] {
        eprintln!(
            "p{p}: overhead stamping writes after they return {:.1} µs; a write's return {:.1} µs",
            percentile(&mut stamped_after, p) / 1e3,
            percentile(&mut writes, p) / 1e3
        );
        let agent = bmf_value(bmf, &format!("latency/p{p}"), "latency");
        eprintln!(
            "latency p{p} (all requests): agent {:.1} µs, proxy's own (proxied) {:.1} µs",
            agent / 1e3,
            percentile(&mut latency, p) / 1e3
        );
    }
}

/// 12 clients, a pool large enough for all: one call per request.
#[test]
fn pooled_proxy_under_12_clients() {
    let Some(_serial) = privileged() else { return };
    let load = Load { path: "/", requests: 4_000, connections: 12 };
    let (bmf, logged) = measure("proxy-async-12", 16, &[load]);
    check(&bmf, &logged);
}

/// 12 clients through a pool of 3: the wait for a pooled connection is the
/// proxy's own time, and overhead says so.
#[test]
fn pool_smaller_than_concurrency() {
    let Some(_serial) = privileged() else { return };
    let load = Load { path: "/", requests: 2_000, connections: 12 };
    let (bmf, logged) = measure("proxy-async-pool3", 3, &[load]);
    check(&bmf, &logged);
}

/// Requests with one call, two calls one after the other, and none, at the
/// same time over 14 connections.
#[test]
fn paths_with_two_calls_and_without_upstream() {
    let Some(_serial) = privileged() else { return };
    let loads = [
        Load { path: "/", requests: 2_000, connections: 8 },
        Load { path: "/two", requests: 600, connections: 3 },
        Load { path: "/local", requests: 1_500, connections: 3 },
    ];
    let (bmf, logged) = measure("proxy-async-mixed", 16, &loads);
    check(&bmf, &logged);
}
