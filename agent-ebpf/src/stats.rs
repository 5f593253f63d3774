//! Calibration of the kernel's per-program statistics. User-space twin:
//! `agent/src/probes/stats.rs`.
//!
//! With `kernel.bpf_stats_enabled=1` the kernel times every program run with
//! two clock reads and adds the result to the program's `run_time_ns`; that
//! bookkeeping is counted in the run time itself: as much as most of our
//! programs' own work (54–56 ns per run on the reference VM in the runs
//! quoted in `docs/performance.md`; the summary prints it for every run). This
//! program does nothing: its reported cost *is* that floor, measured in the
//! same run, on the same hook (`sched_switch`, the most frequent). User space
//! attaches it only while the statistics are on, and reports it beside the
//! others so their numbers can be read net of it.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn stats_floor(_ctx: RawTracePointContext) -> u32 {
    0
}
