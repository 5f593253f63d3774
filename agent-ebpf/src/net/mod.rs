//! Requests at the socket level: which connections are the target's, where
//! each request starts and ends, and how long it waited on upstream calls.
//! User-space twin: `agent/src/probes/net.rs`; definitions: `docs/metrics.md`.
//!
//! Hooks (no kprobes; none fires per system call in the default mode):
//! - [`tcp_state`]: `inet_sock_set_state` (BTF tracepoint, `(const struct
//!   sock *sk, int oldstate, int newstate)`): LISTEN in the target (its
//!   ports), SYN_RECV→ESTABLISHED on one of its ports (an inbound
//!   connection), →SYN_SENT in the target (an outbound one), →FIN_WAIT1,
//!   →LAST_ACK and →CLOSE (the end); `tcp_receive_reset` /
//!   `tcp_send_reset` (BTF tracepoints): errors.
//! - [`conn`]: `tcp_rcv_space_adjust` (BTF tracepoint, `(struct sock
//!   *sk)`): each socket buffer a TCP read copies, in the reader's context
//!   (no run for reads that return nothing, nor for other protocols);
//!   `tcp_sendmsg_locked` (BTF tracepoint, TCP sends only, per chunk, in the
//!   sender's context, before the copy): every TCP write, and where the
//!   first bytes of a response are (`msg->msg_iter`, [`buffers`]), for its
//!   HTTP status line. The connection's state is the socket's own storage
//!   (`CONNS`, `BPF_MAP_TYPE_SK_STORAGE`), reached from the BTF-typed `sk`
//!   without a hash lookup.
//! - [`buffers`]: with `--health-path`/`--ready-path` only,
//!   `syscalls:sys_enter_{read,recvfrom,readv,recvmsg}`: where a request's
//!   first bytes land, for its path; user space detaches them once the
//!   milestones they serve are reached (they tax every system call of the
//!   machine while attached).
//!
//! A request (inbound) is: first read with data → first write (TTFB) → last
//! write before the next read with data, or before the close. Reads that
//! return nothing (EAGAIN, as an event loop makes when a socket has nothing
//! left) run no program. Completed requests and upstream calls go to user
//! space through [`ring`], a per-CPU event ring that user space maps and
//! drains every interval (`agent/src/event_ring.rs`): no wake-ups, no lock,
//! no shared cache line. [`http`] parses status lines and request paths.

mod buffers;
mod conn;
// Queue and drain time (issue 14): sk_data_ready, tcp_probe, tcp_retransmit_skb.
mod delivery;
mod http;
mod ring;
mod tcp_state;

use crate::config;
use agent_common::{Milestones, NetStats};
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray},
};

#[map]
static NET_STATS: PerCpuArray<NetStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static MILESTONES: Array<Milestones> = Array::with_max_entries(1, 0);

#[inline(always)]
fn stats() -> Option<&'static mut NetStats> {
    NET_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Counts a failed hash-map insert (`NetStats::inserts_failed`).
#[inline(always)]
fn insert_failed() {
    if let Some(s) = stats() {
        s.inserts_failed += 1;
    }
}

#[inline(always)]
fn milestones() -> Option<&'static mut Milestones> {
    MILESTONES.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Whether the kernel credits upstream time to inbound requests
/// (`THREAD_INBOUND`, `UPSTREAM_WAIT`): in node mode only, once a target
/// was seen talking to an upstream (`Milestones::outbound_seen`).
/// `attach` and `run` match calls to requests in user space
/// (`agent/src/requests/attribution/`), which is right where a thread
/// serves many requests at once (async proxies) and costs the kernel
/// nothing; node mode, which keeps no request log, still uses the
/// kernel's per-thread rule. `target_set()` is a load-time constant: the
/// verifier drops this code from the one-target modes.
#[inline(always)]
fn credits_upstreams() -> bool {
    config::target_set() && milestones().is_some_and(|m| m.outbound_seen != 0)
}
