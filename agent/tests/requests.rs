//! Privileged end-to-end tests of request metrics: real servers and clients
//! from `fixtures/`, the agent attached from outside, numbers compared with
//! the load generator's own exact counts and the server's configured delays.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use common::*;

const MS: f64 = 1e6;

/// Keep-alive connections, responses written in 3 writes, 20 ms of server
/// delay: the count is exact and p50 lies in [20 ms, 21 ms].
#[test]
fn keep_alive_requests_are_counted_exactly_with_the_right_latency() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &["--delay-ms", "20", "--writes", "3"]);
    let url = format!("http://{}/", server.addr());
    let started = Instant::now();
    let mut load = None;
    let (bmf, _) = measure_during(server.pid, "keepalive", || {
        load = Some(http_load(&url, &["--requests", "400", "--connections", "4"]));
    });
    let wall_ns = started.elapsed().as_nanos() as f64;
    let load = load.unwrap();
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), load.requests as f64);
    assert_eq!(load.requests, 400);
    let p50 = bmf_value(&bmf, "latency/p50", "latency");
    assert!((20.0 * MS..=21.0 * MS).contains(&p50), "server p50 {p50} ns not in [20, 21] ms");
    assert!(p50 <= load.p50_ns, "server p50 {p50} above the client's {}", load.p50_ns);
    let p99 = bmf_value(&bmf, "latency/p99", "latency");
    assert!(p99 < wall_ns, "a request longer than the whole test: {p99} ns");
    let ttfb = bmf_value(&bmf, "ttfb/p50", "latency");
    assert!(ttfb >= 20.0 * MS && ttfb <= p50, "ttfb p50 {ttfb}");
    assert_eq!(bmf_value(&bmf, "errors/count", "count"), 0.0);
}

/// A new connection per request (accept, read, write, close, and the socket
/// and fd numbers reused over and over): exact count, no stale state.
#[test]
fn connection_per_request_is_counted_exactly() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &[]);
    let url = format!("http://{}/", server.addr());
    let started = Instant::now();
    let (bmf, _) = measure_during(server.pid, "per-conn", || {
        let load = http_load(
            &url,
            &["--requests", "3000", "--connections", "4", "--new-connection-per-request"],
        );
        assert_eq!(load.requests, 3000);
    });
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 3000.0);
    let p99 = bmf_value(&bmf, "latency/p99", "latency");
    assert!(p99 < started.elapsed().as_nanos() as f64, "bogus duration {p99} ns");
}

/// Lossless at full speed: 100 000 keep-alive requests as fast as the
/// machine goes; the agent's count equals the client's exactly.
#[test]
fn lossless_at_full_speed() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &[]);
    let url = format!("http://{}/", server.addr());
    let mut rate = 0.0;
    let (bmf, _) = measure_during(server.pid, "lossless", || {
        let load = http_load(&url, &["--requests", "100000", "--connections", "4"]);
        assert_eq!(load.requests, 100_000);
        rate = load.requests as f64 / (load.elapsed_ns as f64 / 1e9);
    });
    eprintln!("lossless: {rate:.0} requests/s with the agent attached");
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 100_000.0);
}

/// A proxy that adds ~1 ms of its own work in front of a 5 ms upstream:
/// inbound requests and upstream calls are kept apart, and the proxy's own
/// overhead p50 lies in [0.5 ms, 3 ms].
#[test]
fn proxy_overhead_excludes_upstream_time() {
    let Some(_serial) = privileged() else { return };
    let upstream = Target::start("demo-server", &["--delay-ms", "5"]);
    let proxy = Target::start("proxy", &["--upstream", &upstream.addr(), "--work-us", "1000"]);
    let url = format!("http://{}/", proxy.addr());
    let (bmf, _) = measure_during(proxy.pid, "proxy", || {
        let load = http_load(&url, &["--requests", "300", "--connections", "2"]);
        assert_eq!(load.requests, 300);
    });
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 300.0);
    assert_eq!(bmf_value(&bmf, "upstream/calls", "count"), 300.0);
    let overhead = bmf_value(&bmf, "overhead/latency_p50", "latency");
    assert!((0.5 * MS..=3.0 * MS).contains(&overhead), "overhead p50 {overhead} ns");
    let upstream_p50 = bmf_value(&bmf, "upstream/latency_p50", "latency");
    assert!((5.0 * MS..=6.5 * MS).contains(&upstream_p50), "upstream p50 {upstream_p50} ns");
    let latency = bmf_value(&bmf, "latency/p50", "latency");
    assert!(latency > upstream_p50 && latency < upstream_p50 + 3.0 * MS, "latency p50 {latency}");
}

/// HTTP error statuses are read from the first response bytes; a client
/// reset is an error too.
#[test]
fn status_codes_and_resets_are_errors() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &[]);
    let addr = server.addr();
    let (bmf, _) = measure_during(server.pid, "errors", || {
        http_load(
            &format!("http://{addr}/status/503"),
            &["--requests", "30", "--connections", "1"],
        );
        http_load(
            &format!("http://{addr}/status/404"),
            &["--requests", "20", "--connections", "1"],
        );
        http_load(&format!("http://{addr}/"), &["--requests", "10", "--connections", "1"]);
        // A client that resets its connection (SO_LINGER 0, then close).
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).unwrap();
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setting a socket option on our own socket.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as u32,
            )
        };
        drop(s);
    });
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 61.0);
    assert_eq!(bmf_value(&bmf, "errors/http_5xx", "count"), 30.0);
    assert_eq!(bmf_value(&bmf, "errors/http_4xx", "count"), 20.0);
    assert_eq!(bmf_value(&bmf, "errors/resets", "count"), 1.0);
    assert_eq!(bmf_value(&bmf, "errors/count", "count"), 51.0);
}

