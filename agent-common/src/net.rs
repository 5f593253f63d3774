//! Requests and upstream calls at the socket level (`agent-ebpf/src/net/`):
//! per-connection state, the event ring, loss counters and the startup
//! milestones.

use crate::add_u64_fields;

/// TCP connection direction, as seen from the target.
pub mod direction {
    /// Accepted by the target: requests come in on it.
    pub const INBOUND: u32 = 1;
    /// Opened by the target (`connect`): its upstream calls go out on it.
    pub const OUTBOUND: u32 = 2;
}

/// Where a connection is in its request/response exchange.
///
/// Inbound: `REQUEST` while the target reads a request, `RESPONSE` once it
/// writes; the next read with data after a write starts the next request
/// (HTTP/1.1 keep-alive). Outbound: the same with roles swapped (the target
/// writes the call, then reads the upstream's response).
pub mod phase {
    pub const IDLE: u32 = 0;
    pub const REQUEST: u32 = 1;
    pub const RESPONSE: u32 = 2;
}

/// Flags of [`ConnState`] and [`NetEvent`].
pub mod conn_flags {
    /// The connection existed before attach: inbound when its local port is
    /// one the target listens on, else as its first operation seen says (a
    /// server reads first, a client writes first).
    pub const ADOPTED: u32 = 1;
    /// A TCP reset was sent or received on the connection.
    pub const RESET: u32 = 2;
    /// The event was completed by user space at the end of the run.
    pub const AT_END: u32 = 4;
    /// The request's path is `PathMatch::health` / `PathMatch::ready`.
    pub const PATH_HEALTH: u32 = 8;
    pub const PATH_READY: u32 = 16;
    /// Delivery events (`event_kind::DELIVERY`) only: the request's first
    /// bytes were seen arriving (`sk_data_ready`), so its queue time is known.
    pub const QUEUE_KNOWN: u32 = 64;
    /// Delivery events only: the response's last bytes were held back by
    /// Nagle (a sub-MSS tail, everything sent already unacknowledged) until
    /// the peer's ACK released them.
    pub const NAGLE_HELD: u32 = 128;
    /// Delivery events only: the peer's receive window held back a
    /// response's bytes (less than one MSS free with data waiting).
    pub const WINDOW_HELD: u32 = 256;
    /// Delivery events only: the connection's first request, whose
    /// `status` field carries the accept wait in µs (handshake complete →
    /// first read, its bytes already waiting).
    pub const ACCEPT_KNOWN: u32 = 512;
    /// The flags proper: bits 0..10 (the delivery flags above reach bit
    /// 9). Bits 10..32 hold the tgid of the connection's owner (the process
    /// that listens on its port, connected it, or was seen using it first
    /// when adopted), so node mode can tell whose request an event is: 22
    /// bits, and `pid_max` is at most 2^22 (`PID_MAX_LIMIT`), so every tgid
    /// fits. Delivery events carry the owner in the same bits.
    pub const MASK: u32 = 0x3ff;
    pub const OWNER_SHIFT: u32 = 10;

    /// The owner's tgid in a [`ConnState::flags`](super::ConnState) /
    /// [`NetEvent::flags`](super::NetEvent) word.
    pub const fn owner(flags: u32) -> u32 {
        flags >> OWNER_SHIFT
    }

    // Every flag lies inside MASK: none may reach the owner's bits.
    const _: () = assert!(
        (ADOPTED
            | RESET
            | AT_END
            | PATH_HEALTH
            | PATH_READY
            | QUEUE_KNOWN
            | NAGLE_HELD
            | WINDOW_HELD
            | ACCEPT_KNOWN)
            & !MASK
            == 0
    );
}

