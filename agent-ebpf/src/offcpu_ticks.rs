//! Off-CPU time by wall-clock ticks (`--profile-dir`): a sleepable task
//! iterator (`iter.s/task`) that user space reads once per tick
//! (`--off-cpu-hz`), its link bound to the target's pid so that only the
//! target's threads are visited. For each it writes a [`TickThread`]: its
//! state (blocked, woken and waiting for a CPU, preempted), its switches,
//! and the scheduler's counters its time off CPU is made of (CPU time,
//! run-queue waits, time stolen from it: `sched.rs` sums the last at its
//! switch-outs); and, for a blocked thread the tick's draw selected whose
//! block user space has no stack of yet, that stack (a `SampleHead` and
//! its pages, as the cpu-clock program sends them). The cost is per tick
//! and per target thread, not per switch of the machine
//! (`docs/performance.md`, thirteenth and fourteenth sessions). User-space
//! twin: `agent/src/probes/offcpu_ticks.rs`.
//!
//! The iterator may show a thread twice (when its output overflows the
//! read's buffer, the kernel shows that object again at the next read), so
//! every decision here comes from the tick's inputs alone: the draw's
//! seed (the read session's id, mixed with the one user space set), and
//! the switches of the last block whose stack user space has (map
//! `OFF_CPU_STACKED`, which user space writes).

use core::ffi::c_void;

use agent_common::profile::{
    KERNEL_FRAMES, ProfileSample, STACK_PAGE, STOLEN_SLOTS, StolenSlot, TICK_MAX_CPUS,
    TICK_STACK_PAGES, TickConfig, TickThread, sample_flags, sample_record_bytes, tick_flags,
    tick_selected,
};
use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_copy_from_user_task, bpf_get_task_stack, bpf_map_lookup_percpu_elem, bpf_seq_write,
            bpf_task_pt_regs,
        },
    },
    macros::map,
    maps::{Array, LruHashMap},
};

use crate::{
    access::load_field,
    config::{self, offset},
    profile,
};

#[map]
static OFF_CPU_TICK: Array<TickConfig> = Array::with_max_entries(1, 0);
#[map]
static OFF_CPU_STACKED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16_384, 0);
/// One sample under construction: only the reader's one read runs this
/// program at a time, and no other program uses it.
#[map]
static OFF_CPU_SCRATCH: Array<ProfileSample> = Array::with_max_entries(1, 0);

