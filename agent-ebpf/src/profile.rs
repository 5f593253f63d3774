//! CPU profiling (`--profile-dir`): the samples the cpu-clock program
//! sends (`cpu_clock.rs`, at each sample of a target thread; the off-CPU
//! ticks build theirs the same way, `offcpu_ticks.rs`). A sample holds the thread's user registers, its
//! kernel stack and a copy of the top of its user stack; user space unwinds
//! the copy with the binaries' `.eh_frame` (`agent/src/profile/`), so
//! binaries built without frame pointers unwind too. User-space twin:
//! `agent/src/probes/profile.rs`.

use core::ffi::c_void;

use agent_common::profile::{
    KERNEL_FRAMES, ProfileSample, ProfileStats, STACK_PAGE, STACK_PAGES, SampleHead, ThreadStack,
    sample_flags, sample_record_bytes,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::{
        bpf_get_smp_processor_id, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_get_stack, bpf_probe_read_user, bpf_task_pt_regs,
            bpf_task_storage_get,
        },
    },
    macros::{btf_map, map},
    maps::{Array, PerCpuArray, RingBuf},
};

use crate::config::TARGET;

/// Resized by user space before load (`RING_BYTES_OFF` when profiling is off).
#[map]
static PROFILE_SAMPLES: RingBuf = RingBuf::with_byte_size(agent_common::profile::RING_BYTES_OFF, 0);

#[map]
static PROFILE_STATS: PerCpuArray<ProfileStats> = PerCpuArray::with_max_entries(1, 0);

/// One [`ProfileSample`] per possible CPU (resized by user space before
/// load), indexed by CPU: a per-CPU array cannot hold 33 KiB values. Only
/// the cpu-clock program fills it (in the timer's interrupt: it does not
/// nest on one CPU).
#[map]
static PROFILE_SCRATCH: Array<ProfileSample> = Array::with_max_entries(1, 0);

/// A `BPF_MAP_TYPE_TASK_STORAGE` map declared in BTF, which aya-ebpf 0.2
/// has no type for (the layout `btf_map_def!` gives its storage maps:
/// the loader reads the map's kind from the fields' types).
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholders read by the loader only, never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        use core::ptr::null;
        TaskStorage {
            r#type: null(),
            key: null(),
            value: null(),
            max_entries: null(),
            map_flags: null(),
        }
    }
}

/// Each sampled target thread's user stack end, as its copies found it
/// (the kernel keeps it with the `task_struct`: no hash to look up, freed
/// with the thread, so a reused tid starts afresh).
#[btf_map]
static THREAD_STACK: TaskStorage<ThreadStack> = TaskStorage::new();

/// `task`'s [`ThreadStack`] (a BTF-typed `struct task_struct *`), made
/// zeroed when missing. The task storage helper returns NULL rather than
/// nest when this CPU is already in it.
#[inline(always)]
pub(crate) fn thread_stack(task: *const u8) -> Option<&'static mut ThreadStack> {
    let map = core::ptr::addr_of!(THREAD_STACK) as *mut c_void;
    let flags = u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE);
    // SAFETY: `task` is a trusted task pointer; with a NULL value the
    // kernel zeroes a new entry.
    let p = unsafe { bpf_task_storage_get(map, task as *mut _, core::ptr::null_mut(), flags) };
    // SAFETY: the thread's own entry; its stack is copied by one program
    // at a time (a cpu-clock sample while it runs, a tick while it does
    // not).
    (!p.is_null()).then(|| unsafe { &mut *(p as *mut ThreadStack) })
}

/// x86_64 `struct pt_regs` offsets (the architecture's layout, fixed by its
/// entry code): `bp`, `ip`, `sp`.
const PT_REGS_BP: usize = 4 * 8;
const PT_REGS_IP: usize = 16 * 8;
const PT_REGS_SP: usize = 19 * 8;

