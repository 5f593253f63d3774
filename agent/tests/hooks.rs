//! Privileged tests of which kernel hooks the agent keeps attached: none
//! that runs for every system call of the machine in the default mode, the
//! read-side syscall hooks of `--health-path`/`--ready-path` only until
//! the milestones they serve are reached, and the delivery hooks only with
//! `--delivery`. Ground truth: the kernel's own list of the programs the
//! agent holds (`common::bpf::program_names_held_by`) and their size after
//! the verifier.

mod common;

use std::{collections::BTreeSet, io::Write as _, net::TcpStream, time::Duration};

use common::{
    bpf::{program_names_held_by, programs_held_by},
    *,
};

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
    for expected in ["tcp_rcv_space_a", "tcp_sendmsg_loc", "rss_stat"] {
        assert!(names.contains(expected), "{expected} missing from {names:?}");
    }
    assert!(syscall_hooks(&names).is_empty(), "syscall hooks in the default mode: {names:?}");
    // Nor a program on every context switch: CPU time comes from the
    // target's process CPU clock; `sched_switch` is profiling's alone.
    assert!(!names.contains("sched_switch"), "sched_switch in the default mode: {names:?}");
}

/// Profiling's default attaches no `sched_switch` either: its off-CPU
/// ticks read the scheduler's own counters. `--runq-waits` asks for it
/// (every run-queue wait timed), and only then is it loaded, and the BMF
/// has `sched/runq_wait_p50|p99` (three busy threads on two cores wait
/// often).
#[test]
fn profiling_runs_at_context_switches_only_with_runq_waits() {
    let Some(_serial) = privileged() else { return };
    let target = Target::start("cpu-burner", &["--threads", "3", "--late-threads", "0"]);
    let pid = target.pid.to_string();
    let dir = out_path("hooks-profile").with_extension("d");
    let held = |extra: &[&str]| {
        let out = out_path(&format!("hooks-profile{}", extra.len()));
        let mut args = vec![
            "attach",
            "--pid",
            &pid,
            "--duration",
            "2",
            "--profile-dir",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let agent = Agent::spawn(&args);
        agent.wait_attached();
        let names = program_names_held_by(agent.pid);
        let r = agent.wait(Duration::from_secs(30));
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        (names, read_bmf(&out))
    };
    let (names, bmf) = held(&[]);
    // (The kernel keeps 15 bytes of a program's name.)
    assert!(names.iter().any(|n| n.starts_with("profile_cpu")), "{names:?}");
    assert!(!names.contains("sched_switch"), "sched_switch without --runq-waits: {names:?}");
    assert!(bmf.get("sched/runq_wait_p99").is_none(), "runq percentiles without their hook");
    let (names, bmf) = held(&["--runq-waits"]);
    assert!(names.contains("sched_switch"), "--runq-waits without sched_switch: {names:?}");
    assert!(bmf_value(&bmf, "sched/runq_wait_p99", "latency") >= 0.0);
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

/// The delivery hooks' kernel names (first 15 bytes).
const DELIVERY_HOOKS: [&str; 3] = ["sk_data_ready", "tcp_probe", "tcp_retransmit_"];

/// Attaches to `pid` with `extra` arguments, runs 100 keep-alive requests
/// to `url`; returns the BMF, the summary, the delivery hooks held and the
/// verified size (bytes) of the two socket programs that call the delivery
/// bookkeeping.
fn attach_with(
    pid: u32,
    url: &str,
    extra: &[&str],
) -> (serde_json::Value, String, Vec<String>, [u32; 2]) {
    let out = out_path(&format!("hooks-delivery{}", extra.len()));
    let pid = pid.to_string();
    let mut args = vec!["attach", "--pid", &pid, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let agent = Agent::spawn(&args);
    agent.wait_attached();
    let programs = programs_held_by(agent.pid);
    let load = http_load(url, &["--requests", "100", "--connections", "2"]);
    assert_eq!(load.requests, 100);
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(libc::SIGINT);
    let r = agent.wait(Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let hooks = programs
        .iter()
        .filter(|p| DELIVERY_HOOKS.contains(&p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    let size = |name: &str| programs.iter().find(|p| p.name == name).map_or(0, |p| p.xlated_len);
    let sizes = [size("tcp_rcv_space_a"), size("tcp_sendmsg_loc")];
    (read_bmf(&out), r.stdout, hooks, sizes)
}

/// Without `--delivery` the three delivery hooks are not loaded, the
/// socket programs are smaller after the verifier (the bookkeeping pruned
/// on the load-time constant) and no delivery number is reported; requests
/// are still counted exactly. With it, all three are there and so are the
/// numbers.
#[test]
fn delivery_hooks_and_bookkeeping_only_with_delivery() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("two-write-server", &["--work-ms", "1"]);
    let url = format!("http://{}/", server.addr());
    let (bmf, summary, hooks, off) = attach_with(server.pid, &url, &[]);
    assert!(hooks.is_empty(), "delivery hooks without --delivery: {hooks:?}");
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 100.0);
    let ids: Vec<&String> = bmf.as_object().unwrap().keys().collect();
    let delivery_ids: Vec<&&String> = ids
        .iter()
        .filter(|id| {
            ["latency/queue_", "latency/drain_", "latency/delivered_", "latency/accept_wait_"]
                .iter()
                .any(|p| id.starts_with(p))
                || id.starts_with("tcp/retransmits")
                || id.as_str() == "agent/dropped_deliveries"
        })
        .collect();
    assert!(delivery_ids.is_empty(), "delivery rows without --delivery: {delivery_ids:?}");
    assert!(summary.contains("run with --delivery"), "{summary}");

    let (bmf, summary, mut hooks, on) = attach_with(server.pid, &url, &["--delivery"]);
    hooks.sort_unstable();
    assert_eq!(hooks, ["sk_data_ready", "tcp_probe", "tcp_retransmit_"]);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 100.0);
    let delivered = bmf_value(&bmf, "latency/delivered_p50", "latency");
    let app = bmf_value(&bmf, "latency/p50", "latency");
    assert!(delivered >= app, "delivered p50 {delivered} ns < app p50 {app} ns");
    assert!(summary.contains("where the time goes (p50"), "{summary}");
    eprintln!("verified bytes (tcp_rcv_space_adjust, tcp_sendmsg_locked): off {off:?}, on {on:?}");
    for (i, name) in ["tcp_rcv_space_adjust", "tcp_sendmsg_locked"].iter().enumerate() {
        assert!(off[i] > 0 && off[i] < on[i], "{name}: {} bytes off vs {} on", off[i], on[i]);
    }
}
