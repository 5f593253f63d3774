//! Privileged end-to-end tests of where a request's time goes (issue 14):
//! queue, app, drain and delivered time from the kernel's own events,
//! compared with what the clients and fixtures measured themselves.

mod common;

use std::time::Duration;

use common::*;

const MS: f64 = 1e6;

/// Attaches to `pid`, runs `load` while attached, stops the agent with
/// SIGINT and returns its BMF and summary.
fn measure_during(pid: u32, test: &str, load: impl FnOnce()) -> (serde_json::Value, String) {
    let out = out_path(test);
    let agent =
        Agent::spawn(&["attach", "--pid", &pid.to_string(), "--out", out.to_str().unwrap()]);
    agent.wait_attached();
    load();
    // The last responses' ACKs and events reach the next drain.
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(libc::SIGINT);
    let result = agent.wait(Duration::from_secs(30));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    eprintln!("{}", result.stdout);
    let bmf = read_bmf(&out);
    assert_eq!(bmf_value(&bmf, "agent/dropped_events", "count"), 0.0, "events were lost");
    (bmf, result.stdout)
}

/// Head and body in two writes without TCP_NODELAY, 5 ms of work: each
/// response waits for the client's delayed ACK before Nagle sends the body.
/// The server's app time stays ~5 ms; delivered matches the client.
#[test]
fn nagle_and_delayed_ack_land_in_drain_and_are_diagnosed() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("two-write-server", &["--work-ms", "5"]);
    let url = format!("http://{}/", server.addr());
    let mut load = None;
    let (bmf, summary) = measure_during(server.pid, "nagle", || {
        load = Some(http_load(&url, &["--requests", "200", "--connections", "2"]));
    });
    let load = load.unwrap();
    assert_eq!(load.requests, 200);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 200.0);
    let app = bmf_value(&bmf, "latency/p50", "latency");
    assert!((5.0 * MS..=6.5 * MS).contains(&app), "app p50 {app} ns not in [5, 6.5] ms");
    let delivered = bmf_value(&bmf, "latency/delivered_p50", "latency");
    let tolerance = (0.05 * load.p50_ns).max(1.0 * MS);
    assert!(
        (delivered - load.p50_ns).abs() <= tolerance,
        "delivered p50 {delivered} ns vs the client's {} ns (±{tolerance})",
        load.p50_ns
    );
    assert!(load.p50_ns > app + 20.0 * MS, "no delayed-ACK stall to see: client {}", load.p50_ns);
    let drain = bmf_value(&bmf, "latency/drain_p50", "latency");
    assert!(drain > 20.0 * MS, "drain p50 {drain} ns");
    assert!(
        summary.lines().any(|l| l.starts_with("diagnosis") && l.contains("delayed ACK")),
        "no delayed-ACK diagnosis in:\n{summary}"
    );
}

/// The same server with TCP_NODELAY: nothing waits after the last write,
/// delivered ≈ app, and no diagnosis.
#[test]
fn with_nodelay_delivered_is_app_time_and_nothing_is_diagnosed() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("two-write-server", &["--work-ms", "5", "--nodelay"]);
    let url = format!("http://{}/", server.addr());
    let mut load = None;
    let (bmf, summary) = measure_during(server.pid, "nodelay", || {
        load = Some(http_load(&url, &["--requests", "200", "--connections", "2"]));
    });
    assert_eq!(load.unwrap().requests, 200);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 200.0);
    let app = bmf_value(&bmf, "latency/p50", "latency");
    let delivered = bmf_value(&bmf, "latency/delivered_p50", "latency");
    assert!(
        (delivered - app).abs() <= 0.5 * MS,
        "delivered p50 {delivered} ns vs app p50 {app} ns (±0.5 ms)"
    );
    assert!(!summary.contains("diagnosis"), "unexpected diagnosis in:\n{summary}");
}
