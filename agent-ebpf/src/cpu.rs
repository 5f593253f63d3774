//! CPU: on-CPU time of the target's thread group, from `sched_switch`.
//! User-space twin: `agent/src/probes/cpu.rs`.
//!
//! What is counted is each thread's `se.sum_exec_runtime`, the scheduler's
//! own running total (at an offset found in BTF by user space): its growth
//! over a slice is exactly what the kernel accounts, scheduler overhead
//! attribution included, which timestamps between switches would get wrong
//! by microseconds per slice.
//!
//! The program runs on every context switch of the machine, so it avoids
//! helpers and hash maps: it is a BTF-typed tracepoint, whose `prev` and
//! `next` are BTF pointers read with plain loads, and the start of a slice
//! is kept in this CPU's slot of `CPU_ACCOUNT`, not per thread. A task only
//! changes CPU through a switch, so the target's thread recorded at its
//! switch-in is `prev` of the next switch on the same CPU.
//!
//! With `--profile-dir` the same program also does the off-CPU and
//! run-queue work for target threads (`offcpu.rs`): one program run per
//! switch instead of two.

use agent_common::CpuAccount;
use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};

use crate::{
    access::{load_field, read_field},
    config::{self, offset},
    offcpu,
};

#[map]
static CPU_ACCOUNT: PerCpuArray<CpuAccount> = PerCpuArray::with_max_entries(1, 0);

/// tid → `sum_exec_runtime` just before attach, seeded from /proc by user
/// space in attach mode: where the slice of a thread already on a CPU then
/// starts counting. Read only when a slice's switch-in was not seen, so it
/// stays off the common path. LRU: never full.
#[map]
static THREAD_RUNTIME: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65_536, 0);

/// `task`'s `sum_exec_runtime`, ns, through `bpf_probe_read_kernel` (for
/// the exec hook, whose task pointer is not BTF-typed).
#[inline(always)]
pub(crate) fn runtime_of(task: u64) -> Option<u64> {
    read_field(task, offset!(task_sum_exec_runtime))
}

/// Records `tid`, of the target and on this CPU now with total `runtime`, as
/// if its switch-in had been seen (the exec hook, when it arms the target).
#[inline(always)]
pub(crate) fn record_running(tid: u32, runtime: u64) {
    if let Some(account) = CPU_ACCOUNT.get_ptr_mut(0) {
        let account = unsafe { &mut *account };
        account.runtime_at_switch_in = runtime;
        account.running_tid = tid;
    }
}

/// `TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct
/// *next, unsigned int prev_state)`. The common path (neither task is the
/// target's) is two array lookups the verifier inlines and two loads. When
/// profiling (`offcpu::mode()` non-zero, a load-time constant) a target
/// thread's switches also feed the off-CPU and run-queue profiles.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let target = config::target_tgid();
    if target == 0 {
        return 0;
    }
    let Some(account) = CPU_ACCOUNT.get_ptr_mut(0) else {
        return 0;
    };
    let account = unsafe { &mut *account };
    let (prev, next): (*const u8, *const u8) = (ctx.arg(1), ctx.arg(2));
    // Read once, when a profiling path first needs it.
    let mut now = 0;
    // SAFETY (every load_field below): `prev` and `next` are the
    // tracepoint's `struct task_struct *` arguments, and the offsets are of
    // fields of that struct with these types.
    if unsafe { load_field::<u32>(prev, offset!(task_tgid)) } == target {
        let tid = unsafe { load_field::<u32>(prev, offset!(task_pid)) };
        let runtime = unsafe { load_field::<u64>(prev, offset!(task_sum_exec_runtime)) };
        let start = if account.running_tid == tid {
            account.runtime_at_switch_in
        } else {
            start_of_unseen_slice(prev, tid, runtime)
        };
        account.on_cpu_ns += runtime.saturating_sub(start);
        account.slices += 1;
        if offcpu::mode() != 0 {
            now = offcpu::now();
            let (preempted, prev_state) = (ctx.arg::<u8>(0) != 0, ctx.arg::<u32>(3));
            offcpu::switched_out(ctx.as_ptr(), prev, (target, tid), prev_state, preempted, now);
        }
    }
    if unsafe { load_field::<u32>(next, offset!(task_tgid)) } == target {
        let tid = unsafe { load_field::<u32>(next, offset!(task_pid)) };
        account.runtime_at_switch_in =
            unsafe { load_field::<u64>(next, offset!(task_sum_exec_runtime)) };
        account.running_tid = tid;
        if offcpu::mode() != 0 {
            if now == 0 {
                now = offcpu::now();
            }
            offcpu::switched_in(next, tid, now);
        }
    } else {
        account.running_tid = 0;
    }
    0
}

/// Where the slice of thread `tid` (`task`, total now `runtime`) started
/// when its switch-in was not seen. Either it has been on this CPU since
/// before attach, or the switch-in had no `sched_switch` event: some kernels
/// emit none when certain tasks leave a CPU (seen on a Firecracker guest,
/// for its init's threads).
///
/// The scheduler itself marks the start: `se.prev_sum_exec_runtime` is the
/// total when the fair class last picked the task. A slice begun before
/// attach counts only from the total seeded then (`THREAD_RUNTIME`); a seed
/// above the total is a dead thread's whose tid was reused, and is ignored.
#[inline(always)]
fn start_of_unseen_slice(task: *const u8, tid: u32, runtime: u64) -> u64 {
    // SAFETY: as in sched_switch, `task` is its `prev`.
    let picked_at = unsafe { load_field::<u64>(task, offset!(task_prev_sum_exec_runtime)) };
    let at_attach = match unsafe { THREAD_RUNTIME.get(&tid) } {
        Some(&seed) if seed <= runtime => seed,
        _ => 0,
    };
    picked_at.max(at_attach)
}
