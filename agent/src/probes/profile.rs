//! Profiling probe (`--profile-dir`): the `perf_event` program on the
//! cpu-clock software event of every online CPU, sampling at
//! `--profile-hz`, and with `--runq-waits` `sched_switch` for run-queue
//! waits (it runs at every context switch of the machine: not by
//! default, `docs/performance.md`, nineteenth session). Kernel side:
//! `agent-ebpf/src/cpu_clock.rs` (the program), `profile.rs` (the
//! samples) and `sched.rs`. Off-CPU ticks are `offcpu_ticks.rs` here. What
//! the samples become is `crate::profile`.

use agent_common::{
    globals,
    names::{maps, programs},
    profile::{ProfileSample, ProfileStats, RING_BYTES_OFF, SchedCounts, sched_work},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::perf_event::SoftwareEvent,
};

use super::{
    hook::{self, Hook, Links},
    take_map,
};

/// What to sample: cpu-clock at `hz` per CPU; `off_cpu`: the off-CPU
/// ticks' task iterator is loaded (set up apart: `super::offcpu_ticks`);
/// `runq_waits`: `sched_switch` is attached, for run-queue waits and,
/// with `off_cpu`, the exact time stolen from target slices (without it
/// the ticks estimate that from `/proc/stat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileConfig {
    pub hz: u32,
    pub off_cpu: bool,
    pub runq_waits: bool,
}

/// Ring buffer bytes: room for 50 ms of samples at `hz` on every CPU (the
/// kernel side wakes user space to drain it once half full), at least 32
/// records, a power of two (the kernel's rule for ring buffers). Counted
/// as if every record held a whole 32 KiB stack; records hold only the
/// pages copied, so in practice it holds two to three times that.
pub fn ring_bytes(config: ProfileConfig, cpus: usize) -> u32 {
    let record = std::mem::size_of::<ProfileSample>() + 8; // + the ring's header
    let records = (config.hz as usize * cpus).div_ceil(20).max(32);
    (records * record).next_power_of_two().min(1 << 30) as u32
}

/// Sizes the ring and sets `sched_switch`'s work before load: a page of
/// ring and no work when profiling is off (the map is in the object
/// either way).
pub fn configure<'a>(
    loader: &mut EbpfLoader<'a>,
    config: &'a Option<ProfileConfig>,
) -> anyhow::Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let (bytes, scratch_slots) = match *config {
        Some(c) => (ring_bytes(c, cpus), cpus as u32),
        None => (RING_BYTES_OFF, 1),
    };
    loader.map_max_entries(maps::PROFILE_SAMPLES, bytes);
    // Indexed by CPU number: one slot per possible CPU.
    loader.map_max_entries(maps::PROFILE_SCRATCH, scratch_slots);
    // The loader keeps a reference until load: statics.
    static NONE: u32 = 0;
    static RUNQ: u32 = sched_work::RUNQ_WAITS;
    static RUNQ_AND_STOLEN: u32 = sched_work::RUNQ_WAITS | sched_work::STOLEN;
    let work = match config {
        Some(c) if c.runq_waits && c.off_cpu => &RUNQ_AND_STOLEN,
        Some(c) if c.runq_waits => &RUNQ,
        _ => &NONE,
    };
    loader.override_global(globals::PROFILE_SCHED, work, true);
    // `THREAD_STACK` is a task-storage map, which aya 0.14 creates but has
    // no user-space type for (it calls it unsupported); user space never
    // reads it.
    loader.allow_unsupported_maps();
    Ok(())
}

/// The attached sampler: its ring buffer and counters.
pub struct ProfileProbe {
    pub ring: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, ProfileStats>,
    pub sched_counts: PerCpuArray<MapData, SchedCounts>,
}

/// The hooks profiling runs at, kept to pause it (`--profile-control`):
/// a pause detaches them, so that it costs nothing, not even the
/// tracepoint's dispatch at every context switch of the machine.
pub struct ProfileLinks {
    period: u64,
    runq_waits: bool,
    /// The links of [`hooks`]' programs, in its order; empty while paused.
    attached: Vec<(&'static str, Links)>,
    /// Attaching a loaded BTF tracepoint again reads no BTF: an empty one
    /// stands in for the kernel's (too large to keep for this).
    no_btf: aya::Btf,
}

/// Profiling's programs and their hooks: the cpu-clock event every
/// `period` ns; with `runq_waits`, `sched_switch` (what it does is set by
/// `configure`: `agent-ebpf/src/sched.rs`), whose load reads `btf`.
fn hooks(period: u64, runq_waits: bool, btf: &aya::Btf) -> Vec<(&'static str, Hook<'_>)> {
    let event = SoftwareEvent::CpuClock;
    let mut hooks =
        vec![(programs::PROFILE_CPU_CLOCK, Hook::SampledSoftwareEventOnEveryCpu { event, period })];
    if runq_waits {
        hooks.push((programs::SCHED_SWITCH, Hook::BtfTracePoint { name: "sched_switch", btf }));
    }
    hooks
}

impl ProfileLinks {
    /// Whether the programs are detached.
    fn paused(&self) -> bool {
        self.attached.is_empty()
    }

