//! Connection tracking: each connection's [`ConnState`] in its socket's own
//! storage, the request/response exchange driven by reads and writes, and
//! the upstream time credited to the inbound request a call serves.

use core::{
    ffi::c_void,
    ptr::{addr_of, null_mut},
};

use agent_common::{ConnState, ParentRef, conn_flags, direction, event_kind, phase};
use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, btf_tracepoint, map},
    maps::{Array, LruHashMap},
    programs::BtfTracePointContext,
};

use super::{
    buffers, credits_upstreams, delivery, http, insert_failed, milestones, now, ring::emit, stats,
};
use crate::{
    access::{load_field, put, zero_words},
    config::{self, offset},
};

/// A BTF-typed `struct sock *`: a `tp_btf` argument, which the socket
/// storage helper accepts (a raw tracepoint's untyped one it refuses).
pub(super) type Sock = *const c_void;

/// Per-connection state, kept by the kernel with each socket and freed with
/// it: no table to fill, no hash to look up. What bounds the number of
/// connections is kernel memory (~100 bytes of storage per socket, charged
/// to the agent's memory cgroup), not a map size.
#[btf_map]
static CONNS: SkStorage<ConnState> = SkStorage::new();

/// The target's listening ports: entry `port` (host byte order) is the
/// listener's tgid (the owner of the connections accepted there; node mode
/// tells targets apart by it), 0 when no target listens there. An array,
/// not a hash: every server-side connection of the machine looks its port
/// up when its handshake completes, and an array lookup is an inlined index
/// where a hash costs a helper call and a hash of the key.
#[map]
static LISTEN_PORTS: Array<u32> = Array::with_max_entries(PORTS, 0);
const PORTS: u32 = 1 << 16;

/// The tgid of the target listening on `port`, if one does.
#[inline(always)]
pub(super) fn listener(port: u32) -> Option<u32> {
    LISTEN_PORTS.get(port).copied().filter(|&tgid| tgid != 0)
}

/// Notes that thread group `tgid` (a target) listens on `port`.
#[inline(always)]
pub(super) fn add_listen_port(port: u32, tgid: u32) {
    if let Some(p) = LISTEN_PORTS.get_ptr_mut(port) {
        unsafe { *p = tgid };
    }
}

/// Node mode only (`credits_upstreams`): which inbound request each thread
/// of a target is serving (key: tid): an upstream call started on a thread
/// serves that request.
#[map]
static THREAD_INBOUND: LruHashMap<u32, ParentRef> = LruHashMap::with_max_entries(16_384, 0);
/// ns each inbound request waited on upstream calls made for it, keyed by
/// the request (its socket's address and number): a call's socket storage
/// cannot reach its parent's, which only a BTF-typed pointer can name.
/// Taken when the request ends. Node mode only, once a target has upstreams.
#[map]
static UPSTREAM_WAIT: LruHashMap<ParentRef, u64> = LruHashMap::with_max_entries(16_384, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
pub(super) const IPPROTO_TCP: u16 = 6;

/// `sk`'s state, if it is tracked. A socket no BPF program gave storage
/// (nearly every socket of the machine that is not the target's) has a NULL
/// `sk_bpf_storage`: a plain load says so without a helper call. This also
/// shortens the process-context runs of `inet_sock_set_state` that a
/// softirq's state change on the same CPU can interrupt, which the kernel
/// then skips (a recursion miss).
#[inline(always)]
pub(super) fn conn(sk: Sock) -> Option<&'static mut ConnState> {
    // SAFETY: `sk` is a BTF-typed `struct sock *`, the offset its
    // `sk_bpf_storage` field's (from BTF).
    if unsafe { load_field::<u64>(sk as *const u8, offset!(sock_bpf_storage)) } == 0 {
        return None;
    }
    storage(sk, 0)
}

#[inline(always)]
fn storage(sk: Sock, flags: u64) -> Option<&'static mut ConnState> {
    let map = addr_of!(CONNS) as *mut c_void;
    let p = unsafe { bpf_sk_storage_get(map, sk as *mut c_void, null_mut(), flags) };
    if p.is_null() { None } else { Some(unsafe { &mut *(p as *mut ConnState) }) }
}

