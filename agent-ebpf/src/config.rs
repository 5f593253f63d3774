//! Configuration: `const volatile` globals user space overrides before load
//! (`EbpfLoader::override_global`; the verifier then sees constants), and the
//! target, which lives in a map because the exec hook may arm it itself.
//! Names must match `agent_common::globals` and `agent_common::names`.

use agent_common::{
    COMM_KEY, EXEC_PATH_KEY, ExecMatch, PathMatch, Target, TargetMember, TracepointOffsets,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};

use crate::access::read_const;

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
    task_min_flt: 0,
    task_maj_flt: 0,
    task_signal: 0,
    signal_min_flt: 0,
    signal_maj_flt: 0,
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
    task_cfs_rq: 0,
    cfs_rq_rq: 0,
    rq_clock: 0,
    task_state: 0,
    task_on_cpu: 0,
    task_nvcsw: 0,
    task_nivcsw: 0,
    task_on_rq: 0,
    task_exec_start: 0,
    task_last_queued: 0,
    rq_clock_task: 0,
    task_start_time: 0,
    task_last_arrival: 0,
    task_prev_sum_exec_runtime: 0,
};

#[unsafe(no_mangle)]
pub(crate) static EXEC_MATCH: ExecMatch = ExecMatch::NONE;

#[unsafe(no_mangle)]
pub(crate) static PATH_MATCH: PathMatch = PathMatch::NONE;

/// log2 of the slots each CPU owns in the request event ring
/// (`agent_common::EventSlot`); user space sizes the ring to match.
#[unsafe(no_mangle)]
pub(crate) static EVENT_RING_SHIFT: u32 = 0;

/// 1 in node mode: the targets are [`TARGETS`]; see `agent_common::globals::TARGET_SET`.
#[unsafe(no_mangle)]
pub(crate) static TARGET_SET: u32 = 0;

/// The measured thread group; see `agent_common::Target`.
#[map]
pub(crate) static TARGET: Array<Target> = Array::with_max_entries(1, 0);

/// Node mode's targets by tgid; sized by user space (`--max-targets`).
#[map]
pub(crate) static TARGETS: HashMap<u32, TargetMember> = HashMap::with_max_entries(64, 0);
/// Node mode's selectors the exec hook checks: command name, exec'd path,
/// cgroup v2 id → selector index (see `agent_common::TargetMember`).
#[map]
pub(crate) static EXEC_COMMS: HashMap<[u8; COMM_KEY], u32> = HashMap::with_max_entries(64, 0);
#[map]
pub(crate) static EXEC_PATHS: HashMap<[u8; EXEC_PATH_KEY], u32> = HashMap::with_max_entries(64, 0);
#[map]
pub(crate) static EXEC_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(64, 0);
/// Node mode: execs that matched while [`TARGETS`] was full.
#[map]
pub(crate) static TARGETS_REFUSED: Array<u64> = Array::with_max_entries(1, 0);

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

/// True in node mode (a constant to the verifier, which prunes the other
/// branch of every test of it).
#[inline(always)]
pub fn target_set() -> bool {
    *read_const(&TARGET_SET) != 0
}

/// The current task's `(tgid, tid)` when it belongs to the target (node
/// mode: to one of the targets), else `None`.
#[inline(always)]
pub fn current_target_task() -> Option<(u32, u32)> {
    let (tgid, tid) = current_tgid_tid();
    if target_set() {
        // tgid 0 (the idle task) is never inserted.
        return unsafe { TARGETS.get(&tgid) }.is_some().then_some((tgid, tid));
    }
    let target = target_tgid();
    (target != 0 && tgid == target).then_some((tgid, tid))
}

/// The current task's tid when it belongs to the target, else `None`.
#[inline(always)]
pub fn target_thread() -> Option<u32> {
    current_target_task().map(|(_, tid)| tid)
}

/// True when the current task belongs to the target.
#[inline(always)]
pub fn in_target() -> bool {
    target_thread().is_some()
}
