//! Privileged tests of which kernel hooks the agent keeps attached: none
//! that runs for every system call of the machine in the default mode, and
//! the read-side syscall hooks of `--health-path`/`--ready-path` only until
//! the milestones they serve are reached. Ground truth: the kernel's own
//! list of the programs the agent holds (`/proc/PID/fdinfo`, then
//! `bpf_prog_info.name` through the bpf syscall).

mod common;

use std::{collections::BTreeSet, io::Write as _, net::TcpStream, time::Duration};

use common::*;

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `bpf_prog_info.name` of program `id` (15 bytes at most, as the kernel
/// keeps it), or `None` once it is gone.
fn program_name(id: u32) -> Option<String> {
    // `union bpf_attr` for BPF_PROG_GET_FD_BY_ID: prog_id, next_id, open_flags.
    let attr: [u32; 3] = [id, 0, 0];
    // SAFETY: a valid attr of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, attr.as_ptr(), 12) };
    if fd < 0 {
        return None;
    }
    // `struct bpf_prog_info` up to `name` (offset 64, 16 bytes).
    let mut info = [0u8; 80];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr { bpf_fd: fd as u32, info_len: 80, info: info.as_mut_ptr() as u64 };
    // SAFETY: `info` outlives the call and is `info_len` bytes.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr, size_of::<InfoAttr>())
    };
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd as i32) };
    if rc < 0 {
        return None;
    }
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Names of the programs process `pid` holds (by program or link
/// descriptor: each one's fdinfo names its `prog_id`).
fn programs_held_by(pid: u32) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo").flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("prog_id:") {
                ids.insert(id.trim().parse::<u32>().expect("prog_id"));
            }
        }
    }
    ids.into_iter().filter_map(program_name).collect()
}

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

/// The default mode attaches the socket and scheduler programs and no
/// syscall tracepoint (which would tax every system call of every process).
#[test]
fn default_mode_attaches_no_syscall_hook() {
    let Some(_serial) = privileged() else { return };
    let target = Target::start("demo-server", &[]);
    let pid = target.pid.to_string();
    let mut agent = Agent::spawn(&["attach", "--pid", &pid, "--duration", "3"]);
    agent.wait_attached();
    let names = programs_held_by(agent.child.id());
    let r = agent.finish();
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("programs held: {names:?}");
    // The check can fail: the programs it looks for are there.
    for expected in ["sock_recv_lengt", "sock_send_lengt", "tcp_sendmsg_loc", "sched_switch"] {
        assert!(names.contains(expected), "{expected} missing from {names:?}");
    }
    assert!(syscall_hooks(&names).is_empty(), "syscall hooks in the default mode: {names:?}");
}

/// With `--health-path` and `--ready-path` the read-side syscall hooks are
/// attached until a 2xx response to each path has been seen, then detached
/// while the agent keeps running, and the milestones are still reported.
#[test]
fn read_hooks_are_detached_once_startup_completed() {
    let Some(_serial) = privileged() else { return };
    let out = out_path("hooks-detach");
    let server = fixture("demo-server");
    let mut agent = Agent::spawn(&[
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
    let agent_pid = agent.child.id();
    get(&addr, "/health");
    let attached = syscall_hooks(&programs_held_by(agent_pid)).len();
    assert_eq!(attached, 4, "read hooks while /ready is awaited");
    get(&addr, "/ready");
    let detached = wait_until(Duration::from_secs(2), || {
        syscall_hooks(&programs_held_by(agent_pid)).is_empty()
    });
    let left = programs_held_by(agent_pid);
    get(&addr, "/"); // the agent still counts requests after the detach
    let r = agent.finish();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(detached, "read hooks still attached after both milestones: {left:?}\n{}", r.stdout);
    let bmf = read_bmf(&out);
    let healthy = bmf_value(&bmf, "startup/to_healthy", "latency");
    let ready = bmf_value(&bmf, "startup/to_ready", "latency");
    assert!(healthy > 0.0 && ready >= healthy, "healthy {healthy} ns, ready {ready} ns");
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 3.0);
}
