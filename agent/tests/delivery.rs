//! Privileged end-to-end tests of where a request's time goes (issue 14):
//! queue, app, drain and delivered time from the kernel's own events,
//! compared with what the clients and fixtures measured themselves.

mod common;

use std::time::Duration;

use common::*;

const MS: f64 = 1e6;

/// Every test here measures with the delivery hooks on (opt-in).
const DELIVERY: &[&str] = &["--delivery"];

/// Head and body in two writes without TCP_NODELAY, 5 ms of work: each
/// response waits for the client's delayed ACK before Nagle sends the body.
/// The server's app time stays ~5 ms; delivered matches the client.
#[test]
fn nagle_and_delayed_ack_land_in_drain_and_are_diagnosed() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("two-write-server", &["--work-ms", "5"]);
    let url = format!("http://{}/", server.addr());
    let mut load = None;
    let (bmf, summary) = measure_during_with(server.pid, "nagle", DELIVERY, || {
        load = Some(http_load(&url, &["--requests", "200", "--connections", "2"]));
    });
    let load = load.unwrap();
    assert_eq!(load.requests, 200);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 200.0);
    assert_eq!(deliveries_in_summary(&summary), 200, "{summary}");
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

/// Deliveries counted in the summary's whole-run row.
fn deliveries_in_summary(summary: &str) -> u64 {
    let row = summary.lines().find(|l| l.starts_with("run ")).expect("a whole-run row");
    row.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The same server with TCP_NODELAY: nothing waits after the last write,
/// delivered ≈ app, and no diagnosis. A second server without TCP_NODELAY,
/// not the target, is loaded at the same time: none of its stalled
/// responses may show up.
#[test]
fn with_nodelay_delivered_is_app_time_and_nothing_is_diagnosed() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("two-write-server", &["--work-ms", "5", "--nodelay"]);
    let decoy = Target::start("two-write-server", &["--work-ms", "5"]);
    let url = format!("http://{}/", server.addr());
    let decoy_url = format!("http://{}/", decoy.addr());
    let mut load = None;
    let (bmf, summary) = measure_during_with(server.pid, "nodelay", DELIVERY, || {
        let other = std::thread::spawn(move || {
            http_load(&decoy_url, &["--requests", "60", "--connections", "2"])
        });
        load = Some(http_load(&url, &["--requests", "200", "--connections", "2"]));
        assert_eq!(other.join().unwrap().requests, 60);
    });
    assert_eq!(load.unwrap().requests, 200);
    assert_eq!(deliveries_in_summary(&summary), 200, "{summary}");
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 200.0);
    let app = bmf_value(&bmf, "latency/p50", "latency");
    let delivered = bmf_value(&bmf, "latency/delivered_p50", "latency");
    assert!(
        (delivered - app).abs() <= 0.5 * MS,
        "delivered p50 {delivered} ns vs app p50 {app} ns (±0.5 ms)"
    );
    assert!(!summary.contains("diagnosis"), "unexpected diagnosis in:\n{summary}");
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `stream`,
/// keeping bytes past it in `buf`; returns when its last byte is read.
fn read_response(stream: &mut std::net::TcpStream, buf: &mut Vec<u8>) {
    use std::io::Read as _;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("numeric Content-Length"))
                .expect("a Content-Length");
            let total = head_end + 4 + length;
            if buf.len() >= total {
                buf.drain(..total);
                return;
            }
        }
        let n = stream.read(&mut chunk).expect("reading a response");
        assert!(n > 0, "server closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Percentile `p` (0..1) of `v`, numpy's linear interpolation.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = p * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// A single-threaded server doing 2 ms per request, 8 concurrent keep-alive
/// clients: requests queue in the kernel; the queue time matches what the
/// server logs itself (client send time in the path → its first read).
#[test]
fn single_threaded_server_queue_matches_its_own_log_and_is_diagnosed() {
    use std::io::Write as _;
    let Some(_serial) = privileged() else { return };
    let mut server = Target::start("single-thread-server", &["--work-ms", "2"]);
    let addr = server.addr();
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 40;
    let (bmf, summary) = measure_during_with(server.pid, "queue", DELIVERY, || {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
                    let mut buf = Vec::new();
                    for _ in 0..PER_CLIENT {
                        let req = format!("GET /?sent={} HTTP/1.1\r\nHost: t\r\n\r\n", unix_ns());
                        s.write_all(req.as_bytes()).expect("send");
                        read_response(&mut s, &mut buf);
                    }
                })
            })
            .collect();
        clients.into_iter().for_each(|c| c.join().expect("client"));
    });
    let total = CLIENTS * PER_CLIENT;
    let mut logged: Vec<f64> = (0..total)
        .map(|_| server.expect_line("queue_ns=")["queue_ns=".len()..].parse().unwrap())
        .collect();
    let own_p50 = percentile(&mut logged, 0.5);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), total as f64);
    let queue = bmf_value(&bmf, "latency/queue_p50", "latency");
    assert!(
        (queue - own_p50).abs() <= 0.2 * own_p50,
        "queue p50 {queue} ns vs the server's own log {own_p50} ns (±20 %)"
    );
    assert!(own_p50 > 4.0 * MS, "requests hardly queued ({own_p50} ns): no test");
    assert!(
        summary.lines().any(|l| l.starts_with("diagnosis") && l.contains("receive queue")),
        "no queueing diagnosis in:\n{summary}"
    );
}

