//! Privileged end-to-end tests of startup measurement: `perf-agent run`
//! (launch mode) and `attach --wait-exec`.

mod common;

use std::{io::Write as _, net::TcpStream, time::Duration};

use common::*;

fn get(addr: &str, path: &str) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}

const MS: f64 = 1e6;

/// A server that sleeps 300 ms before listen(): to_listen in [300, 360] ms,
/// then accept, response and health in order.
#[test]
fn run_measures_startup_from_exec() {
    let Some(_serial) = privileged() else { return };
    let out = out_path("run-startup");
    let server = fixture("demo-server");
    let agent = Agent::spawn(&[
        "run",
        "--duration",
        "4",
        "--idle",
        "1",
        "--health-path",
        "/health",
        "--out",
        out.to_str().unwrap(),
        "--",
        server.to_str().unwrap(),
        "--listen-delay-ms",
        "300",
    ]);
    let ready = agent.expect_stdout_line("ready");
    let addr = ready_field(&ready, "addr").expect("addr in ready line");
    get(&addr, "/");
    get(&addr, "/health");
    let r = agent.wait(Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let bmf = read_bmf(&out);
    let to_listen = bmf_value(&bmf, "startup/to_listen", "latency");
    let to_accept = bmf_value(&bmf, "startup/to_first_accept", "latency");
    let to_healthy = bmf_value(&bmf, "startup/to_healthy", "latency");
    let to_ready = bmf_value(&bmf, "startup/to_ready", "latency");
    eprintln!("listen {to_listen} accept {to_accept} healthy {to_healthy} ready {to_ready}");
    assert!((300.0 * MS..=360.0 * MS).contains(&to_listen), "to_listen {to_listen} ns");
    assert!(to_accept >= to_listen, "accept before listen");
    assert!(to_healthy >= to_accept, "healthy before accept");
    assert!(to_ready >= to_accept && to_ready <= to_healthy, "ready = first 2xx (the / request)");
    let size = bmf_value(&bmf, "binary/size", "file-size");
    assert_eq!(size, std::fs::metadata(&server).unwrap().len() as f64);
    assert!(bmf_value(&bmf, "memory/idle_rss", "memory") > 0.0);
    bmf_value(&bmf, "cpu/idle_percent", "cpu-percent");
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 2.0);
    assert_faults_equal_proc(&r.stdout);
}

/// Launch mode: the ground truth starts at the exec too (read at the exec
/// stop), so the agent's fault counts equal `/proc`'s exactly, minor and
/// major, in the summary's ground-truth table.
fn assert_faults_equal_proc(summary: &str) {
    let row = |name: &str| -> Vec<String> {
        let line = summary
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{summary}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    // memory/page_faults  AGENT  TRUTH min+majflt  [diff]
    let total = row("memory/page_faults");
    assert!(total[1].parse::<u64>().unwrap() > 10, "{summary}");
    assert_eq!(total[1], total[2], "agent vs /proc page faults:\n{summary}");
    // "  minor / major"  A / B  C / D
    let split = row("  minor / major");
    assert_eq!(split[3..6], split[6..9], "minor / major:\n{summary}");
}

/// A target that exits with status 3 before listening: the agent says so,
/// exits non-zero (5) and still writes what it measured.
#[test]
fn run_reports_a_target_that_exits_during_startup() {
    let Some(_serial) = privileged() else { return };
    let out = out_path("run-exit");
    let server = fixture("demo-server");
    let r = run_agent(&[
        "run",
        "--out",
        out.to_str().unwrap(),
        "--",
        server.to_str().unwrap(),
        "--listen-delay-ms",
        "100",
        "--exit-before-listen",
        "3",
    ]);
    assert_eq!(r.code, 5, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("exited during startup"), "{}", r.stderr);
    assert!(r.stderr.contains("exited with status 3"), "{}", r.stderr);
    let bmf = read_bmf(&out);
    assert_eq!(bmf_value(&bmf, "agent/partial", "count"), 1.0);
    assert!(bmf.get("startup/to_listen").is_none(), "it never listened");
    // It ran ~100 ms: its CPU and memory were still measured.
    assert!(bmf_value(&bmf, "memory/peak_rss", "memory") > 0.0);
}

/// `attach --wait-exec NAME` follows the next process that execs NAME, from
/// its exec.
#[test]
fn wait_exec_follows_the_next_matching_exec() {
    let Some(_serial) = privileged() else { return };
    let out = out_path("wait-exec");
    let agent = Agent::spawn(&[
        "attach",
        "--wait-exec",
        "demo-server",
        "--duration",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    agent.expect_stderr("waiting for the next exec");
    // Something else first: must not be picked.
    let _other = Target::start("cpu-burner", &["--threads", "1", "--late-threads", "0"]);
    let server = Target::start("demo-server", &["--listen-delay-ms", "200"]);
    get(&server.addr(), "/");
    let r = agent.wait(Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&format!("pid {}", server.pid)), "{}", r.stdout);
    let bmf = read_bmf(&out);
    let to_listen = bmf_value(&bmf, "startup/to_listen", "latency");
    assert!((200.0 * MS..=260.0 * MS).contains(&to_listen), "to_listen {to_listen}");
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 1.0);
}
