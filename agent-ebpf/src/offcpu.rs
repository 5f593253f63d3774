//! Off-CPU stacks and run-queue waits (`--profile-dir`; stacks unless
//! `--no-off-cpu`): BTF tracepoints on `sched_switch`, `sched_wakeup` and
//! `sched_wakeup_new`, attached only when profiling. User-space twin:
//! `agent/src/probes/profile.rs`, read by `agent/src/profile/`.
//!
//! Per target thread one `THREAD_SCHED` entry, updated in place: when it
//! blocks (leaves a CPU not runnable) its stack may be sent (a
//! [`ProfileSample`](agent_common::profile::ProfileSample) flagged
//! `OFF_CPU`, at most `OFF_CPU_STACKS_PER_SEC` per CPU) and the time is
//! kept; when it next runs, a block whose stack was sent gets a
//! `SchedRecord` with how long it was off, any other adds that time to a
//! per-CPU counter. When it is woken (or preempted, still runnable) a
//! run-queue wait starts, and ends in a per-CPU histogram when it runs.
//! Every other switch costs the `TARGET` lookup and two loads.

use agent_common::profile::{
    OFF_CPU_STACKS_PER_SEC, OffCpuBudget, RUNQ_BINS, SchedCounts, SchedRecord, ThreadSched,
    runq_bin, sample_flags, sched_kind,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};

use crate::{
    access::load_field,
    config::{self, offset},
    profile,
};

/// 1 (set by user space) to send a stack when a target thread blocks; 0
/// for run-queue waits only (`--no-off-cpu`). Named by
/// `agent_common::globals::PROFILE_OFF_CPU`.
#[unsafe(no_mangle)]
static PROFILE_OFF_CPU: u32 = 0;

/// `prev_state` of a thread leaving a CPU for good (it exited): not a block.
const TASK_DEAD: u32 = 0x80;

/// tid → its scheduling state.
#[map]
static THREAD_SCHED: LruHashMap<u32, ThreadSched> = LruHashMap::with_max_entries(65_536, 0);
#[map]
static SCHED_COUNTS: PerCpuArray<SchedCounts> = PerCpuArray::with_max_entries(1, 0);
#[map]
static OFF_CPU_BUDGET: PerCpuArray<OffCpuBudget> = PerCpuArray::with_max_entries(1, 0);

/// `tid`'s entry, made if missing (a thread's first switch or wake-up).
#[inline(always)]
fn thread_sched(tid: u32) -> Option<&'static mut ThreadSched> {
    if THREAD_SCHED.get_ptr_mut(tid).is_none() {
        // Zeroed with volatile word stores: LLVM would merge plain zero
        // stores into a memset, which bpf-linker links to a byte loop.
        let mut fresh = core::mem::MaybeUninit::<ThreadSched>::uninit();
        let words = fresh.as_mut_ptr() as *mut u64;
        for i in 0..size_of::<ThreadSched>() / 8 {
            // SAFETY: inside `fresh`, which is a whole number of words.
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
        }
        // SAFETY: every byte was written above.
        let _ = THREAD_SCHED.insert(tid, unsafe { fresh.assume_init_ref() }, 0);
    }
    // SAFETY: a map value; programs on other CPUs touch other threads'
    // entries (a thread runs on one CPU at a time).
    THREAD_SCHED.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
}

