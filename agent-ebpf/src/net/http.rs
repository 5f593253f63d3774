//! HTTP/1.x as far as the programs need it: a response's status from its
//! first bytes, and whether a request's path is one of the watched ones.
//! Both read user memory the target is sending or has just received.

use agent_common::{PathMatch, conn_flags};
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::map,
    maps::PerCpuArray,
};

use crate::access::zero_words;

/// The HTTP status of a response whose first bytes are at user address
/// `buf` (`HTTP/1.x NNN`), 0 when they are not a status line, `None` when
/// they cannot be read (not mapped: pagefaults are off in a tracing
/// program).
#[inline(always)]
pub(super) fn status_at(buf: u64) -> Option<u32> {
    let head = unsafe { bpf_probe_read_user(buf as *const [u8; 12]) }.ok()?;
    if head[0] != b'H' || head[1] != b'T' || head[2] != b'T' || head[3] != b'P' || head[4] != b'/' {
        return Some(0);
    }
    if head[8] != b' ' {
        return Some(0);
    }
    let mut status = 0u32;
    for i in 9..12 {
        let d = head[i];
        if !d.is_ascii_digit() {
            return Some(0);
        }
        status = status * 10 + (d - b'0') as u32;
    }
    Some(status)
}

/// Room for the request line's method, path and the byte after the path
/// (a multiple of 8: it is cleared a word at a time, `zero_words`).
const REQUEST_HEAD: usize = 144;

/// Scratch for the first bytes of a request (too large for the BPF stack).
#[map]
static REQUEST_LINE: PerCpuArray<[u8; REQUEST_HEAD]> = PerCpuArray::with_max_entries(1, 0);

/// `PATH_HEALTH` / `PATH_READY` for a request whose first `received` bytes
/// are at user address `buf`: `METHOD SP PATH (SP | ?)`.
#[inline(always)]
pub(super) fn path_flags(m: &PathMatch, buf: u64, received: u64) -> u32 {
    let Some(head) = REQUEST_LINE.get_ptr_mut(0) else { return 0 };
    let head = unsafe { &mut *head };
    // Only the bytes the read returned: past them the buffer's page may not
    // be mapped yet, and a fault-free read of it would fail.
    let n = if received < REQUEST_HEAD as u64 { received as usize } else { REQUEST_HEAD };
    if n == 0 {
        return 0;
    }
    zero_words(head); // not `fill(0)`: a memset call (see `access::put`)
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut head[..n]) }.is_err() {
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
