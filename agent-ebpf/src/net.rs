//! Requests at the socket level: which connections are the target's, where
//! each request starts and ends, and how long it waited on upstream calls.
//! User-space twin: `agent/src/probes/net.rs`; definitions: `docs/metrics.md`.
//!
//! Hooks (no kprobes):
//! - `inet_sock_set_state` (BTF tracepoint: `(const struct sock *sk, int
//!   oldstate, int newstate)`): LISTEN in the target (its ports),
//!   SYN_RECV→ESTABLISHED on one of its ports (an inbound connection),
//!   →SYN_SENT in the target (an outbound one), →CLOSE (the end).
//! - raw tracepoints `sock_recv_length` / `sock_send_length`
//!   (`TP_PROTO(struct sock *sk, int ret, int flags)`): every read and write
//!   on a socket, in the caller's context. Raw, because they fire for every
//!   socket call on the machine: no trace record is built, the arguments are
//!   read in place.
//! - `tcp:tcp_receive_reset` / `tcp:tcp_send_reset`: errors.
//! - `syscalls:sys_enter_{write,sendto,writev,sendmsg}`: the user buffer of a
//!   write, so the first response bytes (the HTTP status line) can be read.
//!
//! A request (inbound) is: first read with data → first write (TTFB) → last
//! write before the next read with data, or before the close. Reads that
//! return nothing (EAGAIN, as tokio does until the socket is drained) are
//! ignored. Completed requests and upstream calls go to user space through a
//! per-CPU event ring (`agent_common::EventSlot`) that user space maps and
//! drains every interval: no wake-ups, no lock, no shared cache line.

use core::intrinsics::AtomicOrdering;

