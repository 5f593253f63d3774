//! TCP state changes and resets: which connections are the target's, when
//! they end, and which ended in error.

use agent_common::{conn_flags, direction};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use super::{
    conn::{self, IPPROTO_TCP, Sock},
    delivery, milestones, now, stats,
};
use crate::{
    access::load_field,
    config::{self, offset},
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;

/// Every TCP state change of the machine, as a BTF tracepoint: the
/// arguments and the socket's fields are plain loads, where the classic
/// tracepoint built a record and needed a helper call per field.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // The states first, loads from the context: about half of a
    // connection's transitions (SYN_RECV, the client's ESTABLISHED,
    // TIME_WAIT, CLOSE_WAIT, CLOSING, and FIN_WAIT2 without --delivery)
    // need nothing, and leave before touching the socket or a map.
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let wanted = match new {
        TCP_LISTEN | TCP_SYN_SENT | TCP_FIN_WAIT1 | TCP_LAST_ACK | TCP_CLOSE => true,
        TCP_ESTABLISHED => old == TCP_SYN_RECV,
        // Our FIN acknowledged: ends a response still draining.
        TCP_FIN_WAIT2 => delivery::enabled(),
        _ => false,
    };
    if !wanted {
        return 0;
    }
    let sk: Sock = ctx.arg(0);
    let base = sk as *const u8;
    // SAFETY (both loads): `sk` is the tracepoint's `struct sock *`
    // argument, the offsets its fields' (from BTF).
    if unsafe { load_field::<u16>(base, offset!(sock_protocol)) } != IPPROTO_TCP {
        return 0;
    }
    // The local port, host order (what the classic tracepoint calls sport).
    let local_port = || unsafe { load_field::<u16>(base, offset!(sock_num)) } as u32;
    match new {
        // listen() runs in the target's context.
        TCP_LISTEN => {
            if config::in_target() {
                listening(local_port());
            }
        }
        // Handshake done on a listening port of ours (softirq: any context).
        TCP_ESTABLISHED if old == TCP_SYN_RECV => {
            if let Some(owner) = conn::listener(local_port())
                && let Some(c) = conn::track(sk, direction::INBOUND, 0, owner)
            {
                delivery::connection_established(c);
                if let Some(s) = stats() {
                    s.inbound_conns += 1;
                }
                if let Some(m) = milestones()
                    && m.first_accept_ns == 0
                {
                    m.first_accept_ns = now();
                }
            }
        }
        // connect() runs in the target's context.
        TCP_SYN_SENT => {
            if let Some((owner, _)) = config::current_target_task()
                && conn::track(sk, direction::OUTBOUND, 0, owner).is_some()
            {
                conn::outbound_seen();
                if let Some(s) = stats() {
                    s.outbound_conns += 1;
                }
            }
        }
        // The target closes, first (FIN_WAIT1) or after its peer
        // (LAST_ACK), both in the closer's context; or the connection is
        // over (CLOSE, often in softirq): no more response bytes will
        // follow. The storage goes with the socket.
        TCP_FIN_WAIT1 | TCP_LAST_ACK | TCP_CLOSE => {
            if let Some(c) = conn::conn(sk) {
                // A status still to read needs the target's context (a
                // helper call, only then).
                let in_target = c.response_buf != 0 && config::in_target();
                conn::finish_exchange(c, in_target);
            }
        }
        // Our FIN was acknowledged, so was every byte before it: a
        // response still draining is delivered (`tcp_probe` does not see
        // segments after FIN_WAIT1).
        TCP_FIN_WAIT2 => delivery::fin_acked(sk),
        _ => {}
    }
    0
}

/// The target (node mode: the current one) listens on `port`.
#[inline(always)]
fn listening(port: u32) {
    conn::add_listen_port(port, config::current_tgid_tid().0);
    if let Some(m) = milestones()
        && m.first_listen_ns == 0
    {
        m.first_listen_ns = now();
        m.first_listen_port = port;
    }
}

#[inline(always)]
fn mark_reset(sk: Sock) {
    let Some(c) = conn::conn(sk) else { return };
    if c.flags & conn_flags::RESET == 0 {
        c.flags |= conn_flags::RESET;
        if let Some(s) = stats() {
            if c.direction == direction::INBOUND {
                s.inbound_resets += 1;
            } else {
                s.outbound_resets += 1;
            }
        }
    }
}

/// `TP_PROTO(struct sock *sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    mark_reset(ctx.arg(0));
    0
}

/// `TP_PROTO(const struct sock *sk, const struct sk_buff *skb, enum
/// sk_rst_reason reason)`; `sk` is NULL for a reset sent with no socket.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: Sock = ctx.arg(0);
    if !sk.is_null() {
        mark_reset(sk);
    }
    0
}
