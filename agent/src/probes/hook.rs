//! Finding, loading and attaching one program of the object: the one place
//! that knows aya's program kinds. Program and map names come from
//! `agent_common::names`.

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        BtfTracePoint, PerfEvent, RawTracePoint, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};

/// Where a program attaches.
pub enum Hook<'a> {
    /// The classic tracepoint `category:name` (a record built per event).
    TracePoint { category: &'a str, name: &'a str },
    /// The BTF-typed tracepoint `name` (`tp_btf`): arguments typed by the
    /// kernel's BTF, against which the program is verified.
    BtfTracePoint { name: &'a str, btf: &'a aya::Btf },
    /// The raw tracepoint `name`.
    RawTracePoint { name: &'a str },
    /// A perf software event on every online CPU, all processes, once every
    /// `period` occurrences (for cpu-clock: nanoseconds).
    SampledSoftwareEventOnEveryCpu { event: SoftwareEvent, period: u64 },
}

/// Loads `program` and attaches it to `hook`; the links belong to the
/// program (dropping the `Ebpf` detaches them).
pub fn attach(ebpf: &mut Ebpf, program: &str, hook: Hook<'_>) -> anyhow::Result<()> {
    let prog = ebpf
        .program_mut(program)
        .with_context(|| format!("eBPF object has no program {program}"))?;
    let loading = || format!("loading {program}");
    match hook {
        Hook::TracePoint { category, name } => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load().with_context(loading)?;
            p.attach(category, name)
                .with_context(|| format!("attaching {program} to tracepoint {category}:{name}"))?;
        }
        Hook::BtfTracePoint { name, btf } => {
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load(name, btf).with_context(loading)?;
            p.attach().with_context(|| format!("attaching {program} to BTF tracepoint {name}"))?;
        }
        Hook::RawTracePoint { name } => {
            let p: &mut RawTracePoint = prog.try_into()?;
            p.load().with_context(loading)?;
            p.attach(name)
                .with_context(|| format!("attaching {program} to raw tracepoint {name}"))?;
        }
        Hook::SampledSoftwareEventOnEveryCpu { event, period } => {
            attach_software_event(prog, program, event, period)?;
        }
    }
    Ok(())
}

/// Loads the `perf_event` program and attaches it to `event` on every
/// online CPU, one sample every `period` occurrences.
fn attach_software_event(
    prog: &mut aya::programs::Program,
    program: &str,
    event: SoftwareEvent,
    period: u64,
) -> anyhow::Result<()> {
    let p: &mut PerfEvent = prog.try_into()?;
    p.load().with_context(|| format!("loading {program}"))?;
    for cpu in aya::util::online_cpus().map_err(|(_, e)| e)? {
        p.attach(
            PerfEventConfig::Software(event),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Period(period),
            false,
        )
        .with_context(|| {
            format!("attaching {program} to perf software event {event:?} on CPU {cpu} (period {period})")
        })?;
    }
    Ok(())
}

/// Detaches and unloads the classic tracepoint program `program` (a no-op
/// if it was never loaded).
pub fn detach_tracepoint(ebpf: &mut Ebpf, program: &str) -> anyhow::Result<()> {
    let prog = ebpf
        .program_mut(program)
        .with_context(|| format!("eBPF object has no program {program}"))?;
    let p: &mut TracePoint = prog.try_into()?;
    p.unload().with_context(|| format!("detaching {program}"))
}