/// `requests` requests over `connections` keep-alive connections to a
/// fresh `fixture args`, whose every response is a 5xx: the agent counts
/// each and reads each one's status (`why` names how, for the message).
fn every_status_read(
    fixture: &str,
    args: &[&str],
    label: &str,
    (requests, connections): (u32, u32),
    why: &str,
) {
    let server = Target::start(fixture, args);
    let url = format!("http://{}/", server.addr());
    let (bmf, _) = measure_during(server.pid, label, || {
        let load = http_load(
            &url,
            &["--requests", &requests.to_string(), "--connections", &connections.to_string()],
        );
        assert_eq!(load.requests, u64::from(requests));
    });
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), f64::from(requests));
    assert_eq!(bmf_value(&bmf, "errors/http_5xx", "count"), f64::from(requests), "{why}");
}

/// Responses sent with `writev` (head and body in one call, as nginx sends
/// them): the kernel copies from an iovec array, and the status read
/// follows its first base. Every one of them is a 503.
#[test]
fn status_of_a_writev_response_is_read() {
    let Some(_serial) = privileged() else { return };
    let args = ["--work-ms", "0", "--nodelay", "--writev", "--status", "503"];
    every_status_read("two-write-server", &args, "writev", (50, 2), "every writev's status");
}

/// A response sent from a constant the server never read itself: before
/// the kernel's copy its page is not mapped, so `tcp_sendmsg_locked` cannot
/// read the status line then; it is read again at the end of the exchange,
/// in the server's context: at the next request's read (keep-alive), or
/// when the server closes after its client (`LAST_ACK`).
#[test]
fn status_of_a_never_touched_constant_response_is_read() {
    let Some(_serial) = privileged() else { return };
    // One request, then the client closes: the exchange ends at the
    // server's close.
    let static_503 = ["--static-503"];
    every_status_read(
        "demo-server",
        &static_503,
        "static-close",
        (1, 1),
        "the status at the close",
    );
    // A fresh server, 20 keep-alive requests: the first ends at the second's read.
    let why = "every status, the first too";
    every_status_read("demo-server", &static_503, "static-keepalive", (20, 1), why);
}

/// One keep-alive GET on `s`; the response read whole (demo-server's has a
/// `Content-Length`).
fn keep_alive_get(s: &mut TcpStream) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some(head_end) = text.find("\r\n\r\n") else { continue };
        let length = text[..head_end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string)
            })
            .map_or(0, |v| v.trim().parse::<usize>().expect("Content-Length"));
        if got.len() >= head_end + 4 + length {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            return;
        }
    }
}

/// Connections opened before attach and left idle until the programs no
/// longer adopt sockets themselves (the adoption window closed) are
/// followed all the same: user space gave them storage at attach, and
/// their first request after it completes the adoption.
#[test]
fn idle_connections_opened_before_attach_are_adopted_by_user_space() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &[]);
    let mut conns: Vec<TcpStream> =
        (0..3).map(|_| TcpStream::connect(server.addr()).expect("connect")).collect();
    for s in &mut conns {
        keep_alive_get(s);
    }
    let out = out_path("adopted-idle");
    let agent = Agent::spawn(&[
        "attach",
        "--pid",
        &server.pid.to_string(),
        "--duration",
        "6",
        "--out",
        out.to_str().unwrap(),
    ]);
    agent.wait_attached();
    let closed = wait_until(Duration::from_secs(4), || {
        bpf::array_u32_held_by(agent.pid, "ADOPTION_OPEN") == Some(0)
    });
    assert!(closed, "the adoption window is still open 4 s after attach");
    for s in &mut conns {
        for _ in 0..5 {
            keep_alive_get(s);
        }
    }
    let r = agent.wait(Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("3 opened before attach"), "{}", r.stdout);
    let bmf = read_bmf(&out);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 15.0, "{}", r.stdout);
    assert_eq!(bmf_value(&bmf, "errors/http_5xx", "count"), 0.0);
}

/// Keep-alive connections opened before attach are adopted: their requests
/// are counted from the first full request after attach, with sane
/// durations (no request older than the attach).
#[test]
fn connections_opened_before_attach_are_followed() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &["--delay-ms", "2"]);
    let url = format!("http://{}/", server.addr());
    // 2 connections, 200 requests/s for 6 s, started before the agent; the
    // agent's 1.5 s window lies inside the load however slow its attach.
    let load = std::thread::spawn(move || {
        http_load(&url, &["--requests", "1200", "--connections", "2", "--rate", "200"])
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = out_path("adopted");
    let agent_started = Instant::now();
    let r = run_agent(&[
        "attach",
        "--pid",
        &server.pid.to_string(),
        "--duration",
        "1.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    let agent_wall = agent_started.elapsed().as_nanos() as f64;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("2 opened before attach"), "{}", r.stdout);
    let load = load.join().unwrap();
    assert_eq!(load.requests, 1200);
    let bmf = read_bmf(&out);
    let count = bmf_value(&bmf, "requests/count", "count");
    // 200/s over the agent's own window (within the load): give or take
    // the requests in flight at its two edges.
    let expected = 200.0 * bmf_value(&bmf, "agent/window", "latency") / 1e9;
    assert!((count - expected).abs() <= 0.1 * expected, "count {count}, expected {expected:.0}");
    let p99 = bmf_value(&bmf, "latency/p99", "latency");
    assert!(p99 < 50.0 * MS && p99 < agent_wall, "p99 {p99} ns: stale state?");
}