/// Starts tracking `sk` as a fresh connection of thread group `owner`
/// (overwrites the state of a reused socket). A storage the kernel cannot
/// allocate is counted.
#[inline(always)]
pub(super) fn track(sk: Sock, dir: u32, flags: u32, owner: u32) -> Option<&'static mut ConnState> {
    let Some(c) = storage(sk, BPF_SK_STORAGE_GET_F_CREATE.into()) else {
        if let Some(s) = stats() {
            s.conns_untracked += 1;
        }
        return None;
    };
    // Not `..Default::default()`: that becomes a memset call (see `put`).
    zero_words(c as *mut ConnState);
    put(&mut c.direction, dir);
    put(&mut c.flags, flags | (owner << conn_flags::OWNER_SHIFT));
    put(&mut c.sk, sk as u64);
    Some(c)
}

/// Clears what an exchange accumulates, before a new one starts.
#[inline(always)]
fn reset_exchange(c: &mut ConnState) {
    put(&mut c.first_response_ns, 0);
    put(&mut c.last_response_ns, 0);
    put(&mut c.bytes_out, 0);
    put(&mut c.response_buf, 0);
    put(&mut c.status, 0);
}

/// Ends the exchange under way on `c`, if a response has started.
/// `in_target`: this runs in the target's context, where a status line not
/// readable before its copy can be read now (its user address is the
/// target's).
#[inline(always)]
pub(super) fn finish_exchange(c: &mut ConnState, in_target: bool) {
    if c.phase != phase::RESPONSE {
        return;
    }
    if c.response_buf != 0 && in_target {
        c.status = http::status_at(c.response_buf).unwrap_or(0);
        put(&mut c.response_buf, 0);
    }
    if c.direction == direction::INBOUND {
        emit(event_kind::REQUEST, c, c.last_response_ns, take_upstream_wait(c), 0);
        delivery::request_finished(c);
    } else {
        emit(event_kind::UPSTREAM_CALL, c, c.last_response_ns, 0, 0);
    }
    c.phase = phase::IDLE;
}

/// The upstream time credited to inbound request `c`, removed from
/// `UPSTREAM_WAIT`.
#[inline(always)]
fn take_upstream_wait(c: &ConnState) -> u64 {
    if !credits_upstreams() {
        return 0;
    }
    let key = ParentRef { sk: c.sk, seq: c.seq, _pad: 0 };
    let Some(&ns) = (unsafe { UPSTREAM_WAIT.get(&key) }) else { return 0 };
    let _ = UPSTREAM_WAIT.remove(&key); // gone already: nothing to undo
    ns
}

/// Notes that the target talks to an upstream: from now on inbound requests
/// record the thread that serves them (see `Milestones::outbound_seen`).
#[inline(always)]
pub(super) fn outbound_seen() {
    if let Some(m) = milestones()
        && m.outbound_seen == 0
    {
        m.outbound_seen = 1;
    }
}

/// Open (1) while sockets the target had before the programs saw it may
/// still be adopted here, on their first operation; user space opens it
/// when it finds a target and closes it once it has given every socket the
/// target holds storage itself (`agent/src/probes/adoption.rs`). Closed,
/// a socket without storage costs a socket operation one load: no helper,
/// no map, whoever makes it.
#[map]
static ADOPTION_OPEN: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn adoption_open() -> bool {
    ADOPTION_OPEN.get(0).is_some_and(|&open| open != 0)
}

/// The connection `sk`, if it is tracked; its first operation since user
/// space gave it storage completes its adoption. While the adoption window
/// is open, a TCP socket of the target without storage is adopted here.
#[inline(always)]
fn conn_or_adopt(sk: Sock, first_op_is_read: bool) -> Option<&'static mut ConnState> {
    if let Some(c) = conn(sk) {
        if c.sk == 0 {
            adopted_by_user_space(c, sk, first_op_is_read);
        }
        return Some(c);
    }
    if !adoption_open() {
        return None;
    }
    adopt(sk, first_op_is_read)
}

/// A connection user space gave storage at attach (`sk` 0: it does not know
/// the kernel address), used for the first time: its address, and its
/// direction when its port did not say (`direction` 0): a server reads
/// first on its connections, a client writes first.
#[inline(always)]
fn adopted_by_user_space(c: &mut ConnState, sk: Sock, first_op_is_read: bool) {
    put(&mut c.sk, sk as u64);
    if c.direction == 0 {
        c.direction = if first_op_is_read { direction::INBOUND } else { direction::OUTBOUND };
    }
    adopted(c.direction);
}