/// `struct bpf_iter_meta`.
#[repr(C)]
pub struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__task`: `task` is NULL once, at the end.
#[repr(C)]
pub struct IterTaskContext {
    meta: *mut IterMeta,
    task: *const u8,
}

/// Spreads consecutive read sessions' ids over the draw's seeds (the
/// golden ratio's 64-bit multiplier).
const SEED_MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// `TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE`: the sleeping states (with
/// their modifier bits, e.g. `TASK_FREEZABLE`, around them).
const TASK_SLEEPING: u32 = 0x3;

/// x86_64 `struct pt_regs` offsets of `bp`, `ip`, `sp` (see `profile.rs`).
const PT_REGS_BP: usize = 4 * 8;
const PT_REGS_IP: usize = 16 * 8;
const PT_REGS_SP: usize = 19 * 8;

/// What the scheduler keeps of a thread, read at a tick: the fields that
/// tell a woken thread from a preempted one, and its CPU and run-queue
/// times brought up to its run queue's clock.
struct SchedView {
    /// `se.sum_exec_runtime`, plus `rq.clock_task − se.exec_start` when it
    /// is on a CPU (the running slice's part the kernel adds at its next
    /// update).
    exec_ns: u64,
    /// `sched_info.run_delay`, plus `rq.clock − sched_info.last_queued`
    /// while it waits in a run queue.
    run_delay_ns: u64,
    /// Time stolen from the running slice so far (on a CPU; else 0).
    slice_stolen: u64,
    /// In a run queue, waiting for a CPU.
    waiting: bool,
    /// Waiting, and woken from a block it has not run since.
    woken: bool,
}

/// Reads [`SchedView`] of `task` (`state` its `__state`, `on_cpu` whether
/// it runs now).
///
/// Woken is told from preempted by two times the scheduler keeps:
/// `se.exec_start` (task clock) was last set when it left the CPU, and
/// `sched_info.last_queued` (run-queue clock) when it was queued.
/// Preempted, both are the same instant; woken, the queueing came a block
/// later. The two clocks differ by the steal and interrupt time the run
/// queue has accounted (`rq.clock − rq.clock_task` now): a preempted
/// thread's gap is then at most 0 (less by what was stolen while it
/// waited), a woken one's the length of its block. A thread migrated
/// while it waited has `exec_start` 0 and is not counted (load balancing
/// moves preempted threads too).
#[inline(always)]
fn sched_view(task: *const u8, state: u32, on_cpu: bool) -> SchedView {
    // SAFETY (each load): the iterator's task, the offsets of its fields
    // and of the way to its run queue (`se.cfs_rq`, `cfs_rq.rq`), with
    // these types; a NULL pointer on the way loads 0.
    unsafe {
        let cfs_rq = load_field::<*const u8>(task, offset!(task_cfs_rq));
        let rq = load_field::<*const u8>(cfs_rq, offset!(cfs_rq_rq));
        let clock = load_field::<u64>(rq, offset!(rq_clock));
        let clock_task_at = offset!(rq_clock_task);
        let clock_task = if clock_task_at == 0 { 0 } else { load_field::<u64>(rq, clock_task_at) };
        let exec_start = load_field::<u64>(task, offset!(task_exec_start));
        let queued_at = offset!(task_last_queued);
        let queued = if queued_at == 0 { 0 } else { load_field::<u64>(task, queued_at) };
        let mut exec_ns = load_field::<u64>(task, offset!(task_sum_exec_runtime));
        let mut run_delay_ns = load_field::<u64>(task, offset!(task_run_delay));
        let stolen = if clock_task == 0 { 0 } else { clock.saturating_sub(clock_task) };
        if on_cpu {
            if exec_start != 0 && clock_task != 0 {
                exec_ns = exec_ns.saturating_add(clock_task.saturating_sub(exec_start));
            }
            // The slice since its switch-in: run-queue clock against CPU
            // time; the difference is what was stolen from it (as
            // `sched.rs` counts it at the switch-out).
            let (arrival_at, prev_at) =
                (offset!(task_last_arrival), offset!(task_prev_sum_exec_runtime));
            let mut slice_stolen = 0;
            if arrival_at != 0 && prev_at != 0 {
                let wall = clock.saturating_sub(load_field::<u64>(task, arrival_at));
                let ran = exec_ns.saturating_sub(load_field::<u64>(task, prev_at));
                slice_stolen = wall.saturating_sub(ran);
            }
            return SchedView { exec_ns, run_delay_ns, slice_stolen, waiting: false, woken: false };
        }
        let waiting = queued != 0 && load_field::<u32>(task, offset!(task_on_rq)) != 0;
        if waiting {
            run_delay_ns = run_delay_ns.saturating_add(clock.saturating_sub(queued));
        }
        let woken = waiting
            && state == 0
            && exec_start != 0
            && clock_task != 0
            && queued > exec_start.saturating_add(stolen);
        SchedView { exec_ns, run_delay_ns, slice_stolen: 0, waiting, woken }
    }
}

/// The time stolen from thread `tid`'s ended slices, summed over the CPUs'
/// slots of `THREAD_STOLEN` that `sched.rs` keeps for it.
#[inline(always)]
fn stolen_so_far(tid: u32) -> u64 {
    let map = core::ptr::addr_of!(crate::sched::THREAD_STOLEN) as *mut c_void;
    let key = tid & (STOLEN_SLOTS - 1);
    let mut total = 0u64;
    for cpu in 0..TICK_MAX_CPUS {
        // SAFETY: the per-CPU array's definition and a key inside it; the
        // kernel returns NULL past the last possible CPU.
        let p = unsafe { bpf_map_lookup_percpu_elem(map, (&raw const key).cast(), cpu) };
        if p.is_null() {
            break;
        }
        // SAFETY: a slot of that map's value type.
        let slot = unsafe { &*(p as *const StolenSlot) };
        if slot.tid == tid {
            total = total.saturating_add(slot.stolen_ns);
        }
    }
    total
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter.s/task")]
pub extern "C" fn profile_offcpu_ticks(ctx: *mut IterTaskContext) -> i32 {
    // SAFETY: the kernel's context for a task iterator.
    let ctx = unsafe { &*ctx };
    let task = ctx.task;
    if task.is_null() {
        return 0;
    }
    let target = config::target_tgid();
    // SAFETY (every load_field on `task`): the iterator's `struct
    // task_struct *`, and offsets of fields of it with these types.
    if target == 0 || unsafe { load_field::<u32>(task, offset!(task_tgid)) } != target {
        return 0;
    }
    let tid = unsafe { load_field::<u32>(task, offset!(task_pid)) };
    let state = unsafe { load_field::<u32>(task, offset!(task_state)) };
    let on_cpu = unsafe { load_field::<u32>(task, offset!(task_on_cpu)) };
    let preemptions = unsafe { load_field::<u64>(task, offset!(task_nivcsw)) };
    let switches =
        unsafe { load_field::<u64>(task, offset!(task_nvcsw)) }.wrapping_add(preemptions);
    let view = sched_view(task, state, on_cpu != 0);
    let mut t = TickThread {
        switches,
        preemptions,
        // SAFETY: a helper without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        start_ns: unsafe { load_field::<u64>(task, offset!(task_start_time)) },
        exec_ns: view.exec_ns,
        run_delay_ns: view.run_delay_ns,
        stolen_ns: stolen_so_far(tid).saturating_add(view.slice_stolen),
        tid,
        flags: 0,
    };
    if view.waiting {
        t.flags |= tick_flags::WAITING;
    }
    if on_cpu == 0 && (state & TASK_SLEEPING != 0 || view.woken) {
        t.flags |=
            if view.woken { tick_flags::BLOCKED | tick_flags::WOKEN } else { tick_flags::BLOCKED };
        let draw = OFF_CPU_TICK.get(0).copied().unwrap_or_default();
        // A new draw per read (its session's id), the same for an object
        // shown twice in it.
        // SAFETY: the iterator's metadata.
        let seed = draw.seed ^ unsafe { (*ctx.meta).session_id }.wrapping_mul(SEED_MIX);
        if tick_selected(seed, tid, draw.threshold) {
            t.flags |= tick_flags::SELECTED;
            // SAFETY: a map lookup by value; the result is copied.
            let stacked = unsafe { OFF_CPU_STACKED.get(&tid) }.copied();
            if stacked != Some(switches) && build_stack(task, (target, tid)) {
                t.flags |= if still_off_cpu(task, switches) {
                    tick_flags::STACK
                } else {
                    tick_flags::TORN
                };
            }
        }
    }
    // SAFETY: the iterator's `seq_file`, and the bytes of a local.
    let seq = unsafe { (*ctx.meta).seq };
    let head = (&raw const t).cast::<c_void>();
    unsafe { bpf_seq_write(seq.cast(), head, size_of::<TickThread>() as u32) };
    if t.flags & tick_flags::STACK != 0
        && let Some(s) = OFF_CPU_SCRATCH.get_ptr(0)
    {
        // SAFETY: the sample just built; `sample_record_bytes` bounds the
        // length by the value's size.
        let pages = unsafe { (*s).head.user_pages };
        let len = sample_record_bytes(pages) as u32;
        unsafe { bpf_seq_write(seq.cast(), s.cast::<c_void>(), len) };
    }
    0
}

