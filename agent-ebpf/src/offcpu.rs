//! Off-CPU stacks and run-queue waits (`--profile-dir`, unless
//! `--no-off-cpu`): BTF tracepoints on `sched_switch`, `sched_wakeup` and
//! `sched_wakeup_new`, attached only when profiling. User-space twin:
//! `agent/src/probes/profile.rs`, records read by `agent/src/profile/`.
//!
//! When a target thread leaves a CPU not runnable (it blocked), its stack
//! is sent as a [`ProfileSample`](agent_common::profile::ProfileSample)
//! flagged `OFF_CPU` (at most `OFF_CPU_STACKS_PER_SEC` per CPU) and the time
//! is kept by tid; when it next runs, a `SchedRecord` says how long it was
//! off. A target thread woken (or preempted, still runnable) starts a
//! run-queue wait that ends when it runs. Every other switch costs the
//! `TARGET` lookup and two loads.

use agent_common::profile::{
    OFF_CPU_STACKS_PER_SEC, OffCpuBudget, OffCpuStart, SchedRecord, sample_flags, sched_kind,
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

/// tid → when it blocked.
#[map]
static OFF_CPU_START: LruHashMap<u32, OffCpuStart> = LruHashMap::with_max_entries(65_536, 0);
/// tid → when it became runnable (woken, or preempted).
#[map]
static RUNQ_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65_536, 0);
#[map]
static OFF_CPU_BUDGET: PerCpuArray<OffCpuBudget> = PerCpuArray::with_max_entries(1, 0);

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
        if prev_state == 0 || preempted {
            // Preempted: runnable, waiting on a run queue from now. A wait
            // already open means its end (a switch-in) was not seen.
            if unsafe { RUNQ_START.get(&tid) }.is_some() {
                stats.runq_unended += 1;
            }
            let _ = RUNQ_START.insert(&tid, &now, 0);
        } else if prev_state & TASK_DEAD != 0 {
            // Gone for good: nothing of it may match a later thread that
            // reuses its tid.
            let _ = OFF_CPU_START.remove(&tid);
            let _ = RUNQ_START.remove(&tid);
        } else if prev_state & TASK_DEAD == 0
            && unsafe { core::ptr::read_volatile(&PROFILE_OFF_CPU) } != 0
        {
            let _ = OFF_CPU_START.insert(&tid, &OffCpuStart { time_ns: now }, 0);
            // `prev` is the current task: its stack is the blocking one.
            if take_budget(now) {
                if profile::send_stack(ctx.as_ptr(), target, tid, sample_flags::OFF_CPU, now) {
                    stats.off_cpu_stacks += 1;
                } else {
                    stats.ring_full += 1;
                }
            } else {
                stats.off_cpu_unsampled += 1;
            }
        }
    }
    if next_ours {
        let tid = unsafe { load_field::<u32>(next, offset!(task_pid)) };
        if let Some(start) = unsafe { OFF_CPU_START.get(&tid) } {
            let start = start.time_ns;
            let _ = OFF_CPU_START.remove(&tid);
            let record = SchedRecord {
                time_ns: start,
                duration_ns: now.saturating_sub(start),
                tid,
                kind: sched_kind::OFF_CPU_END,
            };
            if !profile::send_sched(record) {
                stats.ring_full += 1;
            }
        }
        if let Some(&queued) = unsafe { RUNQ_START.get(&tid) } {
            let _ = RUNQ_START.remove(&tid);
            let record = SchedRecord {
                time_ns: queued,
                duration_ns: now.saturating_sub(queued),
                tid,
                kind: sched_kind::RUNQ_WAIT,
            };
            if profile::send_sched(record) {
                stats.runq_waits += 1;
            } else {
                stats.ring_full += 1;
            }
        }
    }
    0
}

/// One stack copy from this CPU's budget for the current second.
#[inline(always)]
fn take_budget(now: u64) -> bool {
    let Some(b) = OFF_CPU_BUDGET.get_ptr_mut(0) else { return false };
    // SAFETY: a per-CPU slot of this CPU.
    let b = unsafe { &mut *b };
    if now.saturating_sub(b.window_ns) >= 1_000_000_000 {
        b.window_ns = now;
        b.used = 0;
    }
    if b.used >= OFF_CPU_STACKS_PER_SEC {
        return false;
    }
    b.used += 1;
    true
}

/// A target thread made runnable: its run-queue wait starts.
#[inline(always)]
fn woken(ctx: &BtfTracePointContext) -> u32 {
    let target = config::target_tgid();
    if target == 0 {
        return 0;
    }
    let p: *const u8 = ctx.arg(0);
    // SAFETY: `p` is the tracepoint's `struct task_struct *` argument.
    if unsafe { load_field::<u32>(p, offset!(task_tgid)) } != target {
        return 0;
    }
    let tid = unsafe { load_field::<u32>(p, offset!(task_pid)) };
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = RUNQ_START.insert(&tid, &now, 0);
    0
}

/// `TP_PROTO(struct task_struct *p)`.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn profile_sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    woken(&ctx)
}

/// `TP_PROTO(struct task_struct *p)`.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn profile_sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    woken(&ctx)
}
