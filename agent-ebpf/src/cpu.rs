//! CPU: on-CPU time of the target's thread group, from `sched:sched_switch`.
//! User-space twin: `agent/src/probes/cpu.rs`.
//!
//! At each switch the task leaving the CPU is the current task, so its tgid
//! is `bpf_get_current_pid_tgid() >> 32`; its `sum_exec_runtime` (the
//! scheduler's own running total, at an offset found in BTF by user space)
//! is read from the `prev` argument. The growth of that total since the
//! thread last left a CPU is its CPU time: exactly what the kernel accounts,
//! scheduler overhead attribution included, which timestamps between
//! switches would get wrong by microseconds per slice.

use agent_common::CpuAccount;
use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};

use crate::config::{self, offset};

#[map]
static CPU_ACCOUNT: PerCpuArray<CpuAccount> = PerCpuArray::with_max_entries(1, 0);

/// tid → `sum_exec_runtime` when the thread last left a CPU (seeded from
/// /proc at attach). LRU: entries of dead threads age out.
#[map]
pub(crate) static THREAD_RUNTIME: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65_536, 0);

/// `task`'s `sum_exec_runtime`, ns.
#[inline(always)]
pub(crate) fn runtime_of(task: u64) -> Option<u64> {
    config::read_field(task, offset!(task_sum_exec_runtime))
}

/// A raw tracepoint: `TP_PROTO(bool preempt, struct task_struct *prev,
/// struct task_struct *next, unsigned int prev_state)`. It runs on every
/// context switch of the machine, so the common path (neither task is the
/// target's) is one map lookup, one helper and one kernel read.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> u32 {
    let Some(account) = CPU_ACCOUNT.get_ptr_mut(0) else {
        return 0;
    };
    let account = unsafe { &mut *account };
    let (prev, next): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    // prev is the current task: its ids come from the helper.
    let (tgid, tid) = config::current_tgid_tid();
    let target = config::target_tgid();
    if target != 0
        && tgid == target
        && let Some(runtime) = runtime_of(prev)
    {
        // Updated in place: a map insert per switch would cost more than
        // everything else here together.
        match THREAD_RUNTIME.get_ptr_mut(&tid) {
            Some(last) => {
                let last = unsafe { &mut *last };
                // A stored value above the total is a dead thread's whose
                // tid was reused: the new thread's total is all ours.
                let from = if *last <= runtime { *last } else { 0 };
                account.on_cpu_ns += runtime - from;
                *last = runtime;
            }
            None => {
                // Not seen yet: created after attach, its total is all ours.
                account.on_cpu_ns += runtime;
                let _ = THREAD_RUNTIME.insert(&tid, &runtime, 0);
            }
        }
        account.slices += 1;
    }
    account.running_tid = config::read_field::<u32>(next, offset!(task_pid)).unwrap_or(0);
    0
}