/// Whether `task`, off CPU with `switches` switches before its stack was
/// copied, still is and has not switched since: its registers and stack
/// did not move under the copy. A target thread blocked for microseconds
/// at a time (a server between requests) can be woken and run on another
/// CPU while its pages are copied, which takes microseconds too; such a
/// copy unwound into addresses in no mapping.
#[inline(always)]
fn still_off_cpu(task: *const u8, switches: u64) -> bool {
    // SAFETY: the iterator's task and offsets of its fields with these
    // types, as in `profile_offcpu_ticks`.
    unsafe {
        load_field::<u32>(task, offset!(task_on_cpu)) == 0
            && load_field::<u64>(task, offset!(task_nvcsw))
                .wrapping_add(load_field::<u64>(task, offset!(task_nivcsw)))
                == switches
    }
}

/// Builds blocked thread `task`'s stack in `OFF_CPU_SCRATCH`, as the
/// cpu-clock program builds a sample (`profile::send_stack`): the user
/// registers its last entry into the kernel saved, its kernel stack, and
/// its user stack page by page from the stack pointer's page up to its
/// end as the thread's copies know it, at most [`TICK_STACK_PAGES`].
#[inline(always)]
fn build_stack(task: *const u8, (tgid, tid): (u32, u32)) -> bool {
    let Some(s) = OFF_CPU_SCRATCH.get_ptr_mut(0) else { return false };
    let thread = profile::thread_stack(task);
    // SAFETY: the one scratch slot (see `OFF_CPU_SCRATCH`), written in place;
    // `task` is the iterator's task (trusted), `regs` its `struct pt_regs`.
    unsafe {
        let h = &raw mut (*s).head;
        profile::start_head(h, bpf_ktime_get_ns(), (tgid, tid), sample_flags::OFF_CPU);
        let regs = bpf_task_pt_regs(task as *mut _) as *const u8;
        if regs.is_null() {
            return false;
        }
        let (ip, sp, bp) = (
            load_field::<u64>(regs, PT_REGS_IP),
            load_field::<u64>(regs, PT_REGS_SP),
            load_field::<u64>(regs, PT_REGS_BP),
        );
        let base = profile::set_registers(h, (ip, sp, bp));
        (*h).kernel_bytes = bpf_get_task_stack(
            task as *mut _,
            (*h).kernel_stack.as_mut_ptr().cast(),
            (KERNEL_FRAMES * 8) as u32,
            0,
        ) as i32;
        let dst = (*s).user_stack.as_mut_ptr();
        let task = task as *mut _;
        let pages = profile::copy_stack_pages(dst, base, TICK_STACK_PAGES, thread, |dst, src| {
            bpf_copy_from_user_task(dst, STACK_PAGE as u32, src, task, 0)
        });
        (*h).user_pages = pages;
    }
    true
}