/// Counts a connection adopted with direction `dir` (both ways of adopting).
#[inline(always)]
fn adopted(dir: u32) {
    if let Some(s) = stats() {
        s.adopted_conns += 1;
    }
    if dir == direction::OUTBOUND {
        outbound_seen();
    }
}

/// Adopts `sk` if it is a TCP socket of the target that predates attach:
/// inbound when its local port is one the target listens on; otherwise a
/// server reads first on its connections, a client writes first.
#[inline(always)]
fn adopt(sk: Sock, first_op_is_read: bool) -> Option<&'static mut ConnState> {
    let (owner, _) = config::current_target_task()?;
    let base = sk as *const u8;
    // SAFETY (the loads): `sk` is the tracepoint's `struct sock *`, the
    // offsets its fields' (from BTF).
    let family = unsafe { load_field::<u16>(base, offset!(sock_family)) };
    let protocol = unsafe { load_field::<u16>(base, offset!(sock_protocol)) };
    if (family != AF_INET && family != AF_INET6) || protocol != IPPROTO_TCP {
        return None;
    }
    let port = unsafe { load_field::<u16>(base, offset!(sock_num)) } as u32;
    let dir = if listener(port).is_some() || first_op_is_read {
        direction::INBOUND
    } else {
        direction::OUTBOUND
    };
    let c = track(sk, dir, conn_flags::ADOPTED, owner)?;
    adopted(dir);
    Some(c)
}

/// The current thread's id (a helper call: only where it is needed).
#[inline(always)]
fn current_tid() -> u32 {
    config::current_tgid_tid().1
}

/// `TP_PROTO(struct sock *sk)`: TCP's receive loop, right after each
/// socket buffer's bytes were copied to the reader (`tcp_recvmsg_locked`;
/// also splice and zero-copy receives), in the reader's context. It runs
/// only for TCP reads that return data: reads that find nothing (EAGAIN, as
/// an event loop makes when a socket has nothing left), EOF, and every other
/// protocol's receives (Unix, UDP, netlink) anywhere on the machine run no
/// program at all, where `sock_recv_length` ran one for each. A read that
/// takes several buffers runs it once per buffer; only the first can start
/// a request. A `MSG_PEEK` read runs it too: a request starts when its
/// first bytes are first seen, peeked or read (counts are unchanged: a
/// request starts only on an idle connection).
#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn tcp_rcv_space_adjust(ctx: BtfTracePointContext) -> i32 {
    let sk: Sock = ctx.arg(0);
    // Only the target's sockets have storage: anyone else's leave on a load.
    let Some(c) = conn_or_adopt(sk, true) else {
        return 0;
    };
    let t = now();
    if c.direction == direction::INBOUND {
        if c.phase == phase::RESPONSE {
            finish_exchange(c, true); // keep-alive: the previous request is done
        }
        if c.phase == phase::IDLE {
            start_request(c, t);
        }
    } else {
        // Outbound: the upstream's response arriving.
        if c.phase == phase::REQUEST {
            c.phase = phase::RESPONSE;
            c.first_response_ns = t;
        }
        if c.phase == phase::RESPONSE {
            c.last_response_ns = t;
            credit_parent(c, t);
        }
    }
    0
}

/// The first bytes of a request arrived on inbound connection `c`.
#[inline(always)]
fn start_request(c: &mut ConnState, t: u64) {
    c.phase = phase::REQUEST;
    c.start_ns = t;
    reset_exchange(c);
    delivery::request_started(c);
    c.seq = c.seq.wrapping_add(1);
    c.flags &= !(conn_flags::PATH_HEALTH | conn_flags::PATH_READY);
    c.flags |= buffers::request_path_flags();
    // Node mode: upstream calls this thread makes from now on serve this
    // request (updated in place: an insert costs far more). Only for a
    // target with upstreams: a lookup per request otherwise.
    if credits_upstreams() {
        let tid = current_tid();
        let parent = ParentRef { sk: c.sk, seq: c.seq, _pad: 0 };
        match THREAD_INBOUND.get_ptr_mut(&tid) {
            Some(p) => unsafe { *p = parent },
            None => {
                if THREAD_INBOUND.insert(&tid, &parent, 0).is_err() {
                    insert_failed();
                }
            }
        }
    }
}

