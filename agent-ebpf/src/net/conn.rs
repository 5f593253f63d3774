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
    maps::{HashMap, LruHashMap},
    programs::BtfTracePointContext,
};

use super::{buffers, has_upstreams, http, insert_failed, milestones, now, ring::emit, stats};
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

/// The target's listening ports (host byte order) → the listener's tgid
/// (the owner of the connections accepted there).
#[map]
pub(super) static LISTEN_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);
/// Which inbound request each thread of the target is serving (key: tid):
/// an upstream call started on a thread serves that request.
#[map]
static THREAD_INBOUND: LruHashMap<u32, ParentRef> = LruHashMap::with_max_entries(16_384, 0);
/// ns each inbound request waited on upstream calls made for it, keyed by
/// the request (its socket's address and number): a call's socket storage
/// cannot reach its parent's, which only a BTF-typed pointer can name.
/// Taken when the request ends. Used only once the target has upstreams.
#[map]
static UPSTREAM_WAIT: LruHashMap<ParentRef, u64> = LruHashMap::with_max_entries(16_384, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
pub(super) const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;

/// `sk`'s state, if it is tracked.
#[inline(always)]
pub(super) fn conn(sk: Sock) -> Option<&'static mut ConnState> {
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
    put(&mut c.bytes_in, 0);
    put(&mut c.bytes_out, 0);
    put(&mut c.response_buf, 0);
    put(&mut c.status, 0);
}

/// Ends the exchange under way on `c`, if a response has started.
#[inline(always)]
pub(super) fn finish_exchange(c: &mut ConnState) {
    if c.phase != phase::RESPONSE {
        return;
    }
    if c.direction == direction::INBOUND {
        emit(event_kind::REQUEST, c, c.last_response_ns, take_upstream_wait(c), 0);
    } else {
        emit(event_kind::UPSTREAM_CALL, c, c.last_response_ns, 0, 0);
    }
    c.phase = phase::IDLE;
}

/// The upstream time credited to inbound request `c`, removed from
/// `UPSTREAM_WAIT`.
#[inline(always)]
fn take_upstream_wait(c: &ConnState) -> u64 {
    if !has_upstreams() {
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

/// The connection `sk`, adopting it if it is TCP and predates attach:
/// inbound when its local port is one the target listens on; otherwise a
/// server reads first on its connections, a client writes first.
#[inline(always)]
fn conn_or_adopt(sk: Sock, first_op_is_read: bool) -> Option<&'static mut ConnState> {
    if let Some(c) = conn(sk) {
        return Some(c);
    }
    let base = sk as *const u8;
    // SAFETY (the loads): `sk` is the tracepoint's `struct sock *`, the
    // offsets its fields' (from BTF).
    let family = unsafe { load_field::<u16>(base, offset!(sock_family)) };
    let protocol = unsafe { load_field::<u16>(base, offset!(sock_protocol)) };
    if (family != AF_INET && family != AF_INET6) || protocol != IPPROTO_TCP {
        return None;
    }
    let port = unsafe { load_field::<u16>(base, offset!(sock_num)) } as u32;
    let dir = if unsafe { LISTEN_PORTS.get(&port) }.is_some() || first_op_is_read {
        direction::INBOUND
    } else {
        direction::OUTBOUND
    };
    let owner = config::current_tgid_tid().0;
    let c = track(sk, dir, conn_flags::ADOPTED, owner)?;
    if let Some(s) = stats() {
        s.adopted_conns += 1;
    }
    if dir == direction::OUTBOUND {
        outbound_seen();
    }
    Some(c)
}

/// The arguments of `sock_recv_length` / `sock_send_length` when this is
/// the target moving data: `(sk, bytes, tid)`. The thread group is checked
/// first: another process's socket call costs no socket access.
#[inline(always)]
fn target_data(ctx: &BtfTracePointContext) -> Option<(Sock, u64, u32)> {
    let tid = config::target_thread()?;
    let ret: i32 = ctx.arg(1);
    if ret <= 0 {
        return None; // EAGAIN, errors and EOF carry no data
    }
    Some((ctx.arg(0), ret as u64, tid))
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let Some((sk, bytes, tid)) = target_data(&ctx) else {
        return 0;
    };
    let flags: i32 = ctx.arg(2);
    if flags & MSG_PEEK != 0 {
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
            start_request(c, t, bytes, tid);
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

/// The first bytes of a request arrived on inbound connection `c`.
#[inline(always)]
fn start_request(c: &mut ConnState, t: u64, bytes: u64, tid: u32) {
    c.phase = phase::REQUEST;
    c.start_ns = t;
    reset_exchange(c);
    c.seq = c.seq.wrapping_add(1);
    c.flags &= !(conn_flags::PATH_HEALTH | conn_flags::PATH_READY);
    c.flags |= buffers::request_path_flags(tid, bytes);
    // Upstream calls this thread makes from now on serve this request
    // (updated in place: an insert costs far more). Only for a target with
    // upstreams: a lookup per request otherwise.
    if has_upstreams() {
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

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
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
            // Where `tcp_sendmsg_locked` saw the bytes, copied by now.
            if c.response_buf != 0 {
                c.status = http::status_at(c.response_buf);
            }
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
    0
}