/// Per-connection state (map `CONNS`, socket-local storage: the kernel
/// keeps it with the `struct sock` and frees it with the socket).
///
/// Per socket, not fd: an fd number reused for a new connection is a new
/// socket, and the state is reset whenever its socket is (re)established, so
/// no stale state survives into another connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// First byte of the current request read (inbound) / call sent (outbound).
    pub start_ns: u64,
    /// First byte of the response written (inbound) / read (outbound).
    pub first_response_ns: u64,
    /// Last byte of the response so far.
    pub last_response_ns: u64,
    /// The socket's kernel address: with `seq`, names the inbound request
    /// under way in `UPSTREAM_WAIT` (and tells a socket seen through two fds
    /// apart at the end of a run).
    pub sk: u64,
    /// Outbound: up to when the call's time was already credited to its parent.
    pub credited_until_ns: u64,
    /// Bytes the exchange's sends copy at most (see `tcp_sendmsg_locked`).
    /// Reads are not counted: the receive hook (`tcp_rcv_space_adjust`)
    /// does not see a read's length.
    pub bytes_out: u64,
    /// Outbound: the inbound connection (sock address) the call serves.
    pub parent_sk: u64,
    /// Inbound: user address of the first bytes of the response being
    /// sent, when `tcp_sendmsg_locked` could not read its status line
    /// there before the copy (a page the target never touched, such as a
    /// constant response in its executable, is not mapped yet); read again
    /// at the next chunk or at the end of the exchange, in the target's
    /// context. 0 otherwise.
    pub response_buf: u64,
    /// Inbound: requests started on this connection; outbound: the parent's
    /// request number when the call started.
    pub seq: u32,
    pub parent_seq: u32,
    pub direction: u32,
    pub phase: u32,
    /// HTTP status read from the first response bytes, 0 if none.
    pub status: u32,
    pub flags: u32,
    // Delivery (issue 14, `agent-ebpf/src/net/delivery.rs`): where a
    // request's time goes outside the application.
    /// Inbound: when the first unread byte arrived (`sk_data_ready` while
    /// no request was being read), 0 when none is waiting.
    pub arrived_ns: u64,
    /// Inbound: when the current request's first byte arrived (0: unknown).
    pub queue_start_ns: u64,
    /// Inbound: when the peer last acknowledged everything written so far.
    pub acked_ns: u64,
    /// A finished request whose response is not acknowledged yet: its
    /// arrival, first read and last write (0: none pending).
    pub pend_queue_ns: u64,
    pub pend_start_ns: u64,
    pub pend_end_ns: u64,
    /// `write_seq` after the pending response's last byte.
    pub pend_seq: u32,
    pub pend_flags: u32,
    pub pend_retransmits: u32,
    pub pend_held_us: u32,
    /// The current response's retransmitted segments (`tcp_retransmit_skb`).
    pub retransmits: u32,
    /// µs the current response's last bytes waited for an ACK (Nagle).
    pub held_us: u32,
    /// `conn_flags::{QUEUE_KNOWN, NAGLE_HELD, WINDOW_HELD, ACCEPT_KNOWN}`
    /// of the current request.
    pub delivery_flags: u32,
    /// µs from the handshake's completion to the first read of the
    /// connection's first request (`ACCEPT_KNOWN`), and the pending one's.
    pub accept_wait_us: u32,
    pub pend_accept_wait_us: u32,
    /// Inbound: the `write_seq` the current response reaches once its
    /// latest send is copied, noted before each chunk's copy
    /// (`tcp_sendmsg_locked`: `write_seq` + `msg_iter.count`): the
    /// response is acknowledged when an ACK covers it, not merely the
    /// bytes copied so far.
    pub sent_end_seq: u32,
    /// Inbound: when the handshake completed (SYN_RECV→ESTABLISHED); 0
    /// once the connection's first request was read.
    pub established_ns: u64,
}

/// Kinds of [`NetEvent`].
pub mod event_kind {
    /// A request served on an inbound connection.
    pub const REQUEST: u32 = 1;
    /// A call the target made on an outbound connection.
    pub const UPSTREAM_CALL: u32 = 2;
    /// A request's response fully acknowledged by the peer (issue 14):
    /// `start_ns` = its first byte's arrival (`flags & QUEUE_KNOWN`, else
    /// the first read), `first_response_ns` = the first read,
    /// `upstream_ns` = the last write, `end_ns` = the ACK of the last
    /// byte, `bytes_in` = segments retransmitted, `bytes_out` = µs held
    /// back by Nagle waiting for an ACK, `status` = the accept wait in µs
    /// (with `conn_flags::ACCEPT_KNOWN`); `seq` is the request's.
    pub const DELIVERY: u32 = 3;
}

/// A finished request or upstream call (one [`EventSlot`] of `NET_EVENTS`).
/// 56 bytes, so that with its commit word a slot is one 64-byte cache line:
/// the producer's cost per event is mostly the first write to that line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEvent {
    pub start_ns: u64,
    pub first_response_ns: u64,
    pub end_ns: u64,
    pub upstream_ns: u64,
    /// Requests and calls: 0 (the receive hook does not see a read's
    /// length); deliveries: see [`event_kind::DELIVERY`].
    pub bytes_in: u32,
    /// Requests and calls: bytes the exchange's sends copy at most,
    /// saturating at `u32::MAX`.
    pub bytes_out: u32,
    pub kind: u32,
    pub status: u32,
    pub flags: u32,
    pub seq: u32,
}

/// One slot of the per-CPU event ring `NET_EVENTS`: an mmapable `ARRAY` of
/// `ncpus << EVENT_RING_SHIFT` slots, CPU `c` owning slots
/// `c << shift .. (c + 1) << shift`, written in order of
/// [`EventRingPos::head`].
///
/// Why not a `BPF_MAP_TYPE_RINGBUF`: its reserve takes a spin lock with
/// interrupts off and shares one producer position between all CPUs; on the
/// reference VM a reserve + submit costs ~270 ns, more than the rest of the
/// request bookkeeping together. A slot here costs one atomic add on a
/// CPU-local cache line and plain stores.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSlot {
    pub event: NetEvent,
    /// `position + 1` once the event at ring position `position` is
    /// completely written; anything else means "not yet" (the value of an
    /// earlier lap, or 0). Written last by the producer, read first by the
    /// consumer.
    pub commit: u64,
}