/// Adds the time since the last credit to the inbound request this call
/// serves (`UPSTREAM_WAIT`).
#[inline(always)]
fn credit_parent(call: &mut ConnState, t: u64) {
    if call.parent_sk == 0 {
        return;
    }
    if t > call.credited_until_ns {
        let waited = t - call.credited_until_ns;
        let key = ParentRef { sk: call.parent_sk, seq: call.parent_seq, _pad: 0 };
        match UPSTREAM_WAIT.get_ptr_mut(&key) {
            Some(total) => unsafe { *total += waited },
            None => {
                if UPSTREAM_WAIT.insert(&key, &waited, 0).is_err() {
                    insert_failed();
                }
            }
        }
    }
    call.credited_until_ns = t;
}

/// `TP_PROTO(const struct sock *sk, const struct msghdr *msg, const struct
/// sk_buff *skb, int size_goal)`: TCP's send loop, once per chunk (one for
/// a send smaller than `size_goal`, ~64 KiB), in the sender's context,
/// before the chunk is copied. The send side of an exchange: what
/// `sock_send_length` did after the copy, one program run and one storage
/// lookup per send less, and no run at all for other protocols' sends
/// anywhere on the machine. The price: times are taken before the chunk's
/// copy, and `bytes_out` counts each chunk as `min(bytes left, size_goal)`,
/// an upper bound (exact for a send of one chunk that is not cut short).
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> i32 {
    let sk: Sock = ctx.arg(0);
    // Only the target's sockets have storage: anyone else's leave on a load.
    let Some(c) = conn_or_adopt(sk, false) else {
        return 0;
    };
    let msg: *const u8 = ctx.arg(1);
    let size_goal: i32 = ctx.arg(3);
    let bytes = buffers::chunk_bytes(msg, size_goal);
    let t = now();
    if c.direction == direction::INBOUND {
        response_chunk(c, sk, msg, t, bytes);
    } else {
        call_chunk(c, t, bytes);
    }
    0
}

/// A chunk the target sends on inbound connection `c`.
#[inline(always)]
fn response_chunk(c: &mut ConnState, sk: Sock, msg: *const u8, t: u64, bytes: u64) {
    if c.phase == phase::REQUEST {
        c.phase = phase::RESPONSE;
        c.first_response_ns = t;
        if let Some(buf) = buffers::first_user_byte(msg) {
            read_status(c, buf);
        }
        if let Some(m) = milestones()
            && m.first_response_ns == 0
        {
            m.first_response_ns = t;
        }
    } else if c.response_buf != 0 {
        // The first chunk's copy has faulted its pages in by now.
        read_status(c, c.response_buf);
    }
    if c.phase == phase::RESPONSE {
        c.last_response_ns = t;
        c.bytes_out += bytes;
        delivery::response_chunk(c, sk, msg);
    } else if let Some(s) = stats() {
        s.unmatched_writes += 1;
    }
}

/// Reads the status line of the response under way on `c` at user address
/// `buf`; when the bytes cannot be read yet (before the copy, a page the
/// target never touched, such as a constant response in its executable,
/// is not mapped), keeps the address for a later try in the target's
/// context ([`finish_exchange`], the next chunk).
#[inline(always)]
fn read_status(c: &mut ConnState, buf: u64) {
    match http::status_at(buf) {
        Some(status) => {
            c.status = status;
            put(&mut c.response_buf, 0);
        }
        None => put(&mut c.response_buf, buf),
    }
}

/// A chunk the target sends on outbound connection `c`: the call starts
/// with its first chunk (ending the previous call on a pooled connection).
#[inline(always)]
fn call_chunk(c: &mut ConnState, t: u64, bytes: u64) {
    if c.phase == phase::RESPONSE {
        finish_exchange(c, true); // the next call on a pooled connection
    }
    if c.phase == phase::IDLE {
        c.phase = phase::REQUEST;
        c.start_ns = t;
        c.credited_until_ns = t;
        reset_exchange(c);
        c.seq = c.seq.wrapping_add(1);
        let parent =
            if config::target_set() { unsafe { THREAD_INBOUND.get(&current_tid()) } } else { None };
        match parent {
            Some(p) => {
                c.parent_sk = p.sk;
                c.parent_seq = p.seq;
            }
            None => c.parent_sk = 0,
        }
    }
    c.bytes_out += bytes;
}