/// A client with a small receive buffer reading 1 MiB responses slowly: the
/// server's write returns long before the client has the last byte, so the
/// time is drain, not app; the drain matches the client's own measure (its
/// last read minus the server's logged end of write), and the diagnosis
/// names slow readers.
/// Responses of 1 MiB the client reads slowly: through a 32 KiB receive
/// buffer, 16 KiB every 2 ms. `close`: a new connection per request with
/// `Connection: close` (the server closes right after its write returns,
/// while most of the body is still unsent). Returns the client's
/// last-byte times (unix ns) and the agent's BMF and summary.
fn slow_reader_run(
    server: &Target,
    test: &str,
    responses: usize,
    close: bool,
) -> (Vec<f64>, serde_json::Value, String) {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsRawFd as _;
    let addr = server.addr();
    let mut last_read = Vec::new();
    let connect = || {
        let s = std::net::TcpStream::connect(&addr).expect("connect");
        let rcvbuf: libc::c_int = 32 * 1024;
        // SAFETY: a valid socket and an int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const rcvbuf).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        s
    };
    let (bmf, summary) = measure_during_with(server.pid, test, DELIVERY, || {
        let mut kept = None;
        let mut chunk = vec![0u8; 16 * 1024];
        for _ in 0..responses {
            let s = if close { kept.insert(connect()) } else { kept.get_or_insert_with(connect) };
            let request: &[u8] = if close {
                b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            } else {
                b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
            };
            s.write_all(request).expect("send");
            // Head, then the body 16 KiB at a time with 2 ms between reads.
            let mut got = 0usize;
            let mut want = usize::MAX;
            let mut head = Vec::new();
            while got < want {
                let n = s.read(&mut chunk).expect("read");
                assert!(n > 0, "server closed");
                if want == usize::MAX {
                    head.extend_from_slice(&chunk[..n]);
                    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        want = end + 4 + (1 << 20);
                    }
                }
                got += n;
                std::thread::sleep(Duration::from_millis(2));
            }
            last_read.push(unix_ns() as f64);
        }
    });
    (last_read, bmf, summary)
}

/// The client's drain per response (its last byte read − the server's
/// `written_ns`), median.
fn clients_drain_p50(server: &mut Target, last_read: &[f64]) -> f64 {
    let mut drains: Vec<f64> = last_read
        .iter()
        .map(|t| {
            t - server.expect_line("written_ns=")["written_ns=".len()..].parse::<f64>().unwrap()
        })
        .collect();
    percentile(&mut drains, 0.5)
}

#[test]
fn slow_reader_time_is_drain_and_matches_the_clients_measure() {
    let Some(_serial) = privileged() else { return };
    let mut server = Target::start("bulk-server", &["--body-bytes", "1048576"]);
    const RESPONSES: usize = 20;
    let (last_read, bmf, summary) = slow_reader_run(&server, "slow-reader", RESPONSES, false);
    let own_p50 = clients_drain_p50(&mut server, &last_read);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), RESPONSES as f64);
    let drain = bmf_value(&bmf, "latency/drain_p50", "latency");
    let app = bmf_value(&bmf, "latency/p50", "latency");
    assert!(drain > 5.0 * app, "drain p50 {drain} ns not ≫ app p50 {app} ns");
    assert!(
        (drain - own_p50).abs() <= 0.1 * own_p50,
        "drain p50 {drain} ns vs the client's own {own_p50} ns (±10 %)"
    );
    assert!(
        summary.lines().any(|l| l.starts_with("diagnosis") && l.contains("slow")),
        "no slow-reader diagnosis in:\n{summary}"
    );
}

