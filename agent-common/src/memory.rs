//! RSS (`kmem:rss_stat`, `agent-ebpf/src/memory.rs`): the target's
//! counters and the per-CPU statistics.

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

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], integers only, no padding (asserted below).
    unsafe impl aya::Pod for super::RssCounters {}
    unsafe impl aya::Pod for super::RssStats {}
}

// No padding: sizes equal the sum of field sizes.
const _: () = assert!(core::mem::size_of::<RssCounters>() == 40);
const _: () = assert!(core::mem::size_of::<RssStats>() == 32);
