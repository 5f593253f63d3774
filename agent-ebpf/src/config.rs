//! `const volatile` globals: user space overrides them before load
//! (`EbpfLoader::override_global`), the verifier then sees them as constants.
//! Names must match `agent_common::globals`.

#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;
#[unsafe(no_mangle)]
static SCHED_SWITCH_NEXT_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RSS_STAT_MM_ID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RSS_STAT_CURR_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RSS_STAT_MEMBER_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RSS_STAT_SIZE_OFFSET: u32 = 0;

// read_volatile: without it the compiler folds the initial 0 into the code.
#[inline(always)]
fn get(v: &'static u32) -> u32 {
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn target_tgid() -> u32 {
    get(&TARGET_TGID)
}
#[inline(always)]
pub fn sched_switch_next_pid_offset() -> usize {
    get(&SCHED_SWITCH_NEXT_PID_OFFSET) as usize
}
#[inline(always)]
pub fn rss_stat_mm_id_offset() -> usize {
    get(&RSS_STAT_MM_ID_OFFSET) as usize
}
#[inline(always)]
pub fn rss_stat_curr_offset() -> usize {
    get(&RSS_STAT_CURR_OFFSET) as usize
}
#[inline(always)]
pub fn rss_stat_member_offset() -> usize {
    get(&RSS_STAT_MEMBER_OFFSET) as usize
}
#[inline(always)]
pub fn rss_stat_size_offset() -> usize {
    get(&RSS_STAT_SIZE_OFFSET) as usize
}

/// tgid of the task this program runs in.
#[inline(always)]
pub fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}