use agent_common::{
    ConnState, EVENT_RING_MARGIN, EventRingPos, EventSlot, Milestones, NetEvent, NetStats,
    ParentRef, SYSCALL_ARG1_OFFSET, WriteStash, conn_flags, direction, event_kind, phase,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use crate::config::{self, EVENT_RING_SHIFT, PATH_MATCH, offset};

/// Size of [`CONNS`]; user space may raise it before load.
const MAX_CONNS: u32 = 65_536;

#[map]
static CONNS: HashMap<u64, ConnState> = HashMap::with_max_entries(MAX_CONNS, 0);
/// The target's listening ports (host byte order) → 1.
#[map]
static LISTEN_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);
#[map]
static THREAD_INBOUND: LruHashMap<u32, ParentRef> = LruHashMap::with_max_entries(16_384, 0);
/// Where the bytes of the write syscall under way on this CPU are.
#[map]
static WRITE_BUF: PerCpuArray<WriteStash> = PerCpuArray::with_max_entries(1, 0);
/// tid → user address of the buffer the thread's current read syscall fills
/// (only with `PathMatch`).
#[map]
static READ_BUF: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16_384, 0);
/// The event ring: `ncpus << EVENT_RING_SHIFT` slots (user space sets the
/// size before load and maps it); see `agent_common::EventSlot`.
#[map]
static NET_EVENTS: Array<EventSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Each CPU's producer and consumer positions in [`NET_EVENTS`].
#[map]
static NET_EVENTS_POS: Array<EventRingPos> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static NET_STATS: PerCpuArray<NetStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static MILESTONES: Array<Milestones> = Array::with_max_entries(1, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

#[inline(always)]
fn stats() -> Option<&'static mut NetStats> {
    NET_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn milestones() -> Option<&'static mut Milestones> {
    MILESTONES.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// One store that the compiler keeps as it is. Plain stores of zeroes to
/// neighbouring fields are merged by LLVM into a `memset` call, which on BPF
/// is a call to a byte-at-a-time loop (and the 8-byte loads of those fields
/// that follow then miss store forwarding): on the hottest path of all.
#[inline(always)]
fn put<T>(field: &mut T, value: T) {
    unsafe { core::ptr::write_volatile(field, value) }
}

/// Zeroes `*v` a 64-bit word at a time with volatile stores, which the
/// compiler cannot merge into a `memset` call (see `put`). `T`'s size must be
/// a multiple of 8, and `v` 8-byte aligned (map values and stack slots are).
#[inline(always)]
fn zero_words<T>(v: *mut T) {
    const { assert!(size_of::<T>() % 8 == 0) };
    let words = v as *mut u64;
    for i in 0..size_of::<T>() / 8 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// Clears what an exchange accumulates, before a new one starts.
#[inline(always)]
fn reset_exchange(c: &mut ConnState) {
    put(&mut c.first_response_ns, 0);
    put(&mut c.last_response_ns, 0);
    put(&mut c.bytes_in, 0);
    put(&mut c.bytes_out, 0);
    put(&mut c.status, 0);
}

/// Starts tracking `sk` as a fresh connection (overwrites stale state of a
/// reused socket).
#[inline(always)]
fn track(sk: u64, dir: u32, flags: u32) -> Option<*mut ConnState> {
    // Not `..Default::default()`: that becomes a memset call (see `put`),
    // and this runs for every connection.
    let mut fresh = core::mem::MaybeUninit::<ConnState>::uninit();
    zero_words(fresh.as_mut_ptr());
    let fresh = unsafe { fresh.assume_init_mut() };
    put(&mut fresh.direction, dir);
    put(&mut fresh.flags, flags);
    if CONNS.insert(&sk, fresh, 0).is_err() {
        if let Some(s) = stats() {
            s.conns_untracked += 1;
        }
        return None;
    }
    CONNS.get_ptr_mut(&sk)
}

/// Sends a finished request or call to user space through this CPU's part
/// of the event ring. Never wakes the reader; a full ring loses the event
/// and counts it.
#[inline(always)]
fn emit(kind: u32, c: &ConnState, end_ns: u64, extra_flags: u32) {
    let Some(s) = stats() else { return };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let shift = *config::read_const(&EVENT_RING_SHIFT) & 31;
    let slots = 1u64 << shift;
    let Some(pos) = NET_EVENTS_POS.get_ptr_mut(cpu) else {
        s.events_dropped += 1;
        return;
    };
    // Fullness first: user space may still be reading the slots behind
    // `tail`. The margin covers programs nesting on this CPU between this
    // check and the reservation below.
    let (head, tail) =
        unsafe { (core::ptr::read_volatile(&(*pos).head), core::ptr::read_volatile(&(*pos).tail)) };
    if head.wrapping_sub(tail) >= slots.saturating_sub(EVENT_RING_MARGIN) {
        s.events_dropped += 1;
        return;
    }
    // Atomic: a softirq (a TCP close) or a preempting task can emit on this
    // CPU in the middle of this one; each gets its own position.
    // (`AtomicU64::fetch_add` is not offered on BPF, whose target claims no
    // compare-and-swap. SeqCst, not Relaxed: LLVM 22's BPF backend lowers a
    // relaxed add to the non-fetching `lock +=` even when its result is used,
    // and then reads the old value from the unchanged source register; a
    // sequentially consistent one becomes `atomic64_fetch_add` (check with
    // `bpftool prog dump xlated`). On x86-64 both are one `lock xadd`.)
    let at = unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(
            &raw mut (*pos).head,
            1,
        )
    };
    let index = ((cpu as u64) << shift) | (at & (slots - 1));
    // Always present when user space sized the ring for every possible CPU.
    let Some(slot) = NET_EVENTS.get_ptr_mut(index as u32) else {
        s.events_dropped += 1;
        return;
    };
    // Volatile stores, event then commit: the compiler keeps volatile
    // accesses in order, and x86-64 does not reorder stores with stores, so
    // user space never sees a commit before its event. (A compiler fence
    // would say the same, but the BPF backend cannot lower one.)
    unsafe {
        let event = NetEvent {
            start_ns: c.start_ns,
            first_response_ns: c.first_response_ns,
            end_ns,
            upstream_ns: c.upstream_ns,
            bytes_in: saturate(c.bytes_in),
            bytes_out: saturate(c.bytes_out),
            kind,
            status: c.status,
            flags: c.flags | extra_flags,
            seq: c.seq,
        };
        core::ptr::write_volatile(&raw mut (*slot).event, event);
        core::ptr::write_volatile(&raw mut (*slot).commit, at + 1);
    }
    s.events_submitted += 1;
}

#[inline(always)]
fn saturate(bytes: u64) -> u32 {
    if bytes > u32::MAX as u64 { u32::MAX } else { bytes as u32 }
}

/// Ends the exchange under way on `c`, if a response has started.
#[inline(always)]
fn finish_exchange(c: &mut ConnState) {
    if c.phase != phase::RESPONSE {
        return;
    }
    if c.direction == direction::INBOUND {
        emit(event_kind::REQUEST, c, c.last_response_ns, 0);
    } else {
        emit(event_kind::UPSTREAM_CALL, c, c.last_response_ns, 0);
    }
    c.phase = phase::IDLE;
}

/// The arguments of `sock_recv_length` / `sock_send_length` when this is
/// the target moving data: `(sk, bytes, tid)`.
#[inline(always)]
fn target_data(ctx: &RawTracePointContext) -> Option<(u64, u64, u32)> {
    let tid = config::target_thread()?;
    let ret: i64 = ctx.arg::<u64>(1) as i32 as i64;
    if ret <= 0 {
        return None; // EAGAIN, errors and EOF carry no data
    }
    Some((ctx.arg::<u64>(0), ret as u64, tid))
}

/// Notes that the target talks to an upstream: from now on inbound requests
/// record the thread that serves them (see `Milestones::outbound_seen`).
#[inline(always)]
fn outbound_seen() {
    if let Some(m) = milestones()
        && m.outbound_seen == 0
    {
        m.outbound_seen = 1;
    }
}

/// Whether `sk` is a TCP socket (IPv4 or IPv6): read only for sockets not
/// tracked yet.
#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    let family = config::read_field::<u16>(sk, offset!(sock_family)).unwrap_or(0);
    let protocol = config::read_field::<u16>(sk, offset!(sock_protocol)).unwrap_or(0);
    (family == AF_INET || family == AF_INET6) && protocol == IPPROTO_TCP
}

