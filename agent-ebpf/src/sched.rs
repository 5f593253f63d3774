//! `sched_switch`, attached only when profiling (`--profile-dir`): the
//! off-CPU and run-queue work for target threads (`offcpu.rs`), one program
//! run per switch. User-space twin: `agent/src/probes/profile.rs`.
//!
//! CPU time itself needs no program: user space reads the target's process
//! CPU clock (`agent/src/probes/cpu.rs`), the scheduler's own running total
//! over the thread group. A program here would run on every context switch
//! of the machine, for every process, in every mode.

use aya_ebpf::{EbpfContext as _, macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    access::load_field,
    config::{self, offset},
    offcpu,
};

/// `TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct
/// *next, unsigned int prev_state)`. Only the task leaving the CPU is
/// looked at: everything is done at a target thread's switch-outs (a
/// block's end too, read back from the kernel's own record of the switch-in
/// that ended it, see `offcpu.rs`), so the common path (the task is not the
/// target's) is an array lookup the verifier inlines and one load.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let target = config::target_tgid();
    if target == 0 || offcpu::mode() == 0 {
        return 0;
    }
    let prev: *const u8 = ctx.arg(1);
    // SAFETY (both load_field calls): `prev` is the tracepoint's `struct
    // task_struct *` argument, and the offsets are of fields of that struct
    // with these types.
    if unsafe { load_field::<u32>(prev, offset!(task_tgid)) } == target {
        let tid = unsafe { load_field::<u32>(prev, offset!(task_pid)) };
        let now = offcpu::switch_clock(prev);
        let (preempted, prev_state) = (ctx.arg::<u8>(0) != 0, ctx.arg::<u32>(3));
        offcpu::switched_out(ctx.as_ptr(), prev, (target, tid), prev_state, preempted, now);
    }
    0
}
