//! Configuration: `const volatile` globals user space overrides before load
//! (`EbpfLoader::override_global`; the verifier then sees constants), and the
//! target, which lives in a map because the exec hook may arm it itself.
//! Names must match `agent_common::globals` and `agent_common::names`.

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
    exec_filename: 0,
    exec_pid: 0,
    task_sum_exec_runtime: 0,
    task_prev_sum_exec_runtime: 0,
    sock_num: 0,
    msg_iter_type: 0,
    msg_iter_iov_offset: 0,
    msg_iter_ubuf: 0,
    iovec_base: 0,
    msg_iter_count: 0,
    sock_bpf_storage: 0,
    tcp_write_seq: 0,
    tcp_snd_nxt: 0,
    tcp_snd_wnd: 0,
    tcp_mss_cache: 0,
    skb_ack_seq: 0,
    task_run_delay: 0,
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

/// One field offset of [`OFFSETS`], as a `usize`.
macro_rules! offset {
    ($field:ident) => {{
        // Often expanded inside an `unsafe` read_at call already.
        #[allow(unused_unsafe)]
        let offset = unsafe { core::ptr::read_volatile(&$crate::config::OFFSETS.$field) };
        offset as usize
    }};
}
pub(crate) use offset;

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
