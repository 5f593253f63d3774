//! Reliability under load: many concurrent connections, short-lived
//! connections, a full event ring, two agents on one target (see
//! docs/reliability.md for what was run, at what scale, and the numbers;
//! faults and hostile input are in `reliability.rs`).
//!
//! Every test is bounded (well under 60 s on a 2-core VM), uses loopback only,
//! and cleans up its processes on failure too: fixtures are `Target`s and
//! agents `Agent`s, killed on drop.

mod common;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use common::{
    Agent, LoadResult, Target, bmf_value, http_load, out_path, privileged, read_bmf,
    summary_number, tcp_table,
};

/// Raises RLIMIT_NOFILE of this process (children inherit it) to `n`, or as
/// far as the hard limit allows without CAP_SYS_RESOURCE; returns the limit.
fn raise_nofile(n: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: valid pointers.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return n;
    }
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: valid pointer; raising the soft limit to the hard one is allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    eprintln!(
        "\n*** RLIMIT_NOFILE cannot go above its hard limit {} here (no CAP_SYS_RESOURCE): \
         scaling down (docs/reliability.md) ***\n",
        lim.rlim_max
    );
    lim.rlim_max
}

// ---------------------------------------------------------------------------
// Load: many connections, short-lived connections, a full event ring
// ---------------------------------------------------------------------------

/// Opens `n` connections to `ports` from 4 threads, sends one request on
/// each and reads its response; returns the open connections.
fn open_and_request(ports: &[u16], n: usize) -> Vec<TcpStream> {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    const RESPONSE_LEN: usize = 40;
    let threads = 4;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ports = ports.to_vec();
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                for i in (t..n).step_by(threads) {
                    let port = ports[i % ports.len()];
                    let s = TcpStream::connect(("127.0.0.1", port))
                        .unwrap_or_else(|e| panic!("connection {i} to port {port}: {e}"));
                    conns.push(s);
                }
                for s in &mut conns {
                    s.write_all(REQUEST).expect("request");
                }
                let mut buf = [0u8; RESPONSE_LEN];
                for s in &mut conns {
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    s.read_exact(&mut buf).expect("response");
                    assert!(buf.starts_with(b"HTTP/1.1 200"));
                }
                conns
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect()
}

fn start_conn_holder(args: &[&str]) -> (Target, Vec<u16>) {
    let holder = Target::start("conn-holder", args);
    let ports: Vec<u16> = common::ready_field(&holder.ready, "ports")
        .expect("ports=")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    (holder, ports)
}

/// The agent on `pid`, sampling every `interval_ms`, writing its BMF file
/// to `out`.
fn attach_with_interval(pid: &str, interval_ms: &str, out: &Path) -> Agent {
    Agent::spawn(&[
        "attach",
        "--pid",
        pid,
        "--interval",
        interval_ms,
        "--out",
        out.to_str().unwrap(),
    ])
}

/// 50 000 connections open at once, one request each: every connection
/// tracked, every request counted exactly, nothing dropped, agent memory
/// bounded.
#[test]
fn fifty_thousand_concurrent_connections_are_counted_exactly() {
    let Some(_serial) = privileged() else { return };
    // The test holds the client ends, conn-holder the server ends: each
    // process needs one descriptor per connection.
    let limit = raise_nofile(50_000 + 2_000);
    let n = 50_000.min(limit as usize - 2_000);
    let (holder, ports) = start_conn_holder(&["--ports", "4", "--backlog", "4096"]);
    let out = out_path("rel-50k");
    let pid = holder.pid.to_string();
    let agent = attach_with_interval(&pid, "200", &out);
    agent.wait_attached();
    let t = Instant::now();
    let conns = open_and_request(&ports, n);
    let took = t.elapsed();
    assert!(agent.alive(), "the agent died under load:\n{}", agent.stderr());
    agent.signal(libc::SIGINT); // stop while every connection is still open
    let ended = agent.wait(Duration::from_secs(30));
    drop(conns);
    eprintln!(
        "{n} concurrent connections opened and served in {} ms; agent peak RSS {:.1} MiB",
        took.as_millis(),
        ended.max_rss as f64 / (1 << 20) as f64
    );
    eprintln!("{}", ended.stdout);
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    let bmf = read_bmf(&out);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), n as f64);
    assert_eq!(bmf_value(&bmf, "agent/dropped_events", "count"), 0.0);
    assert_eq!(summary_number(&ended.stdout, "connections:", " inbound"), n as u64);
    assert!(ended.max_rss < 128 << 20, "agent peak RSS {} bytes", ended.max_rss);
    // The next test must not run under this one's teardown.
    drop(holder);
    tcp_table::wait_torn_down(&ports, Duration::from_secs(60));
}

