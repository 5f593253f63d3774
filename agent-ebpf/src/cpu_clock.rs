//! The cpu-clock `perf_event` program of every CPU, at `--profile-hz`,
//! attached only when profiling (`--profile-dir`): a sample of the target
//! thread that is running (`profile.rs` builds and sends it). User-space
//! twin: `agent/src/probes/profile.rs`.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_ktime_get_ns, generated::bpf_get_current_task_btf},
    macros::perf_event,
    programs::PerfEventContext,
};

use crate::{config, profile};

#[perf_event]
pub fn profile_cpu_clock(ctx: PerfEventContext) -> u32 {
    let Some(tid) = config::target_thread() else { return 0 };
    let Some(stats) = profile::stats() else { return 0 };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a helper without arguments; the current task, BTF-typed.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    // Where its stack ends, as its last copies found it: one storage
    // lookup per sample of the target, ~200 a second.
    let state = profile::thread_stack(task);
    let ids = (config::target_tgid(), tid);
    if profile::send_stack(ctx.as_ptr(), ids, 0, now, state) {
        stats.sent += 1;
    } else {
        stats.ring_full += 1;
    }
    0
}
