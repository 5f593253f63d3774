//! Privileged tests of which kernel hooks the agent keeps attached: none
//! that runs for every system call of the machine in the default mode, and
//! the read-side syscall hooks of `--health-path`/`--ready-path` only until
//! the milestones they serve are reached. Ground truth: the kernel's own
//! list of the programs the agent holds (`common::bpf::program_names_held_by`).

mod common;

use std::{collections::BTreeSet, io::Write as _, net::TcpStream, time::Duration};

use common::{bpf::program_names_held_by, *};

fn syscall_hooks(names: &BTreeSet<String>) -> Vec<&String> {
    names.iter().filter(|n| n.starts_with("sys_enter") || n.starts_with("sys_exit")).collect()
}

fn get(addr: &str, path: &str) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // One write: `write!` on the stream would send each piece of the format
    // separately, and a request line split across reads has no path in the
    // first read (the one the agent matches).
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}

/// The default mode attaches the socket and memory programs, no syscall
/// tracepoint (which would tax every system call of every process) and no
/// `sched_switch` (which would run on every context switch of the machine).
#[test]
fn default_mode_attaches_no_syscall_hook() {
    let Some(_serial) = privileged() else { return };
    let target = Target::start("demo-server", &[]);
    let pid = target.pid.to_string();
    let agent = Agent::spawn(&["attach", "--pid", &pid, "--duration", "3"]);
    agent.wait_attached();
    let names = program_names_held_by(agent.pid);
    let r = agent.wait(Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("programs held: {names:?}");
    // The check can fail: the programs it looks for are there.
    for expected in ["sock_recv_lengt", "tcp_sendmsg_loc", "rss_stat"] {
        assert!(names.contains(expected), "{expected} missing from {names:?}");
    }
    assert!(syscall_hooks(&names).is_empty(), "syscall hooks in the default mode: {names:?}");
    // Nor a program on every context switch: CPU time comes from the
    // target's process CPU clock; `sched_switch` is profiling's alone.
    assert!(!names.contains("sched_switch"), "sched_switch in the default mode: {names:?}");
}

/// With `--health-path` and `--ready-path` the read-side syscall hooks are
/// attached until a 2xx response to each path has been seen, then detached
/// while the agent keeps running, and the milestones are still reported.
#[test]
fn read_hooks_are_detached_once_startup_completed() {
    let Some(_serial) = privileged() else { return };
    let out = out_path("hooks-detach");
    let server = fixture("demo-server");
    let agent = Agent::spawn(&[
        "run",
        "--duration",
        "4",
        "--health-path",
        "/health",
        "--ready-path",
        "/ready",
        "--out",
        out.to_str().unwrap(),
        "--",
        server.to_str().unwrap(),
    ]);
    let ready = agent.expect_stdout_line("ready");
    let addr = ready_field(&ready, "addr").expect("addr in ready line");
    let agent_pid = agent.pid;
    get(&addr, "/health");
    let attached = syscall_hooks(&program_names_held_by(agent_pid)).len();
    assert_eq!(attached, 4, "read hooks while /ready is awaited");
    get(&addr, "/ready");
    let detached = wait_until(Duration::from_secs(2), || {
        syscall_hooks(&program_names_held_by(agent_pid)).is_empty()
    });
    let left = program_names_held_by(agent_pid);
    get(&addr, "/"); // the agent still counts requests after the detach
    let r = agent.wait(Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(detached, "read hooks still attached after both milestones: {left:?}\n{}", r.stdout);
    let bmf = read_bmf(&out);
    let healthy = bmf_value(&bmf, "startup/to_healthy", "latency");
    let ready = bmf_value(&bmf, "startup/to_ready", "latency");
    assert!(healthy > 0.0 && ready >= healthy, "healthy {healthy} ns, ready {ready} ns");
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 3.0);
}