/// `bpf_ringbuf_output` flags: wake the reader or not; `bpf_ringbuf_query`
/// items: bytes not yet read, the ring's size.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// Sends a [`ProfileSample`] of the current task (`tgid`, `tid`, of the
/// target): its user registers, its kernel stack at `ctx`, its user stack
/// (up to its end as `thread` knows it, and records where it found it:
/// see [`ThreadStack::stack_top`]; `None`: no storage could be had).
/// Built in this CPU's scratch, then sent as one record holding only the
/// stack pages copied. False when the ring buffer is full.
#[inline(always)]
pub(crate) fn send_stack(
    ctx: *mut c_void,
    (tgid, tid): (u32, u32),
    flags: u32,
    time_ns: u64,
    thread: Option<&mut ThreadStack>,
) -> bool {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(s) = PROFILE_SCRATCH.get_ptr_mut(cpu) else { return false };
    // SAFETY: `s` is this CPU's scratch slot (see `PROFILE_SCRATCH`);
    // fields are written in place (the record is far larger than the BPF
    // stack).
    let pages = unsafe {
        let h = &raw mut (*s).head;
        start_head(h, time_ns, (tgid, tid), flags);
        // The user registers: saved at the top of the task's kernel stack,
        // whether the timer hit user mode or the kernel on its behalf.
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        let read = |off: usize| bpf_probe_read_kernel(regs.add(off) as *const u64).ok();
        let (ip, sp, bp) = match (read(PT_REGS_IP), read(PT_REGS_SP), read(PT_REGS_BP)) {
            (Some(ip), Some(sp), Some(bp)) => (ip, sp, bp),
            _ => {
                (*h).flags = flags | sample_flags::NO_USER_REGS;
                (0, 0, 0)
            }
        };
        let base = set_registers(h, (ip, sp, bp));
        // Kernel stack of the interrupted context (empty in user mode).
        (*h).kernel_bytes = bpf_get_stack(
            ctx,
            (*h).kernel_stack.as_mut_ptr().cast(),
            (KERNEL_FRAMES * 8) as u32,
            0,
        ) as i32;
        let dst = (*s).user_stack.as_mut_ptr();
        let pages = copy_stack_pages(dst, base, STACK_PAGES, thread, |dst, src| {
            bpf_probe_read_user(dst, STACK_PAGE as u32, src)
        });
        (*h).user_pages = pages;
        pages
    };
    // SAFETY: the scratch value is `size_of::<ProfileSample>()` bytes, and
    // `sample_record_bytes` is at most that (it clamps the pages again,
    // which also gives the verifier its bound).
    let record = unsafe { core::slice::from_raw_parts(s as *const u8, sample_record_bytes(pages)) };
    if PROFILE_SAMPLES.output::<[u8]>(record, wakeup_flag()).is_err() {
        return false;
    }
    // Bytes of the stacks sent, as the stacks are counted.
    if let Some(stats) = stats() {
        stats.stack_bytes += u64::from(pages) * STACK_PAGE as u64;
    }
    true
}

/// The ring's wake-up for a record about to be sent: none while it is
/// under half full (user space reads it at its own ticks, so the target's
/// CPUs are not woken for every sample), forced past that (user space
/// then drains it at once, long before it fills).
#[inline(always)]
fn wakeup_flag() -> u64 {
    let used = PROFILE_SAMPLES.query(BPF_RB_AVAIL_DATA);
    if used > PROFILE_SAMPLES.query(BPF_RB_RING_SIZE) / 2 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Starts a sample's head: when, whose (the target's tgid and the
/// thread's tid), the target's exec count (user space reloads its
/// mappings when it changes), what kind.
///
/// # Safety
/// `h` points to a head being built.
#[inline(always)]
pub(crate) unsafe fn start_head(
    h: *mut SampleHead,
    time_ns: u64,
    (tgid, tid): (u32, u32),
    flags: u32,
) {
    let execs = TARGET.get(0).map_or(0, |t| t.execs);
    // SAFETY: the caller's head.
    unsafe {
        (*h).time_ns = time_ns;
        (*h).tgid = tgid;
        (*h).tid = tid;
        (*h).execs = execs;
        (*h).flags = flags;
    }
}

/// Puts a sample's user registers in its head, and where its copy of the
/// user stack starts: the stack pointer's page, returned.
///
/// # Safety
/// `h` points to a head being built.
#[inline(always)]
pub(crate) unsafe fn set_registers(h: *mut SampleHead, (ip, sp, bp): (u64, u64, u64)) -> u64 {
    let base = sp & !(STACK_PAGE as u64 - 1);
    // SAFETY: the caller's head.
    unsafe {
        (*h).ip = ip;
        (*h).sp = sp;
        (*h).bp = bp;
        (*h).stack_base = base;
    }
    base
}

/// Copies a thread's user stack into `dst`, page by page from `base` (its
/// stack pointer's page) up, with `copy_page(dst, src)` (0: copied), until
/// a page cannot be read (the top of the stack, which `thread` then
/// records), or up to the top `thread`'s last copies found, at most
/// `max_pages`. Returns the pages copied.
///
/// # Safety
/// `dst` holds `max_pages` pages.
#[inline(always)]
pub(crate) unsafe fn copy_stack_pages(
    dst: *mut u8,
    base: u64,
    max_pages: usize,
    mut thread: Option<&mut ThreadStack>,
    copy_page: impl Fn(*mut c_void, *const c_void) -> i64,
) -> u32 {
    if base == 0 {
        return 0;
    }
    let limit = thread.as_deref_mut().map_or(max_pages, |t| t.stack_pages_to_copy(base));
    let mut pages = 0u32;
    for i in 0..max_pages {
        if i >= limit {
            break;
        }
        let src = (base + (i * STACK_PAGE) as u64) as *const c_void;
        // SAFETY: page `i` of `dst` (the caller's promise).
        if copy_page(unsafe { dst.add(i * STACK_PAGE) }.cast(), src) != 0 {
            if let Some(t) = thread.as_deref_mut() {
                t.stack_top = src as u64;
            }
            break;
        }
        pages += 1;
    }
    pages
}

/// This CPU's counters.
#[inline(always)]
pub(crate) fn stats() -> Option<&'static mut ProfileStats> {
    // SAFETY: a per-CPU slot of this CPU; programs do not nest on one CPU.
    PROFILE_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
