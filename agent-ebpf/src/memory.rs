//! Memory: RSS from `kmem:rss_stat`. (Page faults need no program: user
//! space reads the kernel's own per-process counters from `/proc/PID/stat`.)
//! User-space twin: `agent/src/probes/memory.rs`.

use agent_common::{RssCounters, RssStats, rss_member};
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::{Array, PerCpuArray},
    programs::TracePointContext,
};

use crate::config;

#[map]
static RSS_COUNTERS: Array<RssCounters> = Array::with_max_entries(1, 0);
#[map]
static RSS_STATS: PerCpuArray<RssStats> = PerCpuArray::with_max_entries(1, 0);

/// `kmem:rss_stat` fires on every change of an mm's RSS counter with its new
/// absolute value. `mm_id` is a hash of the mm pointer; `curr` says whether
/// the mm is the current task's. An event is the target's when `curr == 1` in
/// the target's thread group (and then teaches us its `mm_id`), or when
/// `curr == 0` and `mm_id` matches (reclaim, or another process such as a
/// debugger touching the target's pages).
#[tracepoint]
pub fn rss_stat(ctx: TracePointContext) -> u32 {
    let (Some(counters), Some(stats)) = (RSS_COUNTERS.get_ptr_mut(0), RSS_STATS.get_ptr_mut(0))
    else {
        return 0;
    };
    let (counters, stats) = unsafe { (&mut *counters, &mut *stats) };
    let Ok(mm_id) = (unsafe { ctx.read_at::<u32>(config::offset!(rss_stat_mm_id)) }) else {
        return 0;
    };
    let curr = unsafe { ctx.read_at::<u32>(config::offset!(rss_stat_curr)) }.unwrap_or(0);
    if curr != 0 {
        if !config::in_target() {
            return 0;
        }
        counters.mm_id = mm_id;
        counters.mm_id_known = 1;
        stats.own_updates += 1;
    } else {
        if counters.mm_id_known == 0 {
            // Cannot tell whose this is yet; rare (the first event of a target
            // normally comes from its own fault). Counted, not guessed.
            stats.unattributed += 1;
            return 0;
        }
        if mm_id != counters.mm_id {
            return 0;
        }
        stats.foreign_updates += 1;
    }
    let member = unsafe { ctx.read_at::<i32>(config::offset!(rss_stat_member)) }.unwrap_or(-1);
    let Ok(size) = (unsafe { ctx.read_at::<i64>(config::offset!(rss_stat_size)) }) else {
        return 0;
    };
    // Bounded index for the verifier.
    let slot = match member {
        0 => rss_member::FILE,
        1 => rss_member::ANON,
        2 => rss_member::SWAP,
        3 => rss_member::SHMEM,
        _ => return 0,
    };
    counters.member_bytes[slot] = size;
    let rss = counters.member_bytes[rss_member::FILE]
        + counters.member_bytes[rss_member::ANON]
        + counters.member_bytes[rss_member::SHMEM];
    if rss > 0 && rss as u64 > stats.peak_rss_bytes {
        stats.peak_rss_bytes = rss as u64;
    }
    0
}