/// `TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct
/// *next, unsigned int prev_state)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn profile_sched_switch(ctx: BtfTracePointContext) -> u32 {
    let target = config::target_tgid();
    if target == 0 {
        return 0;
    }
    let (prev, next): (*const u8, *const u8) = (ctx.arg(1), ctx.arg(2));
    // SAFETY (every load_field below): `prev` and `next` are the
    // tracepoint's `struct task_struct *` arguments, and the offsets are of
    // fields of that struct with these types.
    let prev_ours = unsafe { load_field::<u32>(prev, offset!(task_tgid)) } == target;
    let next_ours = unsafe { load_field::<u32>(next, offset!(task_tgid)) } == target;
    if !prev_ours && !next_ours {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(stats) = profile::stats() else { return 0 };
    if prev_ours {
        let tid = unsafe { load_field::<u32>(prev, offset!(task_pid)) };
        let prev_state: u32 = ctx.arg(3);
        let preempted = ctx.arg::<u8>(0) != 0;
        if prev_state & TASK_DEAD != 0 {
            // Gone for good: nothing of it may match a later thread that
            // reuses its tid.
            let _ = THREAD_SCHED.remove(tid);
        } else if let Some(t) = thread_sched(tid) {
            if prev_state == 0 || preempted {
                // Runnable: waiting on a run queue from now.
                t.queued_ns = now;
                t.blocked_ns = 0;
            } else {
                // Blocked. A wait opened by a wake-up while it still ran
                // (the kernel wakes a task that set itself sleeping but
                // had not left the CPU yet) is not one.
                t.queued_ns = 0;
                t.blocked_ns = now;
                t.sampled = 0;
                // `prev` is the current task: its stack is the blocking one.
                let off_cpu = unsafe { core::ptr::read_volatile(&PROFILE_OFF_CPU) } != 0;
                if off_cpu && take_budget(now) {
                    if profile::send_stack(ctx.as_ptr(), target, tid, sample_flags::OFF_CPU, now) {
                        stats.off_cpu_stacks += 1;
                        t.sampled = 1;
                    } else {
                        stats.ring_full += 1;
                    }
                } else if off_cpu {
                    stats.off_cpu_unsampled += 1;
                }
            }
        }
    }
    if next_ours {
        let tid = unsafe { load_field::<u32>(next, offset!(task_pid)) };
        // SAFETY: as in thread_sched.
        if let Some(t) = THREAD_SCHED.get_ptr_mut(tid).map(|p| unsafe { &mut *p }) {
            if t.blocked_ns != 0 {
                let off = now.saturating_sub(t.blocked_ns);
                if t.sampled != 0 {
                    let record = SchedRecord {
                        time_ns: t.blocked_ns,
                        duration_ns: off,
                        tid,
                        kind: sched_kind::OFF_CPU_END,
                    };
                    if !profile::send_sched(record) {
                        stats.ring_full += 1;
                    }
                } else if let Some(c) = SCHED_COUNTS.get_ptr_mut(0) {
                    // SAFETY: this CPU's slot.
                    unsafe { (*c).off_cpu_unsampled_ns += off };
                }
                t.blocked_ns = 0;
            }
            if t.queued_ns != 0 {
                let wait = now.saturating_sub(t.queued_ns);
                t.queued_ns = 0;
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
        }
    }
    0
}

/// ns of budget one stack costs, and the most that can be saved up (a
/// burst of 25 stacks: what the ring holds room for).
const STACK_COST_NS: u64 = 1_000_000_000 / OFF_CPU_STACKS_PER_SEC;
const MAX_CREDIT_NS: u64 = 25 * STACK_COST_NS;

/// One stack copy from this CPU's budget: a token bucket refilled at
/// `OFF_CPU_STACKS_PER_SEC`, so stacks are spread over time rather than
/// spent in a burst at the start of each second.
#[inline(always)]
fn take_budget(now: u64) -> bool {
    let Some(b) = OFF_CPU_BUDGET.get_ptr_mut(0) else { return false };
    // SAFETY: a per-CPU slot of this CPU.
    let b = unsafe { &mut *b };
    let credit = (b.credit_ns + now.saturating_sub(b.last_ns)).min(MAX_CREDIT_NS);
    b.last_ns = now;
    if credit < STACK_COST_NS {
        b.credit_ns = credit;
        return false;
    }
    b.credit_ns = credit - STACK_COST_NS;
    true
}

/// `p`'s tid when it is a target thread.
#[inline(always)]
fn target_task(ctx: &BtfTracePointContext) -> Option<u32> {
    let target = config::target_tgid();
    let p: *const u8 = ctx.arg(0);
    // SAFETY: `p` is the tracepoint's `struct task_struct *` argument.
    let ours = target != 0 && unsafe { load_field::<u32>(p, offset!(task_tgid)) } == target;
    ours.then(|| unsafe { load_field::<u32>(p, offset!(task_pid)) })
}

/// `TP_PROTO(struct task_struct *p)`: a blocked target thread was woken, its
/// run-queue wait starts (a wake-up of one that has not left the CPU is
/// not a wait).
#[btf_tracepoint(function = "sched_wakeup")]
pub fn profile_sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    let Some(tid) = target_task(&ctx) else { return 0 };
    // SAFETY: as in thread_sched.
    if let Some(t) = THREAD_SCHED.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
        && t.blocked_ns != 0
    {
        t.queued_ns = unsafe { bpf_ktime_get_ns() };
    }
    0
}

/// `TP_PROTO(struct task_struct *p)`: a new target thread waits for its
/// first run.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn profile_sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    let Some(tid) = target_task(&ctx) else { return 0 };
    if let Some(t) = thread_sched(tid) {
        t.queued_ns = unsafe { bpf_ktime_get_ns() };
    }
    0
}
