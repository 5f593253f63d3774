//! Loading and attaching the eBPF programs of `agent-ebpf`, one module per
//! probe family with the same name as its kernel side
//! (`agent-ebpf/src/cpu.rs` ↔ [`cpu`], `agent-ebpf/src/memory.rs` ↔ [`memory`]).
//!
//! The object is configured before load through `const volatile` globals
//! (target tgid, tracepoint field offsets read from tracefs) and is dropped as
//! a whole to detach: every link, program and map belongs to [`Probes`].

pub mod cpu;
pub mod memory;
pub mod net;
pub mod stats;

use std::path::Path;

use agent_common::{TracepointOffsets, globals};
use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};

use crate::{requests::RequestLog, tracefs};

/// The eBPF object built by `agent/build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// What the probes read at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelReading {
    pub cpu: cpu::CpuReading,
    pub memory: memory::MemoryReading,
    pub net: net::NetReading,
}

/// All programs, attached to one target thread group.
pub struct Probes {
    pid: u32,
    cpu: cpu::CpuProbe,
    memory: memory::MemoryProbe,
    net: net::NetProbe,
    // Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
}

impl Probes {
    /// Loads, seeds and attaches every probe for thread group `pid`.
    pub fn attach(pid: u32, tracefs_root: &Path) -> anyhow::Result<Probes> {
        let mut offsets = TracepointOffsets::default();
        cpu::offsets(tracefs_root, &mut offsets)?;
        memory::offsets(tracefs_root, &mut offsets)?;
        net::offsets(tracefs_root, &mut offsets)?;

        let mut ebpf = EbpfLoader::new()
            .override_global(globals::TARGET_TGID, &pid, true)
            .override_global(globals::OFFSETS, &offsets, true)
            .load(EBPF_OBJECT)
            .context(
                "loading the eBPF object failed (needs CAP_BPF and CAP_PERFMON, or root, \
                 and a kernel with BTF)",
            )?;
        // Seed state before the programs run, then attach.
        let cpu = cpu::CpuProbe::attach(&mut ebpf, pid)?;
        let memory = memory::MemoryProbe::attach(&mut ebpf, pid)?;
        let net = net::NetProbe::attach(&mut ebpf, pid)?;
        cpu::force_switch_on_every_cpu()?;
        Ok(Probes {
            pid,
            cpu,
            memory,
            net,
            ebpf,
        })
    }

    pub fn read(&self) -> anyhow::Result<KernelReading> {
        Ok(KernelReading {
            cpu: self.cpu.read(self.pid)?,
            memory: self.memory.read()?,
            net: self.net.read()?,
        })
    }

    /// Moves finished requests and calls from the kernel into `log`.
    pub fn drain(&mut self, log: &mut RequestLog) -> u64 {
        self.net.drain(log)
    }

    /// At the end: drains, then completes exchanges still open; returns the
    /// number of requests still in flight (read, not yet answered).
    pub fn drain_final(&mut self, log: &mut RequestLog) -> u64 {
        self.net.drain(log);
        self.net.drain_open_exchanges(log)
    }

    /// Run counts, run time and recursion misses of every program.
    pub fn program_stats(&self) -> Vec<stats::ProgramStats> {
        stats::read_all(&self.ebpf)
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Takes a map out of the object by name, with context if it is missing.
fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("eBPF object has no map {name}"))
}
