//! CPU probe: `sched:sched_switch` → on-CPU ns of the target's thread group.
//! Kernel side: `agent-ebpf/src/cpu.rs`. Formula and error: `docs/metrics.md#cpu`.

use agent_common::CpuAccount;
use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::RawTracePoint,
};

use super::take_map;
use crate::{btf::Btf, procfs};

/// The kernel fields `sched_switch` reads, from BTF: the leaving task's
/// `se.sum_exec_runtime` and the arriving task's `pid`.
pub fn offsets(btf: &Btf, o: &mut agent_common::TracepointOffsets) -> anyhow::Result<()> {
    o.task_sum_exec_runtime = btf.field_offset("task_struct", &["se", "sum_exec_runtime"])?;
    o.task_pid = btf.field_offset("task_struct", &["pid"])?;
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
    thread_runtime: HashMap<MapData, u32, u64>,
}

impl CpuProbe {
    /// `running`: a process already running, whose threads' CPU totals so
    /// far are seeded from /proc so that only what follows is counted.
    pub fn attach(ebpf: &mut Ebpf, running: Option<u32>) -> anyhow::Result<CpuProbe> {
        let account: PerCpuArray<MapData, CpuAccount> =
            take_map(ebpf, "CPU_ACCOUNT")?.try_into()?;
        let mut thread_runtime: HashMap<MapData, u32, u64> =
            take_map(ebpf, "THREAD_RUNTIME")?.try_into()?;
        if let Some(pid) = running {
            for (tid, runtime) in procfs::thread_runtimes(pid)? {
                thread_runtime.insert(tid, runtime, 0)?;
            }
        }

        let program: &mut RawTracePoint = ebpf
            .program_mut("sched_switch")
            .context("eBPF object has no program sched_switch")?
            .try_into()?;
        program.load().context("loading sched_switch")?;
        program.attach("sched_switch").context("attaching to raw tracepoint sched_switch")?;
        Ok(CpuProbe { account, thread_runtime })
    }

    /// Reads the counters. A thread of the target on a CPU now has run since
    /// it last left one: that part comes from its own total in /proc.
    pub fn read(&self, pid: u32) -> anyhow::Result<CpuReading> {
        let per_cpu = self.account.get(&0, 0)?;
        let mut reading = CpuReading::default();
        for slot in per_cpu.iter() {
            reading.on_cpu_ns += slot.on_cpu_ns;
            reading.slices += slot.slices;
            if slot.running_tid == 0 || pid == 0 {
                continue;
            }
            if let Some(now) = procfs::thread_runtime(pid, slot.running_tid) {
                let last = self.thread_runtime.get(&slot.running_tid, 0).unwrap_or(0);
                reading.on_cpu_ns += now.saturating_sub(last);
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
