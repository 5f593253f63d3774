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
const PAGE: u64 = 4096;

/// Scratch for the first bytes of a request (too large for the BPF stack).
#[map]
static REQUEST_LINE: PerCpuArray<[u8; REQUEST_HEAD]> = PerCpuArray::with_max_entries(1, 0);

/// `PATH_HEALTH` / `PATH_READY` for a request whose first bytes were just
/// copied to user address `buf`: `METHOD SP PATH (SP | ?)`.
#[inline(always)]
pub(super) fn path_flags(m: &PathMatch, buf: u64) -> u32 {
    let Some(head) = REQUEST_LINE.get_ptr_mut(0) else { return 0 };
    let head = unsafe { &mut *head };
    // Up to the end of `buf`'s page: the read just copied its first bytes
    // there, so that page is mapped, and a fault-free read of the next one
    // might fail. (The receive hook does not see how many bytes the read
    // returned; bytes past them are the buffer's old contents, but the
    // method, path and the byte after it are a request's first bytes.)
    let page_left = PAGE - (buf & (PAGE - 1));
    // Bounded after a volatile reload: LLVM folds a plain `min` into
    // arithmetic the verifier cannot bound (it then sees up to 4096 bytes
    // for a 144-byte buffer).
    let n = unsafe { core::ptr::read_volatile(&page_left) } as usize;
    let n = if n > REQUEST_HEAD { REQUEST_HEAD } else { n };
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