    /// Detaches the profiling programs (`paused`) or attaches them again.
    pub fn set_paused(&mut self, ebpf: &mut Ebpf, paused: bool) -> anyhow::Result<()> {
        if paused == self.paused() {
            return Ok(());
        }
        if paused {
            for (program, links) in std::mem::take(&mut self.attached) {
                hook::unlink(ebpf, program, links)?;
            }
            return Ok(());
        }
        for (program, hook) in hooks(self.period, self.runq_waits, &self.no_btf) {
            let links = hook::link(ebpf, program, hook)?;
            self.attached.push((program, links));
        }
        Ok(())
    }
}

/// The profiling programs' counters summed over CPUs, and what the
/// off-CPU ticks counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileCounters {
    pub kernel: ProfileStats,
    /// Off-CPU ticks read, the target's blocks (voluntary switches) while
    /// they ran, the stacks they took and those stacks' user bytes.
    pub off_cpu_ticks: u64,
    pub off_cpu_blocks: u64,
    pub off_cpu_stacks: u64,
    pub off_cpu_stack_bytes: u64,
    /// Stacks dropped as torn: the thread ran while they were copied.
    pub off_cpu_torn: u64,
}

impl ProfileProbe {
    /// `kernel_btf`: for `sched_switch`, a BTF tracepoint (`runq_waits`).
    pub fn attach(
        ebpf: &mut Ebpf,
        kernel_btf: &aya::Btf,
        config: ProfileConfig,
    ) -> anyhow::Result<(ProfileProbe, ProfileLinks)> {
        let hz = config.hz;
        let ring: RingBuf<MapData> = take_map(ebpf, maps::PROFILE_SAMPLES)?.try_into()?;
        let stats: PerCpuArray<MapData, ProfileStats> =
            take_map(ebpf, maps::PROFILE_STATS)?.try_into()?;
        let sched_counts: PerCpuArray<MapData, SchedCounts> =
            take_map(ebpf, maps::SCHED_COUNTS)?.try_into()?;
        // cpu-clock counts nanoseconds: a fixed period gives exactly `hz`
        // samples per second of CPU (the kernel's frequency mode adjusts the
        // period as it goes and overshoots by ~10 %).
        let period = 1_000_000_000 / u64::from(hz.max(1));
        let attached = hooks(period, config.runq_waits, kernel_btf)
            .into_iter()
            .map(|(program, hook)| Ok((program, hook::attach(ebpf, program, hook)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let runq_waits = config.runq_waits;
        let links = ProfileLinks { period, runq_waits, attached, no_btf: aya::Btf::new() };
        Ok((ProfileProbe { ring, stats, sched_counts }, links))
    }
}

/// A plain-integer `T` from the start of `bytes` (a ring record or an
/// iterator's output), if they hold one.
pub fn read_plain<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: enough bytes; `T` is a `#[repr(C)]` struct of integers
        // (any bytes are valid), read unaligned.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Reads the programs' counters, summed over CPUs.
pub fn read_counters(stats: &PerCpuArray<MapData, ProfileStats>) -> anyhow::Result<ProfileStats> {
    let mut c = ProfileStats::default();
    for s in stats.get(&0, 0)?.iter() {
        c.accumulate(s);
    }
    Ok(c)
}

/// Run-queue waits per bin ([`SchedCounts`]), summed over CPUs.
pub fn read_sched_counts(map: &PerCpuArray<MapData, SchedCounts>) -> anyhow::Result<Vec<u64>> {
    let mut runq = vec![0u64; agent_common::profile::RUNQ_BINS];
    for c in map.get(&0, 0)?.iter() {
        runq.iter_mut().zip(c.runq.iter()).for_each(|(a, b)| *a += b);
    }
    Ok(runq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_a_power_of_two_holding_50_ms() {
        let record = std::mem::size_of::<ProfileSample>() + 8;
        for (hz, cpus) in [(99, 2), (99, 64), (999, 2), (1, 1)] {
            let b =
                ring_bytes(ProfileConfig { hz, off_cpu: true, runq_waits: false }, cpus) as usize;
            assert!(b.is_power_of_two(), "{b}");
            assert!(b / record >= (hz as usize * cpus / 20).max(32), "{hz} Hz × {cpus}: {b}");
        }
    }
}