/// Producer and consumer positions of one CPU's part of the event ring (map
/// `NET_EVENTS_POS`, an mmapable `ARRAY` indexed by CPU). Both only grow;
/// the slot of position `p` is `p & (slots_per_cpu - 1)`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventRingPos {
    /// Next position to reserve: advanced by the kernel side with an atomic
    /// add (a program can be interrupted by a softirq or preempted by
    /// another program on the same CPU, which then reserves after it).
    pub head: u64,
    /// Next position user space will read: advanced by user space only
    /// after it copied the events before it. The kernel side does not
    /// reserve past `tail + slots_per_cpu - EVENT_RING_MARGIN`.
    pub tail: u64,
    /// A cache line per CPU: no two CPUs write the same line.
    pub _pad: [u64; 6],
}

/// Slots a producer keeps free below a full ring: room for the programs
/// that can nest on one CPU between its fullness check and its reservation.
pub const EVENT_RING_MARGIN: u64 = 16;

/// An inbound request: its connection's socket address and request number.
/// Value of `THREAD_INBOUND` (key: tid; an upstream call started on a thread
/// serves the request that thread was handling) and key of `UPSTREAM_WAIT`
/// (ns the request waited on upstream calls).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParentRef {
    pub sk: u64,
    pub seq: u32,
    pub _pad: u32,
}

/// Per-CPU counters of the network probes (map `NET_STATS`): what was seen,
/// and every way an event can be lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Event ring of this CPU full: the event is lost (and counted).
    pub events_dropped: u64,
    /// A connection's socket storage could not be created (kernel memory):
    /// the connection is not tracked (and counted).
    pub conns_untracked: u64,
    /// An insert into an LRU hash map failed (`THREAD_INBOUND`,
    /// `UPSTREAM_WAIT`, `READ_BUF`): a parent or a path is missed.
    pub inserts_failed: u64,
    pub inbound_conns: u64,
    pub outbound_conns: u64,
    /// Connections first seen mid-life (opened before attach).
    pub adopted_conns: u64,
    /// TCP resets (sent or received) on inbound connections: errors of the
    /// target's own requests.
    pub inbound_resets: u64,
    /// TCP resets on the target's upstream connections.
    pub outbound_resets: u64,
    /// Send chunks (`tcp_sendmsg_locked`: one per send up to ~64 KiB) on an
    /// inbound connection with no request read before them (a greeting, or
    /// a response already under way at attach).
    pub unmatched_writes: u64,
    /// Delivery events (issue 14) lost to a ring more than half full: the
    /// request itself is not lost, only its queue/drain numbers. Not in
    /// [`NetStats::lost`].
    pub deliveries_dropped: u64,
}

impl NetStats {
    /// Adds `other` field by field (another CPU's counters): see
    /// [`add_u64_fields`]; a new field cannot be forgotten.
    pub fn accumulate(&mut self, other: &NetStats) {
        // SAFETY: `NetStats` is `repr(C)` and all `u64` (asserted below).
        unsafe { add_u64_fields(self, other) }
    }

    /// Everything lost: events, untracked connections, failed inserts.
    pub fn lost(&self) -> u64 {
        self.events_dropped + self.conns_untracked + self.inserts_failed
    }
}

/// First occurrences, for startup (map `MILESTONES`, one-slot `ARRAY`):
/// CLOCK_MONOTONIC ns, 0 until seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Milestones {
    /// The first socket of the target entering LISTEN.
    pub first_listen_ns: u64,
    /// The first connection accepted on one of its listening ports.
    pub first_accept_ns: u64,
    /// The first response byte written on an inbound connection.
    pub first_response_ns: u64,
    pub first_listen_port: u32,
    /// 1 once the target has a connection of its own to an upstream. Until
    /// then inbound requests do not record which thread serves them (a hash
    /// update per request, needed only to credit upstream waits).
    pub outbound_seen: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], integers only, no padding (asserted below).
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::NetEvent {}
    unsafe impl aya::Pod for super::EventSlot {}
    unsafe impl aya::Pod for super::EventRingPos {}
    unsafe impl aya::Pod for super::ParentRef {}
    unsafe impl aya::Pod for super::NetStats {}
    unsafe impl aya::Pod for super::Milestones {}
}

// No padding: sizes equal the sum of field sizes.
const _: () = assert!(core::mem::size_of::<ConnState>() == 15 * 8 + 16 * 4);
const _: () = assert!(core::mem::size_of::<NetEvent>() == 4 * 8 + 6 * 4);
const _: () = assert!(core::mem::size_of::<EventSlot>() == 64);
const _: () = assert!(core::mem::size_of::<EventRingPos>() == 64);
const _: () = assert!(core::mem::size_of::<ParentRef>() == 16);
// Ten fields, all u64 (`NetStats::accumulate` relies on it).
const _: () = assert!(core::mem::size_of::<NetStats>() == 10 * 8);
const _: () = assert!(core::mem::align_of::<NetStats>() == 8);
const _: () = assert!(core::mem::size_of::<Milestones>() == 4 * 8);
