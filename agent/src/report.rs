//! Turning a run's samples into metrics: the BMF file for CI and the summary
//! table for people, with the `/proc` ground truth beside each kernel number.

use std::fmt::Write as _;

use crate::{
    bmf::{BmfReport, Measure},
    probes::{KernelReading, stats::ProgramStats},
    session::EndReason,
    timeline::WindowStats,
};

/// What a plain attach reports: one window, the whole run.
pub struct AttachReport<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub window: WindowStats,
    pub kernel: KernelReading,
    pub programs: Vec<ProgramStats>,
    pub end: EndReason,
}

/// BMF for a plain attach. Names are stable: CI gates on them.
pub fn attach_bmf(r: &AttachReport) -> BmfReport {
    let w = &r.window;
    let mut b = BmfReport::default();
    b.add("cpu/percent", Measure::CpuPercent, w.cpu_percent);
    b.add("cpu/time", Measure::CpuTime, w.cpu_ns as f64);
    b.add("memory/rss", Measure::Memory, w.rss_bytes as f64);
    b.add("memory/peak_rss", Measure::Memory, w.peak_rss_bytes as f64);
    b.add("memory/page_faults", Measure::Count, w.page_faults() as f64);
    b.add("memory/minor_faults", Measure::Count, w.minor_faults as f64);
    b.add("memory/major_faults", Measure::Count, w.major_faults as f64);
    b.add("agent/window", Measure::Latency, w.duration_ns as f64);
    b.add(
        "agent/partial",
        Measure::Count,
        if r.end.is_partial() { 1.0 } else { 0.0 },
    );
    b.add(
        "agent/dropped_events",
        Measure::Count,
        dropped_events(&r.programs) as f64,
    );
    b
}

/// Events lost on the kernel side: runs of our programs the kernel skipped
/// (recursion misses). CPU time, RSS and faults are aggregated in place in
/// fixed per-CPU slots that cannot fill up; event streams that can (ring
/// buffers, bounded maps) add their loss counters here.
pub fn dropped_events(programs: &[ProgramStats]) -> u64 {
    programs.iter().map(|p| p.recursion_misses).sum()
}

pub fn human_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b as f64 >= 1024.0 * MIB {
        format!("{:.2} GiB", b as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

pub fn human_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// Relative difference of `agent` from `truth`, as text.
fn diff(agent: f64, truth: f64) -> String {
    if truth == 0.0 || !truth.is_finite() || !agent.is_finite() {
        return String::new();
    }
    format!("{:+.2} %", (agent - truth) * 100.0 / truth)
}

/// The human summary for a plain attach.
pub fn attach_summary(r: &AttachReport) -> String {
    let w = &r.window;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "perf-agent: pid {} ({}), window {}, {}",
        r.pid,
        r.comm,
        human_ns(w.duration_ns),
        r.end.describe()
    );
    let _ = writeln!(
        out,
        "{:<22} {:>14}  {:>22}  {:>9}",
        "metric", "agent (eBPF)", "ground truth (/proc)", "diff"
    );
    let mut row = |name: &str, agent: String, truth: String, d: String| {
        let _ = writeln!(out, "{name:<22} {agent:>14}  {truth:>22}  {d:>9}");
    };
    row(
        "cpu/percent",
        format!("{:.2} %", w.cpu_percent),
        format!("{:.2} % stat", w.proc_cpu_percent),
        diff(w.cpu_percent, w.proc_cpu_percent),
    );
    row(
        "cpu/time",
        human_ns(w.cpu_ns),
        format!("{} utime+stime", human_ns(w.proc_cpu_ns)),
        diff(w.cpu_ns as f64, w.proc_cpu_ns as f64),
    );
    row(
        "memory/rss",
        human_bytes(w.rss_bytes),
        format!("{} VmRSS", human_bytes(w.proc_rss_bytes)),
        diff(w.rss_bytes as f64, w.proc_rss_bytes as f64),
    );
    row(
        "memory/peak_rss",
        human_bytes(w.peak_rss_bytes),
        format!("{} VmHWM", human_bytes(w.proc_hwm_bytes)),
        String::new(), // VmHWM is the lifetime peak, not the window's.
    );
    row(
        "memory/page_faults",
        w.page_faults().to_string(),
        format!("{} min+majflt", w.proc_page_faults()),
        diff(w.page_faults() as f64, w.proc_page_faults() as f64),
    );
    row(
        "  minor / major",
        format!("{} / {}", w.minor_faults, w.major_faults),
        format!("{} / {}", w.proc_minor_faults, w.proc_major_faults),
        String::new(),
    );
    let m = &r.kernel.memory;
    let _ = writeln!(
        out,
        "events: {} sched slices, {} rss_stat from the target, {} from other contexts \
         (+{} ignored before the target's mm was known); dropped {}",
        r.kernel.cpu.slices,
        m.own_updates,
        m.foreign_updates,
        m.unattributed,
        dropped_events(&r.programs)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(end: EndReason) -> AttachReport<'static> {
        AttachReport {
            pid: 42,
            comm: "srv",
            window: WindowStats {
                duration_ns: 2_000_000_000,
                cpu_ns: 1_000_000_000,
                cpu_percent: 50.0,
                rss_bytes: 10 << 20,
                peak_rss_bytes: 20 << 20,
                minor_faults: 7,
                major_faults: 1,
                ..Default::default()
            },
            kernel: KernelReading::default(),
            programs: vec![],
            end,
        }
    }

    #[test]
    fn bmf_has_the_plain_attach_names_and_units() {
        let b = attach_bmf(&report(EndReason::DurationElapsed));
        assert_eq!(b.get("cpu/percent", Measure::CpuPercent), Some(50.0));
        assert_eq!(b.get("cpu/time", Measure::CpuTime), Some(1e9));
        assert_eq!(
            b.get("memory/rss", Measure::Memory),
            Some((10 << 20) as f64)
        );
        assert_eq!(
            b.get("memory/peak_rss", Measure::Memory),
            Some((20 << 20) as f64)
        );
        assert_eq!(b.get("memory/page_faults", Measure::Count), Some(8.0));
        assert_eq!(b.get("agent/partial", Measure::Count), Some(0.0));
    }

    #[test]
    fn partial_runs_are_marked() {
        let b = attach_bmf(&report(EndReason::TargetExited));
        assert_eq!(b.get("agent/partial", Measure::Count), Some(1.0));
        let s = attach_summary(&report(EndReason::Interrupted(libc::SIGINT)));
        assert!(s.contains("PARTIAL") && s.contains("SIGINT"), "{s}");
    }

    #[test]
    fn summary_shows_ground_truth_and_difference() {
        let mut r = report(EndReason::Stopped(libc::SIGTERM));
        r.window.proc_cpu_percent = 40.0;
        let s = attach_summary(&r);
        assert!(s.contains("+25.00 %"), "{s}");
        assert!(s.contains("complete"), "{s}");
    }
}
