//! Profiling probe (`--profile-dir`): the `perf_event` program on the
//! cpu-clock software event of every online CPU, sampling at
//! `--profile-hz`. Kernel side: `agent-ebpf/src/profile.rs`. What the
//! samples become is `crate::profile`.

use agent_common::profile::{ProfileSample, ProfileStats, RING_BYTES_OFF, names};
use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};

use super::take_map;

/// Ring buffer bytes for `hz` samples per second per CPU: room for a quarter
/// of a second of samples on every CPU (user space drains it every 20 ms),
/// at least 32 records, a power of two (the kernel's rule for ring buffers).
pub fn ring_bytes(hz: u32, cpus: usize) -> u32 {
    let record = std::mem::size_of::<ProfileSample>() + 8; // + the ring's header
    let records = ((hz as usize * cpus).div_ceil(4)).max(32);
    (records * record).next_power_of_two().min(1 << 30) as u32
}

/// Sizes the ring before load: small when profiling is off (the map is in
/// the object either way).
pub fn size_ring(loader: &mut EbpfLoader<'_>, hz: Option<u32>) -> anyhow::Result<()> {
    let bytes = match hz {
        Some(hz) => ring_bytes(hz, aya::util::nr_cpus().map_err(|(_, e)| e)?),
        None => RING_BYTES_OFF,
    };
    loader.map_max_entries(names::SAMPLES, bytes);
    Ok(())
}

/// The attached sampler: its ring buffer and counters.
pub struct ProfileProbe {
    pub ring: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, ProfileStats>,
}

/// Counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileCounters {
    pub sent: u64,
    pub ring_full: u64,
}

impl ProfileProbe {
    pub fn attach(ebpf: &mut Ebpf, hz: u32) -> anyhow::Result<ProfileProbe> {
        let ring: RingBuf<MapData> = take_map(ebpf, names::SAMPLES)?.try_into()?;
        let stats: PerCpuArray<MapData, ProfileStats> = take_map(ebpf, names::STATS)?.try_into()?;
        let prog: &mut PerfEvent = ebpf
            .program_mut(names::PROGRAM)
            .with_context(|| format!("eBPF object has no program {}", names::PROGRAM))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {}", names::PROGRAM))?;
        for cpu in aya::util::online_cpus().map_err(|(_, e)| e)? {
            prog.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz as u64),
                false,
            )
            .with_context(|| {
                format!(
                    "attaching {} to cpu-clock at {hz} Hz on CPU {cpu} (the kernel caps the \
                     rate at kernel.perf_event_max_sample_rate)",
                    names::PROGRAM
                )
            })?;
        }
        Ok(ProfileProbe { ring, stats })
    }
}

/// Reads the program's counters.
pub fn read_counters(
    stats: &PerCpuArray<MapData, ProfileStats>,
) -> anyhow::Result<ProfileCounters> {
    let mut c = ProfileCounters::default();
    for s in stats.get(&0, 0)?.iter() {
        c.sent += s.sent;
        c.ring_full += s.ring_full;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_a_power_of_two_holding_a_quarter_second() {
        let record = std::mem::size_of::<ProfileSample>() + 8;
        for (hz, cpus) in [(99, 2), (99, 64), (999, 2), (1, 1)] {
            let b = ring_bytes(hz, cpus) as usize;
            assert!(b.is_power_of_two(), "{b}");
            assert!(b / record >= ((hz as usize * cpus) / 4).max(32), "{hz} Hz × {cpus}: {b}");
        }
    }
}