/// The same slow reader, but the server closes each connection right after
/// its write: the last ACKs arrive after its FIN (in FIN_WAIT1, where
/// `tcp_probe` no longer fires), so each drain ends when the FIN is
/// acknowledged (`inet_sock_set_state` → FIN_WAIT2). Every response is
/// delivered, with the client's drain.
#[test]
fn a_response_still_draining_at_close_ends_when_the_fin_is_acknowledged() {
    let Some(_serial) = privileged() else { return };
    let mut server = Target::start("bulk-server", &["--body-bytes", "1048576"]);
    const RESPONSES: usize = 10;
    let (last_read, bmf, summary) = slow_reader_run(&server, "drain-at-close", RESPONSES, true);
    let own_p50 = clients_drain_p50(&mut server, &last_read);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), RESPONSES as f64);
    assert_eq!(deliveries_in_summary(&summary), RESPONSES as u64, "{summary}");
    let drain = bmf_value(&bmf, "latency/drain_p50", "latency");
    assert!(
        (drain - own_p50).abs() <= 0.1 * own_p50,
        "drain p50 {drain} ns vs the client's own {own_p50} ns (±10 %)"
    );
}

/// `ListenOverflows` of TcpExt in `/proc/net/netstat` (this namespace).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "ListenOverflows").unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// `burst` clients connecting at once to `addr`, each sending when its
/// connect returned and reading the whole response.
fn connect_burst(addr: &str, burst: usize) {
    use std::io::{Read as _, Write as _};
    let clients: Vec<_> = (0..burst)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).expect("connect");
                let req = format!("GET /?connected={} HTTP/1.0\r\n\r\n", unix_ns());
                s.write_all(req.as_bytes()).expect("send");
                let mut response = Vec::new();
                s.read_to_end(&mut response).expect("response");
                assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
            })
        })
        .collect();
    clients.into_iter().for_each(|c| c.join().expect("client"));
}

/// A server that sleeps 20 ms before each accept, backlog 8, and a burst
/// of 8 connections (within the backlog): accept wait matches the server's
/// own log (accept returned − the client's connect returned) and is
/// diagnosed; nothing overflowed.
#[test]
fn accept_wait_matches_the_servers_own_log() {
    let Some(_serial) = privileged() else { return };
    let mut server =
        Target::start("slow-accept-server", &["--backlog", "8", "--accept-sleep-ms", "20"]);
    let addr = server.addr();
    const BURST: usize = 8;
    let overflows_before = listen_overflows();
    let (bmf, summary) =
        measure_during_with(server.pid, "accept", DELIVERY, || connect_burst(&addr, BURST));
    assert_eq!(listen_overflows(), overflows_before, "the burst overflowed: no test");
    let mut logged: Vec<f64> = (0..BURST)
        .map(|_| server.expect_line("accept_wait_ns=")["accept_wait_ns=".len()..].parse().unwrap())
        .collect();
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), BURST as f64);
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        let own = percentile(&mut logged, p);
        let agent = bmf_value(&bmf, &format!("latency/accept_wait_{name}"), "latency");
        assert!(
            (agent - own).abs() <= 0.1 * own,
            "accept wait {name} {agent} ns vs the server's own log {own} ns (±10 %)"
        );
    }
    assert_eq!(bmf_value(&bmf, "tcp/listen_overflows", "count"), 0.0);
    assert!(
        summary.lines().any(|l| l.starts_with("diagnosis") && l.contains("accepted")),
        "no accept diagnosis in:\n{summary}"
    );
    assert!(!summary.contains("receive queue"), "accept wait taken for queueing:\n{summary}");
}

/// The same server and a burst of 24 over its backlog of 8: the handshakes
/// the kernel dropped are counted, equal to its own ListenOverflows.
#[test]
fn listen_overflows_are_counted_when_a_burst_exceeds_the_backlog() {
    let Some(_serial) = privileged() else { return };
    let server =
        Target::start("slow-accept-server", &["--backlog", "8", "--accept-sleep-ms", "20"]);
    let addr = server.addr();
    const BURST: usize = 24;
    let overflows_before = listen_overflows();
    let (bmf, summary) =
        measure_during_with(server.pid, "overflow", DELIVERY, || connect_burst(&addr, BURST));
    let overflows = listen_overflows() - overflows_before;
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), BURST as f64);
    assert!(overflows > 0, "a burst of {BURST} over a backlog of 8 overflowed nothing");
    assert_eq!(bmf_value(&bmf, "tcp/listen_overflows", "count"), overflows as f64);
    assert!(summary.contains("listen overflows"), "no overflow line in:\n{summary}");
}
