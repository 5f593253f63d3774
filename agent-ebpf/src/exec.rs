//! Process lifecycle: `sched:sched_process_exec` arms the target in launch
//! mode (our own child's exec) and wait-for-exec mode (a matching program),
//! and stamps time zero for startup. User-space twin: `agent/src/probes/exec.rs`.

use agent_common::{TargetMember, exec_match};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
        generated::bpf_get_current_cgroup_id,
    },
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};

use crate::{
    access::{read_const, read_field, zero_words},
    config::{self, EXEC_MATCH, TARGET, offset},
};

/// Scratch space for the exec'd filename (too large for the BPF stack).
#[map]
static FILENAME: PerCpuArray<[u8; 256]> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    if config::target_set() {
        exec_into_set(&ctx);
        return 0;
    }
    let Some(target) = TARGET.get_ptr_mut(0) else { return 0 };
    let target = unsafe { &mut *target };
    if target.tgid != 0 {
        // Armed already: a later exec by the target is still the target,
        // with a new address space (counted for the profiler's unwinder).
        if target.tgid == config::current_tgid_tid().0 {
            target.execs += 1;
        }
        return 0;
    }
    let m = read_const(&EXEC_MATCH);
    let matched = match m.kind {
        exec_match::PID => {
            let pid = unsafe { ctx.read_at::<i32>(offset!(exec_pid)) }.unwrap_or(0);
            pid as u32 == m.pid
        }
        exec_match::COMM => match bpf_get_current_comm() {
            Ok(comm) => same_name(&comm, &m.name_a, m.len_a),
            Err(_) => false,
        },
        exec_match::PATH => filename_matches(&ctx, m),
        _ => false,
    };
    if matched {
        let (tgid, _) = config::current_tgid_tid();
        // CPU time before the exec (the launcher's) is not the target's:
        // user space counts the process CPU clock from this thread's total
        // now (after the exec, the only thread left).
        let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
        target.runtime_at_exec_ns =
            read_field::<u64>(task, offset!(task_sum_exec_runtime)).unwrap_or(0);
        // Its page faults so far, as /proc/PID/stat sums them: the live
        // thread's (after the exec, the only one) and the dead threads'.
        let signal = read_field::<u64>(task, offset!(task_signal)).unwrap_or(0);
        let faults = |task_field, signal_field| {
            let own = read_field::<u64>(task, task_field).unwrap_or(0);
            let dead = if signal != 0 { read_field::<u64>(signal, signal_field) } else { None };
            own + dead.unwrap_or(0)
        };
        target.min_flt_at_exec = faults(offset!(task_min_flt), offset!(signal_min_flt));
        target.maj_flt_at_exec = faults(offset!(task_maj_flt), offset!(signal_maj_flt));
        target.tgid = tgid;
        target.exec_ns = unsafe { bpf_ktime_get_ns() };
        target.execs = 1;
    }
    0
}

/// Node mode: an exec whose command name, path or cgroup is a selector's
/// makes the exec'ing thread group a target (a restarted service is followed
/// into its new process from its first instruction); a target's own exec
/// is counted. Execs are rare: the three lookups cost nothing that matters.
#[inline(always)]
fn exec_into_set(ctx: &TracePointContext) {
    let (tgid, _) = config::current_tgid_tid();
    if let Some(member) = config::TARGETS.get_ptr_mut(&tgid) {
        unsafe { (*member).execs += 1 };
        return;
    }
    let Some(selector) = set_selector(ctx) else { return };
    let member = TargetMember { selector, execs: 1, exec_ns: unsafe { bpf_ktime_get_ns() } };
    if config::TARGETS.insert(&tgid, &member, BPF_NOEXIST.into()).is_err()
        && let Some(refused) = config::TARGETS_REFUSED.get_ptr_mut(0)
    {
        unsafe { *refused += 1 };
    }
}

/// The selector this exec matches: by command name, by cgroup, by path.
#[inline(always)]
fn set_selector(ctx: &TracePointContext) -> Option<u32> {
    if let Ok(comm) = bpf_get_current_comm()
        && let Some(&s) = unsafe { config::EXEC_COMMS.get(&comm) }
    {
        return Some(s);
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if let Some(&s) = unsafe { config::EXEC_CGROUPS.get(&cgroup) } {
        return Some(s);
    }
    let loc = unsafe { ctx.read_at::<u32>(offset!(exec_filename)) }.ok()?;
    let buf = FILENAME.get_ptr_mut(0)?;
    // The key is the whole buffer: NUL-padded past the string.
    zero_words(buf);
    let buf = unsafe { &mut *buf };
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    unsafe { bpf_probe_read_kernel_str_bytes(src, buf) }.ok()?;
    unsafe { config::EXEC_PATHS.get(&*buf) }.copied()
}

/// `__data_loc char[] filename`: the low 16 bits are the string's offset in
/// the record.
#[inline(always)]
fn filename_matches(ctx: &TracePointContext, m: &agent_common::ExecMatch) -> bool {
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(offset!(exec_filename)) }) else { return false };
    let Some(buf) = FILENAME.get_ptr_mut(0) else { return false };
    let buf = unsafe { &mut *buf };
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    if unsafe { bpf_probe_read_kernel_str_bytes(src, buf) }.is_err() {
        return false;
    }
    same_name(buf, &m.name_a, m.len_a) || same_name(buf, &m.name_b, m.len_b)
}

/// `have` (NUL-terminated or full) equals the first `len` bytes of `want`.
#[inline(always)]
fn same_name(have: &[u8], want: &[u8; 256], len: u32) -> bool {
    let len = len as usize;
    if len == 0 || len > exec_match::NAME_MAX || len > have.len() {
        return false;
    }
    for i in 0..exec_match::NAME_MAX {
        if i >= len {
            // The name must end here too.
            return have.get(i).is_none_or(|&b| b == 0);
        }
        match (have.get(i), want.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
    false
}

use aya_ebpf::EbpfContext as _;
