//! `#[repr(C)]` types shared by the eBPF programs (`agent-ebpf`) and the
//! user-space agent (`agent`, with the `user` feature).
//!
//! Rules, as in aya's own shared crates: no padding (every struct is a
//! multiple of 8 bytes with fields ordered large to small), integers instead of
//! `bool`, and nothing that has a different layout on the two sides.
#![no_std]

/// Names of the `const volatile` globals user space sets before load.
///
/// They live here so the two sides cannot disagree on a spelling.
pub mod globals {
    /// `u32`: thread-group id (PID) of the target. 0 matches nothing.
    pub const TARGET_TGID: &str = "TARGET_TGID";
    /// `u32`: byte offset of `next_pid` in the `sched:sched_switch` record,
    /// read from tracefs `events/sched/sched_switch/format` at start-up.
    pub const SCHED_SWITCH_NEXT_PID_OFFSET: &str = "SCHED_SWITCH_NEXT_PID_OFFSET";
    /// `u32` offsets of `mm_id`, `curr`, `member` and `size` in the
    /// `kmem:rss_stat` record, read from its tracefs `format` file.
    pub const RSS_STAT_MM_ID_OFFSET: &str = "RSS_STAT_MM_ID_OFFSET";
    pub const RSS_STAT_CURR_OFFSET: &str = "RSS_STAT_CURR_OFFSET";
    pub const RSS_STAT_MEMBER_OFFSET: &str = "RSS_STAT_MEMBER_OFFSET";
    pub const RSS_STAT_SIZE_OFFSET: &str = "RSS_STAT_SIZE_OFFSET";
}

/// Per-CPU scheduler accounting of the target's thread group
/// (map `CPU_ACCOUNT`, a one-slot `PERCPU_ARRAY`).
///
/// `sched_switch` runs in the context of the task being switched out, so the
/// tgid of `prev` is `bpf_get_current_pid_tgid() >> 32`: no task_struct read
/// (and so no CO-RE) is needed. A slice is `now - last_switch_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuAccount {
    /// CLOCK_MONOTONIC ns of the last `sched_switch` on this CPU. User space
    /// seeds it with the attach time so a slice already running at attach is
    /// counted from the attach on.
    pub last_switch_ns: u64,
    /// Sum of the target's slices that ended on this CPU, ns.
    pub on_cpu_ns: u64,
    /// Number of those slices (switches away from a target thread).
    pub slices: u64,
    /// Thread id switched in by the last `sched_switch`: the task on this CPU
    /// now. User space counts `now - last_switch_ns` for it when it is one of
    /// the target's threads, so a slice still running at a read is not lost.
    pub running_tid: u32,
    pub _pad: u32,
}

/// Index into [`RssCounters::member_bytes`]: the kernel's `MM_*` counters as
/// `kmem:rss_stat` reports them in `member`.
pub mod rss_member {
    pub const FILE: usize = 0;
    pub const ANON: usize = 1;
    pub const SWAP: usize = 2;
    pub const SHMEM: usize = 3;
    pub const COUNT: usize = 4;
}

/// The target's RSS counters as last reported by `kmem:rss_stat`
/// (map `RSS_COUNTERS`, a one-slot `ARRAY` shared by all CPUs).
///
/// Each event carries the counter's absolute value, so a late or racing
/// store is corrected by the next event of that member. 8-byte aligned
/// stores are atomic, so a reader never sees a torn value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssCounters {
    /// Bytes per member (see [`rss_member`]); seeded from /proc/PID/status.
    pub member_bytes: [i64; rss_member::COUNT],
    /// `mm_id` (a hash of the target's `mm_struct` pointer) learned from an
    /// event with `curr == 1` in the target's thread group; it changes on exec.
    pub mm_id: u32,
    /// 1 once `mm_id` has been learned.
    pub mm_id_known: u32,
}

/// Per-CPU RSS statistics (map `RSS_STATS`, one-slot `PERCPU_ARRAY`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssStats {
    /// Highest file + anon + shmem total this CPU computed after an update.
    /// The peak is the maximum over CPUs.
    pub peak_rss_bytes: u64,
    /// `rss_stat` events applied from the target's own tasks (`curr == 1`).
    pub own_updates: u64,
    /// Events applied from other contexts (`curr == 0`: reclaim, another
    /// process touching the target's memory) matched on `mm_id` alone.
    /// `mm_id` is a 32-bit hash, so these may, rarely, be another mm's.
    pub foreign_updates: u64,
    /// `curr == 0` events seen before `mm_id` was known: dropped, counted.
    pub unattributed: u64,
}

/// Per-CPU page-fault counts of the target (map `FAULT_COUNTS`), from the
/// perf software events `PERF_COUNT_SW_PAGE_FAULTS_MIN` / `_MAJ`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub minor: u64,
    pub major: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)], contain only integers and have no
    // padding (checked by the size assertions below).
    unsafe impl aya::Pod for super::CpuAccount {}
    unsafe impl aya::Pod for super::RssCounters {}
    unsafe impl aya::Pod for super::RssStats {}
    unsafe impl aya::Pod for super::FaultCounts {}
}

// No padding: sizes equal the sum of field sizes.
const _: () = assert!(core::mem::size_of::<CpuAccount>() == 32);
const _: () = assert!(core::mem::size_of::<RssCounters>() == 40);
const _: () = assert!(core::mem::size_of::<RssStats>() == 32);
const _: () = assert!(core::mem::size_of::<FaultCounts>() == 16);
