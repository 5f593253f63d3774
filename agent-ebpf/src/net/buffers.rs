//! Where the bytes of a send or a receive are, for the HTTP status line of a
//! response and the path of a request ([`super::http`]).
//!
//! - Sends: `tcp_sendmsg_locked` (`super::conn`), a BTF tracepoint that
//!   fires inside TCP's send path only (per chunk, in the sender's context,
//!   before the copy) with the `struct msghdr *` whose `msg_iter` still
//!   points at the user's bytes. No system-call hook: nothing else on the
//!   machine pays for it.
//! - Receives, only with `--health-path`/`--ready-path`:
//!   `syscalls:sys_enter_{read,recvfrom,readv,recvmsg}` record the buffer a
//!   read will fill, per thread (`tcp_rcv_space_adjust` has no buffer). While
//!   attached they run for every such system call of the machine, so user
//!   space detaches them once the milestones they serve are reached.

use agent_common::{SYSCALL_ARG1_OFFSET, conn_flags};
use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_probe_read_user,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};

use super::{http, insert_failed};
use crate::{
    access::{load_field, read_const},
    config::{self, PATH_MATCH, offset},
};

/// `enum iter_type` values (include/linux/uio.h, stable since 6.0).
const ITER_UBUF: u8 = 0;
const ITER_IOVEC: u8 = 1;

/// The user address of the next byte `msg` will copy: `ubuf` (one buffer)
/// or the current `iovec`'s base, plus the offset already copied.
#[inline(always)]
pub(super) fn first_user_byte(msg: *const u8) -> Option<u64> {
    // SAFETY (the loads): `msg` is the tracepoint's `struct msghdr *`, the
    // offsets its `msg_iter` fields' (from BTF).
    let kind = unsafe { load_field::<u8>(msg, offset!(msg_iter_type)) };
    let at = unsafe { load_field::<u64>(msg, offset!(msg_iter_iov_offset)) };
    // `ubuf` and `__iov` share a union: the same load gives either.
    let ptr = unsafe { load_field::<u64>(msg, offset!(msg_iter_ubuf)) };
    let base = match kind {
        ITER_UBUF => ptr,
        // `__iov` is the kernel's copy of the iovec array, at the segment
        // being copied. The verifier types the union's load as `__iov` (a
        // `struct iovec *`), so a plain load reads its base: no helper call
        // (~55 ns less per writev response than `bpf_probe_read_kernel`).
        // SAFETY: `ptr` is `__iov` for ITER_IOVEC, `iovec_base` the offset
        // of `iov_base` in `struct iovec`.
        ITER_IOVEC => unsafe { load_field::<u64>(ptr as *const u8, offset!(iovec_base)) },
        _ => return None, // kernel buffers (sendfile, splice): no status read
    };
    (base != 0).then_some(base + at)
}

/// The bytes a `tcp_sendmsg_locked` chunk will copy at most: what is left of
/// the send (`msg_iter.count`), up to `size_goal`.
#[inline(always)]
pub(super) fn chunk_bytes(msg: *const u8, size_goal: i32) -> u64 {
    // SAFETY: as in `first_user_byte`.
    let left = unsafe { load_field::<u64>(msg, offset!(msg_iter_count)) };
    let goal = if size_goal > 0 { size_goal as u64 } else { left };
    if left < goal { left } else { goal }
}

/// tid → user address of the buffer the thread's current read syscall fills
/// (only with `PathMatch`).
#[map]
static READ_BUF: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16_384, 0);

/// `PATH_HEALTH` / `PATH_READY` for a request whose first bytes the current
/// thread just read; 0 when no path is watched.
#[inline(always)]
pub(super) fn request_path_flags() -> u32 {
    let m = read_const(&PATH_MATCH);
    if m.health_len == 0 && m.ready_len == 0 {
        return 0;
    }
    let tid = config::current_tgid_tid().1;
    let Some(&buf) = (unsafe { READ_BUF.get(&tid) }) else { return 0 };
    http::path_flags(m, buf) & (conn_flags::PATH_HEALTH | conn_flags::PATH_READY)
}

/// How a read syscall names the bytes it fills.
#[derive(Clone, Copy)]
enum UserBuf {
    /// `buf`: the bytes themselves (read, recvfrom).
    Plain,
    /// `const struct iovec *vec`: the first bytes are at `vec[0].iov_base`
    /// (readv).
    Iovec,
    /// `struct user_msghdr *msg`: `msg->msg_iov` is at offset 16 of the
    /// user ABI `struct msghdr` on every 64-bit Linux ABI, then as `Iovec`
    /// (recvmsg).
    Msghdr,
}

/// A read syscall of the target: records where the request's first bytes
/// will land, per thread.
#[inline(always)]
fn stash_read(ctx: &TracePointContext, kind: UserBuf) {
    let Some(tid) = config::target_thread() else { return };
    // A plain load from the record at a constant offset (see
    // `SYSCALL_ARG1_OFFSET`).
    let mut ptr =
        unsafe { *(ctx.as_ptr() as *const u8).add(SYSCALL_ARG1_OFFSET as usize).cast::<u64>() };
    if let UserBuf::Msghdr = kind {
        let Ok(iov) = (unsafe { bpf_probe_read_user((ptr + 16) as *const u64) }) else { return };
        ptr = iov;
    }
    if let UserBuf::Iovec | UserBuf::Msghdr = kind {
        let Ok(base) = (unsafe { bpf_probe_read_user(ptr as *const u64) }) else { return };
        ptr = base;
    }
    if ptr != 0 && READ_BUF.insert(&tid, &ptr, 0).is_err() {
        insert_failed();
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
