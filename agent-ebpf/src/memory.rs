//! Memory: RSS from `kmem:rss_stat`. (Page faults need no program: user
//! space reads the kernel's own per-process counters from `/proc/PID/stat`.)
//! User-space twin: `agent/src/probes/memory.rs`.

use agent_common::{RssCounters, RssStats, rss_member};
use aya_ebpf::{
    helpers::generated::bpf_get_current_task_btf,
    macros::{btf_tracepoint, map},
    maps::{Array, PerCpuArray},
    programs::BtfTracePointContext,
};

use crate::{
    access::load_field,
    config::{self, offset},
};

/// The target's mm is new after it execs: learned again from its next own
/// event (`exec.rs`).
#[inline(always)]
pub(crate) fn forget_target_mm() {
    if let Some(counters) = RSS_COUNTERS.get_ptr_mut(0) {
        unsafe { (*counters).mm = 0 };
    }
}

#[map]
static RSS_COUNTERS: Array<RssCounters> = Array::with_max_entries(1, 0);
#[map]
static RSS_STATS: PerCpuArray<RssStats> = PerCpuArray::with_max_entries(1, 0);

/// `TP_PROTO(struct mm_struct *mm, int member)`, a BTF tracepoint: every
/// change of any mm's RSS counter (every page fault of every process, and
/// more). Another mm's event leaves on a compare of the pointer with the
/// target's, no helper call, once the target's mm is known; until then the
/// current task says: its own mm in the target's thread group is the
/// target's. An event of the target's mm from another context (reclaim, a
/// debugger) is applied too. The member's value is read from the mm as the
/// classic tracepoint's `size` was (`get_mm_counter`: the counter's
/// `count`, at least 0, in pages).
#[btf_tracepoint(function = "rss_stat")]
pub fn rss_stat(ctx: BtfTracePointContext) -> i32 {
    let mm: *const u8 = ctx.arg(0);
    let (Some(counters), Some(stats)) = (RSS_COUNTERS.get_ptr_mut(0), RSS_STATS.get_ptr_mut(0))
    else {
        return 0;
    };
    let (counters, stats) = unsafe { (&mut *counters, &mut *stats) };
    let known = counters.mm;
    if known != 0 && mm as u64 != known {
        return 0; // another process's memory
    }
    // SAFETY: a BTF-typed `struct task_struct *`; `mm` is a field of it.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let own = !task.is_null() && unsafe { load_field::<u64>(task, offset!(task_mm)) } == mm as u64;
    if known == 0 {
        if !own {
            stats.unattributed += 1; // cannot tell whose yet: counted, not guessed
            return 0;
        }
        if !config::in_target() {
            return 0;
        }
        counters.mm = mm as u64;
    }
    if own {
        stats.own_updates += 1;
    } else {
        stats.foreign_updates += 1;
    }
    let member: i32 = ctx.arg(1);
    // The four counters are read with constant offsets and the member's
    // picked after: a BTF-typed load takes no variable offset, and LLVM
    // turns a load per `match` arm back into one with a computed offset.
    let count = |i: usize| {
        let at =
            offset!(mm_rss_stat) + i * offset!(percpu_counter_size) + offset!(percpu_counter_count);
        // SAFETY: `mm` is the tracepoint's `struct mm_struct *`; `at` is
        // the `count` of its `rss_stat[i]` (offsets from BTF).
        unsafe { load_field::<i64>(mm, at) }
    };
    let counts = [count(0), count(1), count(2), count(3)];
    // `rss_member`'s slots are the kernel's member numbers (MM_FILEPAGES,
    // MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES); masked, the index is
    // bounded for the verifier.
    if member as u32 >= rss_member::COUNT as u32 {
        return 0;
    }
    let slot = (member as usize) & 3;
    let pages = counts[slot].max(0);
    let size = pages << (offset!(page_shift) & 63);
    counters.member_bytes[slot] = size;
    let rss = counters.member_bytes[rss_member::FILE]
        + counters.member_bytes[rss_member::ANON]
        + counters.member_bytes[rss_member::SHMEM];
    if rss > 0 && rss as u64 > stats.peak_rss_bytes {
        stats.peak_rss_bytes = rss as u64;
    }
    0
}
