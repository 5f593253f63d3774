//! `sched_switch`, attached only with `--profile-dir --runq-waits` (it runs
//! at every context switch of the machine, ~0.1 µs each here whatever it
//! does: `docs/performance.md`, nineteenth session): the run-queue wait a
//! target thread ends as it is switched in, into a per-CPU histogram
//! (`sched/runq_wait_*`); and the time stolen from the slice a target
//! thread ends as it is switched out, into this CPU's slot for it
//! (`THREAD_STOLEN`, read by the off-CPU ticks; not with `--no-off-cpu`;
//! without `--runq-waits` user space estimates it,
//! `agent/src/profile/host_steal.rs`). User-space twin:
//! `agent/src/probes/profile.rs`.
//!
//! Nothing else runs at context switches. Off-CPU time comes from ticks
//! of a task iterator (`offcpu_ticks.rs`) and the scheduler's own
//! counters: keeping per-thread state here, which exact block-by-block
//! totals would need, was about half of this program's cost on every
//! switch of the machine (`docs/performance.md`, thirteenth session). CPU
//! time needs no program either: user space reads the target's process
//! CPU clock (`agent/src/probes/cpu.rs`).

use agent_common::profile::{
    ProfileStats, RUNQ_BINS, STOLEN_SLOTS, SchedCounts, StolenSlot, runq_bin, sched_work,
};
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};

use crate::{
    access::load_field,
    config::{self, offset},
};

/// Set by user space before load: the [`sched_work`] to do (none without
/// profiling; no steal without off-CPU ticks). The verifier drops the
/// rest.
#[unsafe(no_mangle)]
static PROFILE_SCHED: u32 = 0;

#[map]
static SCHED_COUNTS: PerCpuArray<SchedCounts> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, per target thread (slot `tid % STOLEN_SLOTS`): the time
/// stolen from its slices on this CPU ([`StolenSlot`]). Per CPU so that
/// the switch writes a line of its own CPU's, not the thread's.
#[map]
pub(crate) static THREAD_STOLEN: PerCpuArray<StolenSlot> =
    PerCpuArray::with_max_entries(STOLEN_SLOTS, 0);

/// `TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct
/// *next, unsigned int prev_state)`. For every other process, a check of
/// the two tasks' tgids (fields the switch has just touched).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    // SAFETY: a plain global; volatile so the compiler keeps the load.
    let work = unsafe { core::ptr::read_volatile(&PROFILE_SCHED) };
    let target = config::target_tgid();
    if target == 0 || work == 0 {
        return 0;
    }
    let (prev, next): (*const u8, *const u8) = (ctx.arg(1), ctx.arg(2));
    // SAFETY (each load_field): `prev` and `next` are the tracepoint's
    // `struct task_struct *` arguments, and the offsets are of fields of
    // them with these types.
    if work & sched_work::STOLEN != 0
        && unsafe { load_field::<u32>(prev, offset!(task_tgid)) } == target
    {
        count_stolen(prev);
    }
    if work & sched_work::RUNQ_WAITS == 0
        || unsafe { load_field::<u32>(next, offset!(task_tgid)) } != target
    {
        return 0;
    }
    // Its wait: `rq->clock` (updated by `__schedule` for this switch) less
    // when it was queued, what the kernel adds to its `run_delay` right
    // after (`sched_info_arrive`).
    let queued = unsafe { load_field::<u64>(next, offset!(task_last_queued)) };
    let now = switch_clock(next);
    if queued != 0
        && now >= queued
        && let Some(stats) = crate::profile::stats()
    {
        count_runq_wait(stats, now - queued);
    }
    0
}

/// Target thread `prev` ends a running slice: the time stolen from it (its
/// run-queue clock since its switch-in, `sched_info.last_arrival`, less the
/// CPU time it ran since, `se.prev_sum_exec_runtime`; the scheduler updated
/// both clocks for this switch), into this CPU's slot for it. Nothing is
/// written when nothing was stolen (no hypervisor, or none in this slice).
#[inline(always)]
fn count_stolen(prev: *const u8) {
    let (arrival_at, prev_sum_at) =
        (offset!(task_last_arrival), offset!(task_prev_sum_exec_runtime));
    if arrival_at == 0 || prev_sum_at == 0 {
        return;
    }
    // SAFETY (each load_field): `prev` is the tracepoint's task; offsets of
    // its fields with these types.
    let (arrival, ran, tid) = unsafe {
        (
            load_field::<u64>(prev, arrival_at),
            load_field::<u64>(prev, offset!(task_sum_exec_runtime))
                .wrapping_sub(load_field::<u64>(prev, prev_sum_at)),
            load_field::<u32>(prev, offset!(task_pid)),
        )
    };
    let now = switch_clock(prev);
    let wall = now.wrapping_sub(arrival);
    if arrival == 0 || now < arrival || ran >= wall {
        return;
    }
    let Some(slot) = THREAD_STOLEN.get_ptr_mut(tid & (STOLEN_SLOTS - 1)) else { return };
    // SAFETY: this CPU's slot; programs do not nest on one CPU.
    unsafe {
        if (*slot).tid == tid {
            (*slot).stolen_ns += wall - ran;
        } else {
            (*slot).tid = tid;
            (*slot).stolen_ns = wall - ran;
        }
    }
}

/// One run-queue wait of `wait` ns, into this CPU's histogram.
#[inline(always)]
fn count_runq_wait(stats: &mut ProfileStats, wait: u64) {
    stats.runq_waits += 1;
    stats.runq_total_ns += wait;
    if let Some(c) = SCHED_COUNTS.get_ptr_mut(0) {
        let bin = runq_bin(wait);
        // SAFETY: this CPU's slot; `bin` < RUNQ_BINS.
        if bin < RUNQ_BINS {
            unsafe { (*c).runq[bin] += 1 };
        }
    }
}

/// The time of the switch under way, ns: this CPU's `rq->clock`, which
/// `__schedule` has just updated and `sched_info` times waits with,
/// reached through `task` (on this CPU's run queue) in three plain loads.
/// `bpf_ktime_get_ns` (~90 ns a call here) where the kernel lacks the
/// fields (offsets 0); 0 (nothing measured) if a pointer on the way is
/// NULL.
#[inline(always)]
fn switch_clock(task: *const u8) -> u64 {
    let (to_cfs_rq, to_rq, to_clock) =
        (offset!(task_cfs_rq), offset!(cfs_rq_rq), offset!(rq_clock));
    if to_cfs_rq == 0 || to_rq == 0 || to_clock == 0 {
        // SAFETY: a helper without arguments.
        return unsafe { bpf_ktime_get_ns() };
    }
    // SAFETY: `task` is a tracepoint's `struct task_struct *`; each offset
    // is that of the next field on the way (`se.cfs_rq`, `cfs_rq.rq`,
    // `rq.clock`), so each load goes through a pointer of the type the
    // verifier tracks from BTF (a NULL one loads 0).
    unsafe {
        let cfs_rq = load_field::<*const u8>(task, to_cfs_rq);
        let rq = load_field::<*const u8>(cfs_rq, to_rq);
        load_field::<u64>(rq, to_clock)
    }
}
