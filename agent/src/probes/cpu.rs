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
use crate::procfs;

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
    pub fn attach(ebpf: &mut Ebpf, _pid: u32) -> anyhow::Result<CpuProbe> {
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
