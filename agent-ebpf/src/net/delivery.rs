//! Where a request's time goes outside the application (issue 14): how long
//! its first bytes waited in the receive queue before the target read them
//! (queue), and how long its response took, after the last write, until
//! the peer acknowledged its last byte (drain). User-space twin:
//! `agent/src/probes/delivery.rs`; definitions: `docs/metrics.md#delivery`.
//!
//! Hooks (BTF tracepoints, softirq context, every socket of the machine):
//! `sk_data_ready` (data became readable), `tcp_probe` (an incoming segment
//! on an established socket, before its ACK is processed),
//! `tcp_retransmit_skb`. Each starts with one socket-storage lookup
//! *without create*: only the target's sockets have storage, so any other
//! socket costs that lookup and nothing else. `conn.rs` calls
//! [`request_started`] and [`request_finished`] around each request, and
//! [`response_chunk`] before each chunk of its response is copied.
//!
//! Sequence numbers come from the `tcp_sock` (`bpf_skc_to_tcp_sock` gives a
//! BTF-typed pointer: the `struct sock *` cannot be loaded beyond `struct
//! sock`) and the segment's control block, with plain loads at offsets user
//! space found in BTF; where only the socket's address is at hand
//! (`request_finished`), through `bpf_probe_read_kernel`.

use core::ffi::c_void;

