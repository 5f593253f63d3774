//! CPU probe: `sched:sched_switch` → on-CPU ns of the target's thread group.
//! Kernel side: `agent-ebpf/src/cpu.rs`. Formula and error: `docs/metrics.md#cpu`.

use agent_common::{
    CpuAccount,
    names::{maps, programs},
};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};

use super::{
    hook::{self, Hook},
    take_map,
};
use crate::{btf::Btf, procfs};

/// The `task_struct` fields `sched_switch` loads from `prev` and `next`,
/// from BTF: `tgid` (is it the target's), `pid`, `se.sum_exec_runtime` and
/// `se.prev_sum_exec_runtime`; `sched_info.run_delay` when profiling.
pub fn offsets(btf: &Btf, o: &mut agent_common::TracepointOffsets) -> anyhow::Result<()> {
    o.task_sum_exec_runtime = btf.field_offset("task_struct", &["se", "sum_exec_runtime"])?;
    o.task_prev_sum_exec_runtime =
        btf.field_offset("task_struct", &["se", "prev_sum_exec_runtime"])?;
    o.task_pid = btf.field_offset("task_struct", &["pid"])?;
    o.task_tgid = btf.field_offset("task_struct", &["tgid"])?;
    // Profiling's run-queue waits only; absent without CONFIG_SCHED_INFO
    // (0: the program then counts none, and the summary says so).
    o.task_run_delay = btf.field_offset("task_struct", &["sched_info", "run_delay"]).unwrap_or(0);
    Ok(())
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReading {
    /// On-CPU ns since attach, including slices still running at the read.
    pub on_cpu_ns: u64,
    /// Slices of target threads that ended since attach.
    pub slices: u64,
}

pub struct CpuProbe {
    account: PerCpuArray<MapData, CpuAccount>,
}

impl CpuProbe {
    /// `running`: a process already running, whose threads' CPU totals so
    /// far are seeded from /proc so that only what follows is counted.
    /// `kernel_btf` finds the tracepoint's BTF type, which the program is
    /// verified against.
    pub fn attach(
        ebpf: &mut Ebpf,
        kernel_btf: &aya::Btf,
        running: Option<u32>,
    ) -> anyhow::Result<CpuProbe> {
        let account: PerCpuArray<MapData, CpuAccount> =
            take_map(ebpf, maps::CPU_ACCOUNT)?.try_into()?;
        // Needed by the kernel side only (for threads already on a CPU at
        // attach): not kept.
        let mut thread_runtime: HashMap<MapData, u32, u64> =
            take_map(ebpf, maps::THREAD_RUNTIME)?.try_into()?;
        if let Some(pid) = running {
            for (tid, runtime) in procfs::thread_runtimes(pid)? {
                thread_runtime.insert(tid, runtime, 0)?;
            }
        }

        hook::attach(
            ebpf,
            programs::SCHED_SWITCH,
            Hook::BtfTracePoint { name: "sched_switch", btf: kernel_btf },
        )?;
        Ok(CpuProbe { account })
    }

    /// Reads the counters. A thread of the target on a CPU now has run since
    /// it was switched in: that part is its /proc total minus the total its
    /// CPU's slot recorded then.
    pub fn read(&self, pid: u32) -> anyhow::Result<CpuReading> {
        let per_cpu = self.account.get(&0, 0)?;
        let mut reading = CpuReading::default();
        for slot in per_cpu.iter() {
            reading.on_cpu_ns += slot.on_cpu_ns;
            reading.slices += slot.slices;
        }
        // No target thread on any CPU (or no target yet): nothing running to
        // add, and no second read.
        if pid == 0 || per_cpu.iter().all(|slot| slot.running_tid == 0) {
            return Ok(reading);
        }
        // A slot is two fields the kernel writes at every switch of the
        // target's threads, and the map copy is not atomic: one read may
        // pair a thread with another's total. A slot that did not change
        // between two reads is whole; one that did was being switched, and
        // its running slice is left to its switch-out.
        let again = self.account.get(&0, 0)?;
        for (slot, again) in per_cpu.iter().zip(again.iter()) {
            if slot.running_tid == 0
                || (slot.running_tid, slot.runtime_at_switch_in)
                    != (again.running_tid, again.runtime_at_switch_in)
            {
                continue;
            }
            if let Some(now) = procfs::thread_runtime(pid, slot.running_tid) {
                reading.on_cpu_ns += now.saturating_sub(slot.runtime_at_switch_in);
            }
        }
        Ok(reading)
    }
}

/// Runs a short pinned thread on every online CPU, so each CPU passes through
/// `sched_switch` right after attach and `running_tid` names the task really
/// on it. Without this, a target thread that kept a CPU since before attach
/// is invisible to the first reading and its slice since attach would be
/// added to the first window only when it ends.
pub fn force_switch_on_every_cpu() -> anyhow::Result<()> {
    let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?;
    let threads: Vec<_> = cpus
        .into_iter()
        .map(|cpu| {
            std::thread::spawn(move || {
                // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu as usize, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
