//! Finding, loading and attaching one program of the object: the one place
//! that knows aya's program kinds. Program and map names come from
//! `agent_common::names`.

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        BtfTracePoint, PerfEvent, RawTracePoint, TracePoint,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
        raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};

/// Where a program attaches.
#[derive(Clone, Copy)]
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

/// The links [`attach`] or [`link`] made for one program: what [`unlink`]
/// takes to detach them while the program stays loaded.
#[derive(Debug)]
pub enum Links {
    TracePoint(TracePointLinkId),
    BtfTracePoint(BtfTracePointLinkId),
    RawTracePoint(RawTracePointLinkId),
    /// One per online CPU.
    PerfEvents(Vec<PerfEventLinkId>),
}

/// Loads `program` and attaches it to `hook`; the links belong to the
/// program (dropping the `Ebpf` detaches them).
pub fn attach(ebpf: &mut Ebpf, program: &str, hook: Hook<'_>) -> anyhow::Result<Links> {
    let prog = program_mut(ebpf, program)?;
    let loading = || format!("loading {program}");
    match hook {
        Hook::TracePoint { .. } => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load().with_context(loading)?;
        }
        Hook::BtfTracePoint { name, btf } => {
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load(name, btf).with_context(loading)?;
        }
        Hook::RawTracePoint { .. } => {
            let p: &mut RawTracePoint = prog.try_into()?;
            p.load().with_context(loading)?;
        }
        Hook::SampledSoftwareEventOnEveryCpu { .. } => {
            let p: &mut PerfEvent = prog.try_into()?;
            p.load().with_context(loading)?;
        }
    }
    link(ebpf, program, hook)
}

/// Attaches `program`, loaded by [`attach`] before, to `hook` again (after
/// [`unlink`]).
pub fn link(ebpf: &mut Ebpf, program: &str, hook: Hook<'_>) -> anyhow::Result<Links> {
    let prog = program_mut(ebpf, program)?;
    Ok(match hook {
        Hook::TracePoint { category, name } => {
            let p: &mut TracePoint = prog.try_into()?;
            Links::TracePoint(
                p.attach(category, name).with_context(|| {
                    format!("attaching {program} to tracepoint {category}:{name}")
                })?,
            )
        }
        Hook::BtfTracePoint { name, .. } => {
            let p: &mut BtfTracePoint = prog.try_into()?;
            Links::BtfTracePoint(
                p.attach()
                    .with_context(|| format!("attaching {program} to BTF tracepoint {name}"))?,
            )
        }
        Hook::RawTracePoint { name } => {
            let p: &mut RawTracePoint = prog.try_into()?;
            Links::RawTracePoint(
                p.attach(name)
                    .with_context(|| format!("attaching {program} to raw tracepoint {name}"))?,
            )
        }
        Hook::SampledSoftwareEventOnEveryCpu { event, period } => {
            Links::PerfEvents(link_software_event(prog, program, event, period)?)
        }
    })
}

/// Detaches the links `links` of `program`, which stays loaded.
pub fn unlink(ebpf: &mut Ebpf, program: &str, links: Links) -> anyhow::Result<()> {
    let prog = program_mut(ebpf, program)?;
    let detaching = || format!("detaching {program}");
    match links {
        Links::TracePoint(id) => TryInto::<&mut TracePoint>::try_into(prog)?.detach(id),
        Links::BtfTracePoint(id) => TryInto::<&mut BtfTracePoint>::try_into(prog)?.detach(id),
        Links::RawTracePoint(id) => TryInto::<&mut RawTracePoint>::try_into(prog)?.detach(id),
        Links::PerfEvents(ids) => {
            let p: &mut PerfEvent = prog.try_into()?;
            ids.into_iter().try_for_each(|id| p.detach(id))
        }
    }
    .with_context(detaching)
}

fn program_mut<'e>(
    ebpf: &'e mut Ebpf,
    program: &str,
) -> anyhow::Result<&'e mut aya::programs::Program> {
    ebpf.program_mut(program).with_context(|| format!("eBPF object has no program {program}"))
}

/// Attaches the loaded `perf_event` program to `event` on every online
/// CPU, one sample every `period` occurrences.
fn link_software_event(
    prog: &mut aya::programs::Program,
    program: &str,
    event: SoftwareEvent,
    period: u64,
) -> anyhow::Result<Vec<PerfEventLinkId>> {
    let p: &mut PerfEvent = prog.try_into()?;
    let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?;
    cpus.into_iter()
        .map(|cpu| {
            p.attach(
                PerfEventConfig::Software(event),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(period),
                false,
            )
            .with_context(|| {
                format!(
                    "attaching {program} to perf software event {event:?} on CPU {cpu} \
                     (period {period})"
                )
            })
        })
        .collect()
}

/// Detaches and unloads the classic tracepoint program `program` (a no-op
/// if it was never loaded).
pub fn detach_tracepoint(ebpf: &mut Ebpf, program: &str) -> anyhow::Result<()> {
    let p: &mut TracePoint = program_mut(ebpf, program)?.try_into()?;
    p.unload().with_context(|| format!("detaching {program}"))
}
