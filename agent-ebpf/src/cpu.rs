//! CPU: on-CPU time of the target's thread group from `sched:sched_switch`.
//! User-space twin: `agent/src/probes/cpu.rs`.

use agent_common::CpuAccount;
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};

use crate::config;

#[map]
static CPU_ACCOUNT: PerCpuArray<CpuAccount> = PerCpuArray::with_max_entries(1, 0);

/// Fires in the context of `prev` (the task leaving the CPU), so its tgid is
/// the current tgid. Cost: one helper for the time, one for the tgid, one
/// per-CPU lookup, one read of `next_pid`.
#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let Some(account) = CPU_ACCOUNT.get_ptr_mut(0) else {
        return 0;
    };
    let account = unsafe { &mut *account };
    let now = unsafe { bpf_ktime_get_ns() };
    if config::in_target() && account.last_switch_ns != 0 {
        account.on_cpu_ns += now.saturating_sub(account.last_switch_ns);
        account.slices += 1;
    }
    account.last_switch_ns = now;
    account.running_tid =
        unsafe { ctx.read_at::<u32>(config::offset!(sched_switch_next_pid)) }.unwrap_or(0);
    0
}
