//! Memory probe: `kmem:rss_stat` → RSS and peak; perf software events → minor
//! and major page faults. Kernel side: `agent-ebpf/src/memory.rs`.
//! Formulas and errors: `docs/metrics.md#memory`.

use agent_common::{
    FaultCounts, RssCounters, RssStats,
    names::{maps, programs},
    rss_member,
};
use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::perf_event::SoftwareEvent,
};

use super::{
    hook::{self, Hook},
    take_map,
};
use crate::{procfs, tracefs};

pub fn offsets(
    tracefs_root: &std::path::Path,
    o: &mut agent_common::TracepointOffsets,
) -> anyhow::Result<()> {
    let ev = "kmem:rss_stat";
    let f = tracefs::read_format(tracefs_root, "kmem", "rss_stat")?;
    o.rss_stat_mm_id = f.offset(ev, "mm_id", 4)?;
    o.rss_stat_curr = f.offset(ev, "curr", 4)?;
    o.rss_stat_member = f.offset(ev, "member", 4)?;
    o.rss_stat_size = f.offset(ev, "size", 8)?;
    Ok(())
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryReading {
    /// file + anon + shmem, bytes.
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub own_updates: u64,
    pub foreign_updates: u64,
    /// `rss_stat` events from another context before the target's mm was known.
    pub unattributed: u64,
}

pub struct MemoryProbe {
    counters: Array<MapData, RssCounters>,
    stats: PerCpuArray<MapData, RssStats>,
    faults: PerCpuArray<MapData, FaultCounts>,
}

impl MemoryProbe {
    /// `running`: a process already running, whose RSS is seeded from
    /// /proc. A target armed at exec starts from an empty mm instead.
    pub fn attach(ebpf: &mut Ebpf, running: Option<u32>) -> anyhow::Result<MemoryProbe> {
        let mut counters: Array<MapData, RssCounters> =
            take_map(ebpf, maps::RSS_COUNTERS)?.try_into()?;
        let mut stats: PerCpuArray<MapData, RssStats> =
            take_map(ebpf, maps::RSS_STATS)?.try_into()?;
        let faults: PerCpuArray<MapData, FaultCounts> =
            take_map(ebpf, maps::FAULT_COUNTS)?.try_into()?;

        // Seed from /proc: rss_stat only reports changes, so a quiet target
        // would otherwise read as 0 until its next fault.
        if let Some(pid) = running {
            let status =
                procfs::read_status(pid).with_context(|| format!("reading /proc/{pid}/status"))?;
            let mut seed = RssCounters::default();
            seed.member_bytes[rss_member::FILE] = status.rss_file as i64;
            seed.member_bytes[rss_member::ANON] = status.rss_anon as i64;
            seed.member_bytes[rss_member::SWAP] = status.vm_swap as i64;
            seed.member_bytes[rss_member::SHMEM] = status.rss_shmem as i64;
            counters.set(0, seed, 0)?;
            let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            let mut per_cpu = vec![RssStats::default(); nr_cpus];
            per_cpu[0].peak_rss_bytes = status.rss_file + status.rss_anon + status.rss_shmem;
            stats.set(0, PerCpuValues::try_from(per_cpu)?, 0)?;
        }

        hook::attach(
            ebpf,
            programs::RSS_STAT,
            Hook::TracePoint { category: "kmem", name: "rss_stat" },
        )?;
        for (program, event) in [
            (programs::PAGE_FAULT_MINOR, SoftwareEvent::PageFaultsMin),
            (programs::PAGE_FAULT_MAJOR, SoftwareEvent::PageFaultsMaj),
        ] {
            hook::attach(ebpf, program, Hook::SoftwareEventOnEveryCpu(event))?;
        }
        Ok(MemoryProbe { counters, stats, faults })
    }

    pub fn read(&self) -> anyhow::Result<MemoryReading> {
        let counters = self.counters.get(&0, 0)?;
        let m = counters.member_bytes;
        let rss = m[rss_member::FILE] + m[rss_member::ANON] + m[rss_member::SHMEM];
        let mut r = MemoryReading { rss_bytes: rss.max(0) as u64, ..Default::default() };
        for s in self.stats.get(&0, 0)?.iter() {
            r.peak_rss_bytes = r.peak_rss_bytes.max(s.peak_rss_bytes);
            r.own_updates += s.own_updates;
            r.foreign_updates += s.foreign_updates;
            r.unattributed += s.unattributed;
        }
        for f in self.faults.get(&0, 0)?.iter() {
            r.minor_faults += f.minor;
            r.major_faults += f.major;
        }
        // The running value can pass the per-CPU peaks only by a racing store.
        r.peak_rss_bytes = r.peak_rss_bytes.max(r.rss_bytes);
        Ok(r)
    }
}