/// The connection `sk`, adopting it if it is TCP and predates attach:
/// inbound when its local port is one the target listens on; otherwise a
/// server reads first on its connections, a client writes first.
#[inline(always)]
fn conn_or_adopt(sk: u64, first_op_is_read: bool) -> Option<&'static mut ConnState> {
    let ptr = match CONNS.get_ptr_mut(&sk) {
        Some(p) => p,
        None => {
            if !is_tcp(sk) {
                return None;
            }
            let port = config::read_field::<u16>(sk, offset!(sock_num)).unwrap_or(0) as u32;
            let dir = if unsafe { LISTEN_PORTS.get(&port) }.is_some() || first_op_is_read {
                direction::INBOUND
            } else {
                direction::OUTBOUND
            };
            let p = track(sk, dir, conn_flags::ADOPTED)?;
            if let Some(s) = stats() {
                s.adopted_conns += 1;
            }
            if dir == direction::OUTBOUND {
                outbound_seen();
            }
            p
        }
    };
    Some(unsafe { &mut *ptr })
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> u32 {
    let Some((sk, bytes, tid)) = target_data(&ctx) else {
        return 0;
    };
    if ctx.arg::<u64>(2) as i32 & MSG_PEEK != 0 {
        return 0; // the data will be read again
    }
    let Some(c) = conn_or_adopt(sk, true) else {
        return 0;
    };
    let t = now();
    if c.direction == direction::INBOUND {
        if c.phase == phase::RESPONSE {
            finish_exchange(c); // keep-alive: the previous request is done
        }
        if c.phase == phase::IDLE {
            c.phase = phase::REQUEST;
            c.start_ns = t;
            reset_exchange(c);
            put(&mut c.upstream_ns, 0);
            c.seq = c.seq.wrapping_add(1);
            c.flags &= !(conn_flags::PATH_HEALTH | conn_flags::PATH_READY);
            c.flags |= match_path(tid, bytes);
            // Upstream calls this thread makes from now on serve this
            // request (updated in place: an insert costs far more). Only
            // for a target with upstreams: a lookup per request otherwise.
            if milestones().is_some_and(|m| m.outbound_seen != 0) {
                let parent = ParentRef { sk, seq: c.seq, _pad: 0 };
                match THREAD_INBOUND.get_ptr_mut(&tid) {
                    Some(p) => unsafe { *p = parent },
                    None => {
                        let _ = THREAD_INBOUND.insert(&tid, &parent, 0);
                    }
                }
            }
        }
        c.bytes_in += bytes;
    } else {
        // Outbound: the upstream's response arriving.
        if c.phase == phase::REQUEST {
            c.phase = phase::RESPONSE;
            c.first_response_ns = t;
        }
        if c.phase == phase::RESPONSE {
            c.last_response_ns = t;
            c.bytes_in += bytes;
            credit_parent(c, t);
        }
    }
    0
}