use agent_common::{ConnState, NetEvent, conn_flags, direction, event_kind, phase};
use aya_ebpf::{
    helpers::generated::bpf_skc_to_tcp_sock, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use super::{
    conn::{self, Sock},
    now,
    ring::{emit_event, saturate},
};
use crate::{
    access::{load_field, put, read_const, read_field},
    config::offset,
};

/// 1 with `--delivery`, set by user space before load; see
/// `agent_common::globals::DELIVERY`.
#[unsafe(no_mangle)]
static DELIVERY: u32 = 0;

/// True with `--delivery` (a constant to the verifier, which prunes the
/// bookkeeping below from the socket programs when it is off).
#[inline(always)]
pub(super) fn enabled() -> bool {
    *read_const(&DELIVERY) != 0
}

/// `a` is at or after `b` in sequence space (RFC 1982, as the kernel's `after`).
#[inline(always)]
fn after_eq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// A `u32` field of the `tcp_sock` at address `sk`.
#[inline(always)]
fn tcp_field(sk: u64, offset: usize) -> Option<u32> {
    read_field::<u32>(sk, offset)
}

/// The first unread bytes of a request arrived: noted when no request is
/// being read (the bytes of one being read are not a new arrival).
#[btf_tracepoint(function = "sk_data_ready")]
pub fn sk_data_ready(ctx: BtfTracePointContext) -> i32 {
    let sk: Sock = ctx.arg(0);
    let Some(c) = conn::conn(sk) else { return 0 };
    if c.direction == direction::INBOUND && c.phase != phase::REQUEST && c.arrived_ns == 0 {
        c.arrived_ns = now();
    }
    0
}

/// An incoming segment on an established socket, before its ACK is
/// processed: the pending response's drain ends when the ACK covers its last
/// byte; the current response notes when everything written so far is
/// acknowledged, and what held its bytes back.
#[btf_tracepoint(function = "tcp_probe")]
pub fn tcp_probe(ctx: BtfTracePointContext) -> i32 {
    let sk: Sock = ctx.arg(0);
    let Some(c) = conn::conn(sk) else { return 0 };
    if c.direction != direction::INBOUND {
        return 0;
    }
    let pending = c.pend_end_ns != 0;
    let current = c.phase == phase::RESPONSE && c.acked_ns < c.last_response_ns;
    if !pending && !current {
        return 0;
    }
    let skb: *const u8 = ctx.arg(1);
    // SAFETY: `skb` is the tracepoint's BTF-typed `struct sk_buff *`, the
    // offset that of `((struct tcp_skb_cb *)skb->cb)->ack_seq` (BTF), inside
    // `cb`: a plain load the verifier checks against the struct.
    let ack = unsafe { load_field::<u32>(skb, offset!(skb_ack_seq)) };
    let t = now();
    if pending && after_eq(ack, c.pend_seq) {
        emit_pending(c, t);
    }
    if current {
        // A BTF-typed `tcp_sock *` for plain loads (NULL: not TCP).
        let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as *const u8;
        if !tp.is_null() {
            note_ack(c, tp, ack, t);
        }
    }
    0
}

/// The current response: everything written acknowledged at `t`, or bytes
/// still unsent that Nagle or the peer's window held back. `tp` is the
/// connection's BTF-typed `tcp_sock`.
#[inline(always)]
fn note_ack(c: &mut ConnState, tp: *const u8, ack: u32, t: u64) {
    // SAFETY (the loads): `tp` is a BTF-typed `struct tcp_sock *`, the
    // offsets its fields' (from BTF).
    // Everything the current send will have copied, not just what it has
    // copied so far: an ACK processed while a send waits for buffer space
    // (the socket lock released mid-copy) covers `write_seq` without
    // covering the response.
    if after_eq(ack, c.sent_end_seq) {
        c.acked_ns = t;
        return;
    }
    let write_seq = unsafe { load_field::<u32>(tp, offset!(tcp_write_seq)) };
    let snd_nxt = unsafe { load_field::<u32>(tp, offset!(tcp_snd_nxt)) };
    let snd_wnd = unsafe { load_field::<u32>(tp, offset!(tcp_snd_wnd)) };
    let mss = unsafe { load_field::<u32>(tp, offset!(tcp_mss_cache)) };
    let unsent = write_seq.wrapping_sub(snd_nxt);
    if unsent == 0 || unsent > (1 << 30) {
        return;
    }
    if ack == snd_nxt && unsent < mss && unsent <= snd_wnd {
        // All that was sent is acknowledged and a sub-MSS tail the window
        // allows is still unsent: Nagle held it for this ACK, which
        // releases it now.
        c.delivery_flags |= conn_flags::NAGLE_HELD;
        if t > c.last_response_ns {
            let held = (t - c.last_response_ns) / 1000;
            c.held_us = c.held_us.saturating_add(saturate(held));
        }
    } else if snd_wnd < mss {
        c.delivery_flags |= conn_flags::WINDOW_HELD;
    }
}

/// The target's FIN was acknowledged on `sk` (FIN_WAIT1→FIN_WAIT2): the
/// pending response, written before it, is delivered. Takes the socket,
/// not its state: without `--delivery` not even the lookup is made.
#[inline(always)]
pub(super) fn fin_acked(sk: Sock) {
    if !enabled() {
        return;
    }
    let Some(c) = conn::conn(sk) else { return };
    if c.direction == direction::INBOUND && c.pend_end_ns != 0 {
        emit_pending(c, now());
    }
}

/// The connection's owner tgid as it sits in `ConnState::flags` (node
/// mode tells targets' deliveries apart by it, as their requests).
#[inline(always)]
fn owner_bits(c: &ConnState) -> u32 {
    c.flags & !conn_flags::MASK
}

/// Sends the delivery of the pending response, fully acknowledged at `t`.
#[inline(always)]
fn emit_pending(c: &mut ConnState, t: u64) {
    let start = c.pend_start_ns;
    let queue = if c.pend_flags & conn_flags::QUEUE_KNOWN != 0 { c.pend_queue_ns } else { start };
    emit_event(&NetEvent {
        start_ns: queue,
        first_response_ns: start,
        end_ns: t,
        upstream_ns: c.pend_end_ns,
        bytes_in: c.pend_retransmits,
        bytes_out: c.pend_held_us,
        kind: event_kind::DELIVERY,
        status: c.pend_accept_wait_us,
        flags: c.pend_flags | owner_bits(c),
        seq: 0,
    });
    put(&mut c.pend_end_ns, 0);
}

/// A segment of a target's connection was retransmitted: counted on the
/// response it belongs to (the pending one while there is one).
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk: Sock = ctx.arg(0);
    let Some(c) = conn::conn(sk) else { return 0 };
    if c.direction != direction::INBOUND {
        return 0;
    }
    if c.pend_end_ns != 0 {
        c.pend_retransmits = c.pend_retransmits.saturating_add(1);
    } else {
        c.retransmits = c.retransmits.saturating_add(1);
    }
    0
}

