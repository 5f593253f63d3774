//! `const volatile` globals: user space overrides them before load
//! (`EbpfLoader::override_global`); the verifier then sees them as constants.
//! Names must match `agent_common::globals`.

use agent_common::TracepointOffsets;

#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

#[unsafe(no_mangle)]
pub(crate) static OFFSETS: TracepointOffsets = TracepointOffsets {
    sched_switch_next_pid: 0,
    rss_stat_mm_id: 0,
    rss_stat_curr: 0,
    rss_stat_member: 0,
    rss_stat_size: 0,
    sock_length_sk: 0,
    sock_length_family: 0,
    sock_length_protocol: 0,
    sock_length_ret: 0,
    sock_length_flags: 0,
    set_state_skaddr: 0,
    set_state_oldstate: 0,
    set_state_newstate: 0,
    set_state_sport: 0,
    set_state_protocol: 0,
    receive_reset_skaddr: 0,
    send_reset_skaddr: 0,
    write_buf: 0,
    sendto_buf: 0,
    writev_vec: 0,
    sendmsg_msg: 0,
    _pad: 0,
};

/// The target's tgid. `read_volatile`: without it the compiler folds the
/// initial 0 into the code.
#[inline(always)]
pub fn target_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&TARGET_TGID) }
}

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

/// tgid and tid of the task this program runs in.
#[inline(always)]
pub fn current_tgid_tid() -> (u32, u32) {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    current_tgid_tid().0
}

/// True when the current task belongs to the target.
#[inline(always)]
pub fn in_target() -> bool {
    current_tgid() == target_tgid()
}
