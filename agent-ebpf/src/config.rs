//! Configuration: `const volatile` globals user space overrides before load
//! (`EbpfLoader::override_global`; the verifier then sees constants), and the
//! target, which lives in a map because the exec hook may arm it itself.
//! Names must match `agent_common::globals`.

use agent_common::{ExecMatch, PathMatch, Target, TracepointOffsets};
use aya_ebpf::{macros::map, maps::Array};

#[unsafe(no_mangle)]
pub(crate) static OFFSETS: TracepointOffsets = TracepointOffsets {
    task_pid: 0,
    task_tgid: 0,
    rss_stat_mm_id: 0,
    rss_stat_curr: 0,
    rss_stat_member: 0,
    rss_stat_size: 0,
    sock_family: 0,
    sock_protocol: 0,
    receive_reset_skaddr: 0,
    send_reset_skaddr: 0,
    exec_filename: 0,
    exec_pid: 0,
    task_sum_exec_runtime: 0,
    task_prev_sum_exec_runtime: 0,
    sock_num: 0,
};

#[unsafe(no_mangle)]
pub(crate) static EXEC_MATCH: ExecMatch = ExecMatch::NONE;

#[unsafe(no_mangle)]
pub(crate) static PATH_MATCH: PathMatch = PathMatch::NONE;

/// log2 of the slots each CPU owns in the request event ring
/// (`agent_common::EventSlot`); user space sizes the ring to match.
#[unsafe(no_mangle)]
pub(crate) static EVENT_RING_SHIFT: u32 = 0;

/// The measured thread group; see `agent_common::Target`.
#[map]
pub(crate) static TARGET: Array<Target> = Array::with_max_entries(1, 0);

/// One field offset of [`OFFSETS`], as a `usize` for `TracePointContext::read_at`.
macro_rules! offset {
    ($field:ident) => {{
        // Often expanded inside an `unsafe` read_at call already.
        #[allow(unused_unsafe)]
        let offset = unsafe { core::ptr::read_volatile(&$crate::config::OFFSETS.$field) };
        offset as usize
    }};
}
pub(crate) use offset;

/// Reads a `const volatile` global whole (the compiler must not fold its
/// compile-time value).
#[inline(always)]
pub fn read_const<T: Copy>(v: &'static T) -> &'static T {
    // A volatile read of a pointer to it: the loads that follow go to the
    // map user space wrote, not to the compile-time initialiser.
    unsafe { &*core::ptr::read_volatile(&(v as *const T)) }
}

/// Reads a `T` at `offset` bytes into a kernel object.
#[inline(always)]
pub fn read_field<T>(base: u64, offset: usize) -> Option<T> {
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((base as *const u8).add(offset) as *const T) }
        .ok()
}

/// Loads a `T` at `offset` bytes into a kernel object reached through a
/// BTF-typed pointer (a `tp_btf` argument): a plain load, no helper. The
/// offset comes from [`OFFSETS`], a constant to the verifier, so `base +
/// offset` keeps its BTF type and the load is checked against the struct's
/// layout (a fault reads 0).
///
/// # Safety
/// `base` must be such a pointer and `offset` that of a `T` field in it.
#[inline(always)]
pub unsafe fn load_field<T: Copy>(base: *const u8, offset: usize) -> T {
    unsafe { core::ptr::read(base.add(offset) as *const T) }
}

/// tgid and tid of the task this program runs in.
#[inline(always)]
pub fn current_tgid_tid() -> (u32, u32) {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// The target's tgid, 0 while there is none.
#[inline(always)]
pub fn target_tgid() -> u32 {
    TARGET.get(0).map_or(0, |t| t.tgid)
}

/// The current task's tid when it belongs to the target, else `None`.
#[inline(always)]
pub fn target_thread() -> Option<u32> {
    let (tgid, tid) = current_tgid_tid();
    let target = target_tgid();
    (target != 0 && tgid == target).then_some(tid)
}

/// True when the current task belongs to the target.
#[inline(always)]
pub fn in_target() -> bool {
    target_thread().is_some()
}