/// A chunk of the response under way on inbound connection `c` is about to
/// be copied (`tcp_sendmsg_locked`, before the copy: `write_seq` does not
/// count it yet): notes where the send will end, `write_seq` + the bytes
/// the send has left (`msg_iter.count`). Exact once a send returns whole;
/// a send cut short (non-blocking, buffer full) overshoots until the
/// target sends the rest, whose first chunk notes it again.
#[inline(always)]
pub(super) fn response_chunk(c: &mut ConnState, sk: Sock, msg: *const u8) {
    if !enabled() {
        return;
    }
    // A BTF-typed `tcp_sock *` for a plain load (NULL: not TCP).
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as *const u8;
    if tp.is_null() {
        return;
    }
    // SAFETY: `tp` is a BTF-typed `struct tcp_sock *`, `msg` the
    // tracepoint's BTF-typed `struct msghdr *`; the offsets are their
    // fields' (from BTF).
    let write_seq = unsafe { load_field::<u32>(tp, offset!(tcp_write_seq)) };
    let left = unsafe { load_field::<u64>(msg, offset!(msg_iter_count)) };
    c.sent_end_seq = write_seq.wrapping_add(left as u32);
}

/// A request's first read on inbound connection `c`: its bytes arrived at
/// `arrived_ns` when `sk_data_ready` saw them.
#[inline(always)]
pub(super) fn request_started(c: &mut ConnState) {
    if !enabled() {
        return;
    }
    c.queue_start_ns = c.arrived_ns;
    put(&mut c.arrived_ns, 0);
    c.delivery_flags = if c.queue_start_ns != 0 { conn_flags::QUEUE_KNOWN } else { 0 };
    // The connection's first request, its bytes already there when read:
    // accept returned at most this long after the handshake.
    if c.established_ns != 0 {
        if c.queue_start_ns != 0 && c.start_ns >= c.established_ns {
            c.accept_wait_us = saturate((c.start_ns - c.established_ns) / 1000);
            c.delivery_flags |= conn_flags::ACCEPT_KNOWN;
        }
        put(&mut c.established_ns, 0);
    }
    put(&mut c.acked_ns, 0);
    put(&mut c.retransmits, 0);
    put(&mut c.held_us, 0);
}

/// A connection to one of the target's listening ports completed its
/// handshake (`inet_sock_set_state` SYN_RECV→ESTABLISHED, softirq): the
/// start of its accept wait.
#[inline(always)]
pub(super) fn connection_established(c: &mut ConnState) {
    if !enabled() {
        return;
    }
    c.established_ns = now();
}

/// Inbound request `c` ended (its response's last write is
/// `last_response_ns`): its delivery is sent now if the peer already
/// acknowledged everything, else when `tcp_probe` sees that ACK.
#[inline(always)]
pub(super) fn request_finished(c: &mut ConnState) {
    if !enabled() {
        return;
    }
    let queue =
        if c.delivery_flags & conn_flags::QUEUE_KNOWN != 0 { c.queue_start_ns } else { c.start_ns };
    if c.acked_ns != 0 && c.acked_ns >= c.last_response_ns {
        emit_event(&NetEvent {
            start_ns: queue,
            first_response_ns: c.start_ns,
            end_ns: c.acked_ns,
            upstream_ns: c.last_response_ns,
            bytes_in: c.retransmits,
            bytes_out: c.held_us,
            kind: event_kind::DELIVERY,
            status: c.accept_wait_us,
            flags: c.delivery_flags | owner_bits(c),
            seq: c.seq,
        });
    } else if let Some(seq) = tcp_field(c.sk, offset!(tcp_write_seq)) {
        // `write_seq` now, at the exchange's end (the next request's first
        // read, or the close), when every send of the response has
        // returned: exact even after a send cut short, which
        // `sent_end_seq` may overshoot.
        // A previous pending delivery never acknowledged is replaced.
        c.pend_queue_ns = queue;
        c.pend_start_ns = c.start_ns;
        c.pend_end_ns = c.last_response_ns;
        c.pend_seq = seq;
        c.pend_flags = c.delivery_flags;
        c.pend_retransmits = c.retransmits;
        c.pend_held_us = c.held_us;
        c.pend_accept_wait_us = c.accept_wait_us;
    }
    put(&mut c.accept_wait_us, 0);
    put(&mut c.acked_ns, 0);
    put(&mut c.retransmits, 0);
    put(&mut c.held_us, 0);
    put(&mut c.delivery_flags, 0);
}
