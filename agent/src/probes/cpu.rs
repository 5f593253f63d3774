//! CPU probe: `sched:sched_switch` → on-CPU ns of the target's thread group.
//! Kernel side: `agent-ebpf/src/cpu.rs`. Formula and error: `docs/metrics.md#cpu`.

use agent_common::CpuAccount;
use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuValues},
    programs::TracePoint,
};

use super::{monotonic_ns, take_map};
use crate::{procfs, tracefs};

pub fn offsets(
    tracefs_root: &std::path::Path,
    o: &mut agent_common::TracepointOffsets,
) -> anyhow::Result<()> {
    o.sched_switch_next_pid = tracefs::read_format(tracefs_root, "sched", "sched_switch")?.offset(
        "sched:sched_switch",
        "next_pid",
        4,
    )?;
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
    pub fn attach(ebpf: &mut Ebpf) -> anyhow::Result<CpuProbe> {
        let mut account: PerCpuArray<MapData, CpuAccount> =
            take_map(ebpf, "CPU_ACCOUNT")?.try_into()?;
        // A slice running at attach counts from now, not from an unknown start.
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let seed = CpuAccount { last_switch_ns: monotonic_ns(), ..Default::default() };
        account.set(0, PerCpuValues::try_from(vec![seed; nr_cpus])?, 0)?;

        let program: &mut TracePoint = ebpf
            .program_mut("sched_switch")
            .context("eBPF object has no program sched_switch")?
            .try_into()?;
        program.load().context("loading sched_switch")?;
        program
            .attach("sched", "sched_switch")
            .context("attaching to tracepoint sched:sched_switch")?;
        Ok(CpuProbe { account })
    }

    /// Reads the counters. A slice still running now is added when its task
    /// is one of the target's threads (`/proc/PID/task/TID` exists).
    pub fn read(&self, pid: u32) -> anyhow::Result<CpuReading> {
        let per_cpu = self.account.get(&0, 0)?;
        let now = monotonic_ns();
        let mut reading = CpuReading::default();
        for slot in per_cpu.iter() {
            reading.on_cpu_ns += slot.on_cpu_ns;
            reading.slices += slot.slices;
            // The task on this CPU now, if it is ours, has run since its switch-in.
            if slot.running_tid != 0
                && now > slot.last_switch_ns
                && procfs::has_thread(pid, slot.running_tid)
            {
                reading.on_cpu_ns += now - slot.last_switch_ns;
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