/// Adds the time since the last credit to the inbound request this call
/// serves, if that request is still the one under way on its connection.
#[inline(always)]
fn credit_parent(call: &mut ConnState, t: u64) {
    if call.parent_sk == 0 {
        return;
    }
    if let Some(parent) = CONNS.get_ptr_mut(&call.parent_sk) {
        let parent = unsafe { &mut *parent };
        if parent.seq == call.parent_seq && t > call.credited_until_ns {
            parent.upstream_ns += t - call.credited_until_ns;
        }
    }
    call.credited_until_ns = t;
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> u32 {
    let Some((sk, bytes, tid)) = target_data(&ctx) else {
        return 0;
    };
    let Some(c) = conn_or_adopt(sk, false) else {
        return 0;
    };
    let t = now();
    if c.direction == direction::INBOUND {
        if c.phase == phase::REQUEST {
            c.phase = phase::RESPONSE;
            c.first_response_ns = t;
            c.status = read_status(tid);
            if let Some(m) = milestones()
                && m.first_response_ns == 0
            {
                m.first_response_ns = t;
            }
        }
        if c.phase == phase::RESPONSE {
            c.last_response_ns = t;
            c.bytes_out += bytes;
        } else if let Some(s) = stats() {
            s.unmatched_writes += 1;
        }
    } else {
        if c.phase == phase::RESPONSE {
            finish_exchange(c); // the next call on a pooled connection
        }
        if c.phase == phase::IDLE {
            c.phase = phase::REQUEST;
            c.start_ns = t;
            c.credited_until_ns = t;
            reset_exchange(c);
            c.seq = c.seq.wrapping_add(1);
            match unsafe { THREAD_INBOUND.get(&tid) } {
                Some(p) => {
                    c.parent_sk = p.sk;
                    c.parent_seq = p.seq;
                }
                None => c.parent_sk = 0,
            }
        }
        c.bytes_out += bytes;
    }
    if let Some(stash) = WRITE_BUF.get_ptr_mut(0) {
        unsafe { (*stash).tid = 0 }; // used: a later send must not read it again
    }
    0
}

/// The HTTP status of a response whose first bytes the current write syscall
/// sends (`HTTP/1.x NNN`), or 0.
#[inline(always)]
fn read_status(tid: u32) -> u32 {
    let Some(stash) = WRITE_BUF.get(0) else { return 0 };
    if stash.tid != tid {
        return 0; // the thread moved CPU since its syscall began, or no write syscall
    }
    let buf = stash.buf;
    let Ok(head) = (unsafe { bpf_probe_read_user(buf as *const [u8; 12]) }) else {
        return 0;
    };
    if head[0] != b'H' || head[1] != b'T' || head[2] != b'T' || head[3] != b'P' || head[4] != b'/' {
        return 0;
    }
    if head[8] != b' ' {
        return 0;
    }
    let mut status = 0u32;
    for i in 9..12 {
        let d = head[i];
        if !d.is_ascii_digit() {
            return 0;
        }
        status = status * 10 + (d - b'0') as u32;
    }
    status
}

/// Room for the request line's method, path and the byte after the path
/// (a multiple of 8: it is cleared a word at a time, `zero_words`).
const REQUEST_HEAD: usize = 144;

/// Scratch for the first bytes of a request (too large for the BPF stack).
#[map]
static REQUEST_LINE: PerCpuArray<[u8; REQUEST_HEAD]> = PerCpuArray::with_max_entries(1, 0);

/// `PATH_HEALTH` / `PATH_READY` for the request whose first bytes the current
/// read syscall returned: `METHOD SP PATH (SP | ?)`.
#[inline(always)]
fn match_path(tid: u32, received: u64) -> u32 {
    let m = config::read_const(&PATH_MATCH);
    if m.health_len == 0 && m.ready_len == 0 {
        return 0;
    }
    let Some(&buf) = (unsafe { READ_BUF.get(&tid) }) else { return 0 };
    let Some(head) = REQUEST_LINE.get_ptr_mut(0) else { return 0 };
    let head = unsafe { &mut *head };
    // Only the bytes the read returned: past them the buffer's page may not
    // be mapped yet, and a fault-free read of it would fail.
    let n = if received < REQUEST_HEAD as u64 { received as usize } else { REQUEST_HEAD };
    if n == 0 {
        return 0;
    }
    zero_words(head); // not `fill(0)`: a memset call (see `put`)
    if unsafe { aya_ebpf::helpers::bpf_probe_read_user_buf(buf as *const u8, &mut head[..n]) }
        .is_err()
    {
        return 0;
    }
    // The method is at most 7 bytes ("OPTIONS").
    let mut path_at = 0;
    for i in 1..9 {
        if head[i] == b' ' {
            path_at = i + 1;
            break;
        }
    }
    if path_at == 0 {
        return 0;
    }
    let mut flags = 0;
    if path_equals(head, path_at, &m.health, m.health_len) {
        flags |= conn_flags::PATH_HEALTH;
    }
    if path_equals(head, path_at, &m.ready, m.ready_len) {
        flags |= conn_flags::PATH_READY;
    }
    flags
}

#[inline(always)]
fn path_equals(head: &[u8; REQUEST_HEAD], at: usize, want: &[u8; 128], len: u32) -> bool {
    let len = len as usize;
    if len == 0 || len >= 128 {
        return false;
    }
    for i in 0..128 {
        let Some(&b) = head.get(at + i) else { return false };
        if i == len {
            return b == b' ' || b == b'?';
        }
        if want.get(i) != Some(&b) {
            return false;
        }
    }
    false
}

/// How a syscall names the bytes it moves.
#[derive(Clone, Copy)]
enum UserBuf {
    /// `buf`: the bytes themselves (read, write, recvfrom, sendto).
    Plain,
    /// `const struct iovec *vec`: the first bytes are at `vec[0].iov_base`
    /// (readv, writev).
    Iovec,
    /// `struct user_msghdr *msg`: `msg->msg_iov` is at offset 16 of the
    /// user ABI `struct msghdr` on every 64-bit Linux ABI, then as `Iovec`
    /// (recvmsg, sendmsg).
    Msghdr,
}

/// Where the current syscall's first bytes are, when it is the target's.
#[inline(always)]
fn user_buf(ctx: &TracePointContext, kind: UserBuf) -> Option<(u32, u64)> {
    let tid = config::target_thread()?;
    // A plain load from the record at a constant offset (see
    // `SYSCALL_ARG1_OFFSET`).
    let mut ptr =
        unsafe { *(ctx.as_ptr() as *const u8).add(SYSCALL_ARG1_OFFSET as usize).cast::<u64>() };
    if let UserBuf::Msghdr = kind {
        ptr = unsafe { bpf_probe_read_user((ptr + 16) as *const u64) }.ok()?;
    }
    if let UserBuf::Iovec | UserBuf::Msghdr = kind {
        ptr = unsafe { bpf_probe_read_user(ptr as *const u64) }.ok()?;
    }
    (ptr != 0).then_some((tid, ptr))
}

/// A read syscall: where the request's first bytes will land, per thread
/// (hooks attached only when request paths are watched).
#[inline(always)]
fn stash_read(ctx: &TracePointContext, kind: UserBuf) {
    if let Some((tid, buf)) = user_buf(ctx, kind) {
        let _ = READ_BUF.insert(&tid, &buf, 0);
    }
}

/// A write syscall: where the bytes it sends are, in this CPU's slot.
#[inline(always)]
fn stash_write(ctx: &TracePointContext, kind: UserBuf) {
    if let Some((tid, buf)) = user_buf(ctx, kind)
        && let Some(stash) = WRITE_BUF.get_ptr_mut(0)
    {
        unsafe { *stash = WriteStash { buf, tid, _pad: 0 } };
    }
}

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    stash_read(&ctx, UserBuf::Plain);
    0
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    stash_read(&ctx, UserBuf::Plain);
    0
}

