//! Memory probe: `kmem:rss_stat` → RSS and peak (kernel side:
//! `agent-ebpf/src/memory.rs`); minor and major page faults from the
//! kernel's own per-process counters (`/proc/PID/stat`, which the session
//! reads once per sample for its ground truth and hands in): no program,
//! where perf software events with a BPF program ran on every page fault
//! of every process on the machine (issue 12's node tax).
//! Formulas and errors: `docs/metrics.md#memory`.

use agent_common::{
    RssCounters, RssStats,
    names::{maps, programs},
    rss_member,
};
use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
};

use super::{
    hook::{self, Hook},
    since::Since,
    take_map,
};
use crate::{btf::Btf, procfs, tracefs};

/// The `rss_stat` record's fields (tracefs), and the page-fault counters
/// the exec hook reads when it arms a target (BTF).
pub fn offsets(
    tracefs_root: &std::path::Path,
    btf: &Btf,
    o: &mut agent_common::TracepointOffsets,
) -> anyhow::Result<()> {
    o.task_min_flt = btf.field_offset("task_struct", &["min_flt"])?;
    o.task_maj_flt = btf.field_offset("task_struct", &["maj_flt"])?;
    o.task_signal = btf.field_offset("task_struct", &["signal"])?;
    o.signal_min_flt = btf.field_offset("signal_struct", &["min_flt"])?;
    o.signal_maj_flt = btf.field_offset("signal_struct", &["maj_flt"])?;
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
    /// (minor, major) page faults.
    faults: Since<2>,
}

impl MemoryProbe {
    /// `running`: a process already running, whose RSS is seeded from
    /// /proc. A target armed at exec starts from an empty mm instead.
    pub fn attach(ebpf: &mut Ebpf, running: Option<u32>) -> anyhow::Result<MemoryProbe> {
        let mut counters: Array<MapData, RssCounters> =
            take_map(ebpf, maps::RSS_COUNTERS)?.try_into()?;
        let mut stats: PerCpuArray<MapData, RssStats> =
            take_map(ebpf, maps::RSS_STATS)?.try_into()?;

        // Seed from /proc: rss_stat only reports changes, so a quiet target
        // would otherwise read as 0 until its next fault.
        let mut faults_since = None;
        if let Some(pid) = running {
            let stat =
                procfs::read_stat(pid).with_context(|| format!("reading /proc/{pid}/stat"))?;
            faults_since = Some((pid, [stat.minflt, stat.majflt]));
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
        Ok(MemoryProbe { counters, stats, faults: Since::new(faults_since) })
    }

    /// The target was armed at its exec with these (minor, major) fault
    /// counts then (`Target::{min,maj}_flt_at_exec`): counting starts there.
    pub fn armed(&self, pid: u32, at_exec: (u64, u64)) {
        self.faults.armed(pid, [at_exec.0, at_exec.1]);
    }

    /// `stat`: a process's `/proc/PID/stat` read just now (`None`: gone),
    /// whose page faults count if it is the counted process.
    pub fn read(&self, stat: Option<(u32, &procfs::ProcStat)>) -> anyhow::Result<MemoryReading> {
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
        [r.minor_faults, r.major_faults] = self
            .faults
            .read(|pid| stat.filter(|(p, _)| *p == pid).map(|(_, s)| [s.minflt, s.majflt]));
        // The running value can pass the per-CPU peaks only by a racing store.
        r.peak_rss_bytes = r.peak_rss_bytes.max(r.rss_bytes);
        Ok(r)
    }
}
