//! CPU: on-CPU time of the target's thread group, from `sched:sched_switch`.
//! User-space twin: `agent/src/probes/cpu.rs`.
//!
//! At each switch the task leaving the CPU is the current task, so its tgid
//! is `bpf_get_current_pid_tgid() >> 32` and its `sum_exec_runtime` (the
//! scheduler's own running total, at an offset found in BTF by user space)
//! is read from `bpf_get_current_task()`. The growth of that total since the
//! thread last left a CPU is its CPU time: exactly what the kernel accounts,
//! scheduler overhead attribution included, which timestamps between
//! switches would get wrong by microseconds per slice.

use agent_common::CpuAccount;
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};

use crate::config::{self, offset};

#[map]
static CPU_ACCOUNT: PerCpuArray<CpuAccount> = PerCpuArray::with_max_entries(1, 0);

/// tid → `sum_exec_runtime` when the thread last left a CPU (seeded from
/// /proc at attach). LRU: entries of dead threads age out.
#[map]
pub(crate) static THREAD_RUNTIME: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65_536, 0);

/// The current task's `sum_exec_runtime`, ns.
#[inline(always)]
pub(crate) fn current_runtime() -> Option<u64> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let field = unsafe { task.add(offset!(task_sum_exec_runtime)) } as *const u64;
    unsafe { bpf_probe_read_kernel(field) }.ok()
}

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let Some(account) = CPU_ACCOUNT.get_ptr_mut(0) else {
        return 0;
    };
    let account = unsafe { &mut *account };
    if config::in_target()
        && let Some(runtime) = current_runtime()
    {
        let (_, tid) = config::current_tgid_tid();
        // A thread not seen yet was created after attach: its total is all
        // ours. A stored value above the total is a dead thread's whose tid
        // was reused: the new thread's total is all ours too.
        let last = match unsafe { THREAD_RUNTIME.get(&tid) } {
            Some(&last) if last <= runtime => last,
            _ => 0,
        };
        account.on_cpu_ns += runtime - last;
        account.slices += 1;
        let _ = THREAD_RUNTIME.insert(&tid, &runtime, 0);
    }
    account.running_tid =
        unsafe { ctx.read_at::<u32>(offset!(sched_switch_next_pid)) }.unwrap_or(0);
    0
}