#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    stash_read(&ctx, UserBuf::Iovec);
    0
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    stash_read(&ctx, UserBuf::Msghdr);
    0
}

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    stash_write(&ctx, UserBuf::Plain);
    0
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    stash_write(&ctx, UserBuf::Plain);
    0
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    stash_write(&ctx, UserBuf::Iovec);
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    stash_write(&ctx, UserBuf::Msghdr);
    0
}

/// Every TCP state change of the machine, as a BTF tracepoint: the
/// arguments and the socket's fields are plain loads, where the classic
/// tracepoint built a record and needed a helper call per field.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    // SAFETY (both loads): `sk` is the tracepoint's `struct sock *`
    // argument, the offsets its fields' (from BTF).
    if unsafe { config::load_field::<u16>(sk as *const u8, offset!(sock_protocol)) } != IPPROTO_TCP
    {
        return 0;
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // The local port, host order (what the classic tracepoint calls sport).
    let local_port =
        || unsafe { config::load_field::<u16>(sk as *const u8, offset!(sock_num)) } as u32;
    match new {
        // listen() runs in the target's context.
        TCP_LISTEN => {
            if config::in_target() {
                let port = local_port();
                let _ = LISTEN_PORTS.insert(&port, &1, 0);
                if let Some(m) = milestones()
                    && m.first_listen_ns == 0
                {
                    m.first_listen_ns = now();
                    m.first_listen_port = port;
                }
            }
        }
        // Handshake done on a listening port of ours (softirq: any context).
        TCP_ESTABLISHED if old == TCP_SYN_RECV => {
            let port = local_port();
            if unsafe { LISTEN_PORTS.get(&port) }.is_some()
                && track(sk, direction::INBOUND, 0).is_some()
            {
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
            if config::in_target() && track(sk, direction::OUTBOUND, 0).is_some() {
                outbound_seen();
                if let Some(s) = stats() {
                    s.outbound_conns += 1;
                }
            }
        }
        // The target closes: no more response bytes will follow.
        TCP_FIN_WAIT1 => {
            if let Some(c) = CONNS.get_ptr_mut(&sk) {
                finish_exchange(unsafe { &mut *c });
            }
        }
        TCP_CLOSE => {
            if let Some(c) = CONNS.get_ptr_mut(&sk) {
                finish_exchange(unsafe { &mut *c });
                let _ = CONNS.remove(&sk);
            }
        }
        _ => {}
    }
    0
}

#[inline(always)]
fn mark_reset(sk: u64) {
    if let Some(c) = CONNS.get_ptr_mut(&sk) {
        let c = unsafe { &mut *c };
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
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(offset!(receive_reset_skaddr)) } {
        mark_reset(sk);
    }
    0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(offset!(send_reset_skaddr)) }
        && sk != 0
    {
        mark_reset(sk);
    }
    0
}