/// 100 000 connections at once, more than the old connection table held
/// (65 536): per-connection state is socket storage, bounded by kernel
/// memory, not a map size, so every one is tracked and nothing is dropped.
/// The server sockets wait in conn-holder's accept queues (established,
/// no descriptor needed: this VM's hard descriptor limit is 20 000); the
/// client closes its end at once (an orphan in FIN_WAIT2, no descriptor
/// either), which leaves the server end in CLOSE_WAIT: still a live,
/// tracked connection.
///
/// Dropped events: under this storm (~1 M TCP state changes in ~2 s, in
/// process context and in softirq on two CPUs) the kernel sometimes skips
/// `inet_sock_set_state` because it is already running on that CPU (a
/// recursion miss; 0 in 9 runs of 12, 246–456 in the other 3, each soon
/// after the 50 000-connection test; the agent counts them as dropped
/// events, as it must: it cannot tell a skipped transition it would have
/// ignored from one it needed). So the test holds the agent to what a miss
/// could cost, every connection tracked, and allows misses of that program
/// only, at most 1 % of the connections; any other loss (ring, storage,
/// rejected events) fails it. It also waits for an earlier test's sockets
/// to be torn down before it starts, and for its own before it ends.
#[test]
fn hundred_thousand_concurrent_connections_are_all_tracked() {
    let Some(_serial) = privileged() else { return };
    const N: usize = 100_000;
    let waited = tcp_table::wait_torn_down(&[], Duration::from_secs(60));
    eprintln!("waited {} ms for an earlier teardown", waited.as_millis());
    let somaxconn: usize =
        fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    let ports = (N / somaxconn + 2).to_string();
    let backlog = somaxconn.to_string();
    let (holder, ports) =
        start_conn_holder(&["--ports", &ports, "--backlog", &backlog, "--accept-max", "0"]);
    let out = out_path("rel-100k-concurrent");
    let pid = holder.pid.to_string();
    let agent = attach_with_interval(&pid, "200", &out);
    agent.wait_attached();
    let t = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let ports = ports.clone();
            std::thread::spawn(move || {
                for i in (t..N).step_by(4) {
                    let port = ports[i % ports.len()];
                    drop(
                        TcpStream::connect(("127.0.0.1", port))
                            .unwrap_or_else(|e| panic!("connection {i} to port {port}: {e}")),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    // Ground truth: the server ends the kernel holds for conn-holder
    // (CLOSE_WAIT, state 08 in /proc/net/tcp), counted before the agent stops.
    let held = tcp_table::count_local(&ports, tcp_table::CLOSE_WAIT);
    assert!(agent.alive(), "the agent died holding {N} connections:\n{}", agent.stderr());
    agent.signal(libc::SIGINT);
    let ended = agent.wait(Duration::from_secs(30));
    let bmf = read_bmf(&out);
    let dropped = bmf_value(&bmf, "agent/dropped_events", "count");
    let inbound = summary_number(&ended.stdout, "connections:", " inbound");
    eprintln!(
        "{N} connections held at once (opened in {} ms, {held} in CLOSE_WAIT): {inbound} \
         tracked, {dropped} dropped events; agent peak RSS {:.1} MiB",
        took.as_millis(),
        ended.max_rss as f64 / (1 << 20) as f64
    );
    eprintln!("{}", ended.stdout);
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    assert_eq!(held, N as u64, "the kernel holds every server end");
    assert_eq!(inbound, N as u64, "every connection tracked: no table to overflow");
    let misses = inet_sock_set_state_misses(&ended.stdout);
    assert_eq!(dropped, misses as f64, "losses other than recursion misses:\n{}", ended.stdout);
    assert!(misses <= N as u64 / 100, "{misses} recursion misses");
    assert!(ended.max_rss < 128 << 20, "agent peak RSS {} bytes", ended.max_rss);
    drop(holder);
    let waited = tcp_table::wait_torn_down(&ports, Duration::from_secs(60));
    eprintln!("{N} connections torn down in {} ms", waited.as_millis());
}

/// Recursion misses of `inet_sock_set_state` in a summary's `dropped:` line
/// (absent when nothing was dropped), 0 if none.
fn inet_sock_set_state_misses(stdout: &str) -> u64 {
    let Some(line) = stdout.lines().find(|l| l.trim_start().starts_with("dropped:")) else {
        return 0;
    };
    let misses = line.split("recursion misses: ").nth(1).unwrap_or("");
    misses
        .split(", ")
        .find_map(|m| m.strip_prefix("inet_sock_set_state "))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// Short-lived connections (one request each, the server closing first):
/// every one counted, none dropped, agent memory bounded. CI runs 100 000;
/// the 1 000 000 run is `#[ignore]`d (see docs/reliability.md for both).
fn short_lived_connections(n: u64) {
    let target = Target::start("demo-server", &[]);
    let url = format!("http://{}/", target.addr());
    let out = out_path(&format!("rel-short-{n}"));
    let pid = target.pid.to_string();
    let agent = Agent::spawn(&["attach", "--pid", &pid, "--out", out.to_str().unwrap()]);
    agent.wait_attached();
    let n_s = n.to_string();
    let load: LoadResult = http_load(
        &url,
        &["--requests", &n_s, "--connections", "4", "--new-connection-per-request"],
    );
    agent.signal(libc::SIGINT);
    let ended = agent.wait(Duration::from_secs(60));
    eprintln!(
        "{n} short-lived connections in {:.1} s ({:.0}/s); agent peak RSS {:.1} MiB",
        load.elapsed_ns as f64 / 1e9,
        n as f64 / (load.elapsed_ns as f64 / 1e9),
        ended.max_rss as f64 / (1 << 20) as f64
    );
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    assert_eq!(load.requests, n);
    let bmf = read_bmf(&out);
    // The summary says where a request went missing (losses, connections
    // untracked, in flight): CI saw 99,999 of 100,000 once.
    let counted = bmf_value(&bmf, "requests/count", "count");
    assert_eq!(counted, n as f64, "summary:\n{}\nstderr:\n{}", ended.stdout, ended.stderr);
    assert_eq!(bmf_value(&bmf, "agent/dropped_events", "count"), 0.0);
    assert_eq!(summary_number(&ended.stdout, "connections:", " inbound"), n, "{}", ended.stdout);
    // Bounded whatever n: the request log folds requests into histograms
    // (issue 13's goal: 30 MiB after 10 M requests).
    let bound = 30 << 20;
    assert!(ended.max_rss < bound, "agent peak RSS {} > {bound} bytes", ended.max_rss);
}

#[test]
fn hundred_thousand_short_lived_connections_are_counted_exactly() {
    let Some(_serial) = privileged() else { return };
    short_lived_connections(100_000);
}

#[test]
#[ignore = "1 000 000 connections take minutes on a 2-core VM: run by hand (docs/reliability.md)"]
fn million_short_lived_connections_are_counted_exactly() {
    let Some(_serial) = privileged() else { return };
    short_lived_connections(1_000_000);
}

/// The event ring saturated on purpose (drained only at the end with
/// `--interval 60000`; each CPU's part holds its slots less a margin of 16,
/// 16 368 events on a 2-CPU machine): the overflow is counted as dropped,
/// printed and written; counted + dropped is exactly what the client sent;
/// no more is counted than the ring holds; the agent keeps running.
#[test]
fn full_event_ring_drops_are_counted_and_the_agent_keeps_running() {
    let Some(_serial) = privileged() else { return };
    const N: u64 = 120_000;
    let target = Target::start("demo-server", &[]);
    let url = format!("http://{}/", target.addr());
    let out = out_path("rel-event-ring");
    let pid = target.pid.to_string();
    let agent = attach_with_interval(&pid, "60000", &out);
    agent.wait_attached();
    let load = http_load(&url, &["--requests", &N.to_string(), "--connections", "4"]);
    assert!(agent.alive(), "the agent died with its event ring full:\n{}", agent.stderr());
    agent.signal(libc::SIGINT);
    let ended = agent.wait(Duration::from_secs(30));
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    let bmf = read_bmf(&out);
    let requests = bmf_value(&bmf, "requests/count", "count");
    let dropped = bmf_value(&bmf, "agent/dropped_events", "count");
    eprintln!(
        "{N} keep-alive requests in {:.1} s: {requests} counted, {dropped} dropped",
        load.elapsed_ns as f64 / 1e9
    );
    assert!(dropped > 0.0, "the event ring cannot hold {N} events");
    assert_eq!(requests + dropped, N as f64, "counted + dropped = sent");
    let (ncpus, shift) = perf_agent::probes::net::event_ring_shape().unwrap();
    let capacity = f64::from(ncpus) * ((1u64 << shift) - agent_common::EVENT_RING_MARGIN) as f64;
    // (+ at most one request per connection reported at the end, AT_END,
    // from the connection table rather than the ring)
    assert!(requests <= capacity + 4.0, "{requests} counted, the ring holds {capacity}");
    assert!(ended.stdout.contains(&format!("dropped events {dropped}")), "{}", ended.stdout);
}

/// Two agents on the same target at once: both work, both count every
/// request.
#[test]
fn two_agents_on_one_target_both_count_every_request() {
    let Some(_serial) = privileged() else { return };
    let target = Target::start("demo-server", &[]);
    let url = format!("http://{}/", target.addr());
    let pid = target.pid.to_string();
    let outs = [out_path("rel-two-a"), out_path("rel-two-b")];
    let agents: Vec<Agent> = outs
        .iter()
        .map(|o| Agent::spawn(&["attach", "--pid", &pid, "--out", o.to_str().unwrap()]))
        .collect();
    for a in &agents {
        a.wait_attached();
    }
    let keep_alive = http_load(&url, &["--requests", "3000", "--connections", "4"]);
    let fresh = http_load(
        &url,
        &["--requests", "1000", "--connections", "2", "--new-connection-per-request"],
    );
    let sent = (keep_alive.requests + fresh.requests) as f64;
    for a in &agents {
        a.signal(libc::SIGINT);
    }
    for (a, out) in agents.into_iter().zip(&outs) {
        let ended = a.wait(Duration::from_secs(10));
        assert_eq!(ended.code, 0, "{}", ended.stderr);
        let bmf = read_bmf(out);
        assert_eq!(bmf_value(&bmf, "requests/count", "count"), sent);
        assert_eq!(bmf_value(&bmf, "agent/dropped_events", "count"), 0.0);
    }
}
