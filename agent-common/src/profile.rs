//! CPU profiling (`--profile-dir`): what the `perf_event` program on
//! cpu-clock sends user space for each sample of the target, and its
//! counters. Kernel side: `agent-ebpf/src/{cpu_clock,profile,offcpu}.rs`;
//! user space: `agent/src/probes/profile.rs` and `agent/src/profile/`.

/// Bytes in one page of the copied user stack.
pub const STACK_PAGE: usize = 4096;
/// Pages of user stack copied per sample, from the page holding the user
/// stack pointer upwards (towards the callers): 32 KiB, of which at least
/// 28 KiB are above the stack pointer.
pub const STACK_PAGES: usize = 8;
/// Kernel return addresses kept per sample (the kernel's
/// `perf_event_max_stack` is 127 by default).
pub const KERNEL_FRAMES: usize = 128;

/// Bits of [`SampleHead::flags`].
pub mod sample_flags {
    /// The task's user registers could not be read: no user stack.
    pub const NO_USER_REGS: u32 = 1;
    /// Taken when the thread blocked (`sched_switch`, not running), not by
    /// the cpu-clock: its weight is the time until it runs again, sent
    /// later in a [`SchedRecord`](super::SchedRecord) of kind
    /// [`OFF_CPU_END`](super::sched_kind::OFF_CPU_END) with the same `tid`
    /// and `time_ns`.
    pub const OFF_CPU: u32 = 2;
}

/// One sample of a target thread: its user registers, its kernel stack
/// (return addresses from `bpf_get_stack`) and a copy of its user stack,
/// which user space unwinds with the binaries' `.eh_frame` (no frame
/// pointers needed). Built in a per-CPU scratch (map `PROFILE_SCRATCH`: it
/// is 33 KiB, far beyond the BPF stack) and sent as one ring record of
/// [`SAMPLE_HEAD_BYTES`] plus the `user_pages` pages actually copied: a
/// blocked demo-server thread's stack is ~17 KiB, a cpu-clock sample's
/// ~12 KiB, so the ring holds two to three times the records a
/// whole-struct reservation would.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProfileSample {
    pub head: SampleHead,
    /// User stack bytes from `stack_base` upwards (the first `user_pages`
    /// pages are sent).
    pub user_stack: [u8; STACK_PAGE * STACK_PAGES],
}

/// Everything of a [`ProfileSample`] but its user stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SampleHead {
    /// CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`).
    pub time_ns: u64,
    /// User-mode instruction pointer, stack pointer and frame pointer (the
    /// registers saved at the task's last entry into the kernel, or at the
    /// timer interrupt when it ran in user mode).
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// User address of `user_stack[0]`: `sp` rounded down to a page.
    pub stack_base: u64,
    pub tgid: u32,
    pub tid: u32,
    /// `Target::execs` when sampled: user space reloads the address space's
    /// mappings when it changes.
    pub execs: u32,
    /// Whole pages of `user_stack` that were copied (a read stops at the
    /// first unmapped page, the top of the stack), and sent.
    pub user_pages: u32,
    /// Bytes of `kernel_stack` filled (8 per frame), negative on error.
    pub kernel_bytes: i32,
    /// [`sample_flags`].
    pub flags: u32,
    /// Kernel return addresses, innermost first.
    pub kernel_stack: [u64; KERNEL_FRAMES],
}

/// Bytes of a sample's ring record before its user stack.
pub const SAMPLE_HEAD_BYTES: usize = core::mem::size_of::<SampleHead>();

/// The ring record's length for a sample with `user_pages` pages of stack.
pub const fn sample_record_bytes(user_pages: u32) -> usize {
    let pages = if user_pages as usize > STACK_PAGES { STACK_PAGES } else { user_pages as usize };
    SAMPLE_HEAD_BYTES + pages * STACK_PAGE
}

/// Bits of [`SchedRecord::kind`].
pub mod sched_kind {
    /// A blocked target thread whose stack was sent ran again: `time_ns` it
    /// blocked (the key of its [`ProfileSample`](super::ProfileSample)),
    /// `duration_ns` until it ran.
    pub const OFF_CPU_END: u32 = 1;
    /// A block of at least [`OFF_CPU_LONG_BLOCK_NS`](super::OFF_CPU_LONG_BLOCK_NS)
    /// whose stack was not taken ended: no stack, `time_ns` its end
    /// (CLOCK_MONOTONIC), `block_ns` its time, `thread_off_cpu_ns` the
    /// thread's exact total. It lets user space give the thread's time to
    /// the thread's own stacks where no sampled block of it ended (the
    /// last wait of a busy thread, chosen with the small chance its busy
    /// period set, was all `[stack not sampled]`).
    pub const OFF_CPU_LONG_END: u32 = 2;
}

/// The shortest unsampled block that sends a
/// [`sched_kind::OFF_CPU_LONG_END`] record: one sampling period at the
/// default 99 Hz. At most `OFF_CPU_STACKS_PER_SEC` such records per CPU and
/// second (the per-period aim, [`OffCpuBudget::long_records`]).
pub const OFF_CPU_LONG_BLOCK_NS: u64 = 10_000_000;

/// Small ring-buffer records of the `sched_switch` program, told apart
/// from a [`ProfileSample`] by their size: sent for blocks whose stack was
/// sent, and for long ones whose stack was not ([`sched_kind`]; everything
/// else is counted in maps). `duration_ns` is
/// the block's time times its weight ([`OffCpuBudget`]), `block_ns` the
/// block's time itself (user space places the record at the block's end,
/// `time_ns + block_ns`, where the kernel's totals count it too);
/// `thread_off_cpu_ns` the thread's exact time off CPU so far, every block
/// (chosen or not) included, up to the end of this one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedRecord {
    pub time_ns: u64,
    pub duration_ns: u64,
    pub block_ns: u64,
    pub thread_off_cpu_ns: u64,
    pub tid: u32,
    /// [`sched_kind`].
    pub kind: u32,
}

/// Scheduling state of one target thread, kept in the thread's own BPF
/// task storage (map `THREAD_SCHED`; freed with the thread), updated in
/// place by `sched_switch`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSched {
    /// When it blocked (every block, chosen or not), on the switch clock
    /// (the run queue's, `agent-ebpf/src/offcpu.rs`); 0: no block waiting
    /// to be counted (the thread's next switch-out counts it).
    pub blocked_ns: u64,
    /// When the current block's stack was sent, CLOCK_MONOTONIC (its
    /// `ProfileSample::time_ns`): the block's [`SchedRecord`] repeats it,
    /// and user space pairs the two by it.
    pub stack_ns: u64,
    /// The kernel's `sched_info.run_delay` of the thread at its last
    /// switch-out: the growth by the next one is the run-queue wait before
    /// the slice that ends at the second.
    pub run_delay_ns: u64,
    /// Its exact time off CPU so far, ns: every block, switch-out to
    /// switch-in, counted at the switch-out after (sent with each
    /// [`SchedRecord`]).
    pub off_cpu_ns: u64,
    /// 1 when the stack of the current block was sent.
    pub sampled: u32,
    /// 1 once `run_delay_ns` holds a reading (a thread's first switch-out
    /// seen only records it).
    pub known: u32,
    /// What the current block's time is multiplied by (its sampling's
    /// `one_in`); 0: not chosen.
    pub weight: u32,
    /// Stacks of the thread copied since its stack's end was last probed
    /// (`stack_top`).
    pub stack_copies: u32,
    /// The end of the thread's user stack, as the copy of a stack last
    /// found it (the first page above it could not be read); 0: not known.
    /// A copy then stops there rather than try the page above, whose
    /// failed read costs a page fault (~3 µs, more than copying two
    /// pages); every [`STACK_END_PROBE_EVERY`]th copy tries it again.
    pub stack_top: u64,
}

/// How often a copy of a thread's stack probes past its known end
/// ([`ThreadSched::stack_top`]), in copies: a wrong end (a page that
/// could not be read for another reason) lasts at most this many.
pub const STACK_END_PROBE_EVERY: u32 = 32;

impl ThreadSched {
    /// How many pages of the thread's stack to copy from `base` (the stack
    /// pointer's page) up, for one more copy: up to its known end, or
    /// [`STACK_PAGES`] (until a read fails) when the end is not known, not
    /// above `base` (`sp` is on another stack: a signal's), too far to
    /// matter, or due to be probed again.
    #[inline(always)]
    pub fn stack_pages_to_copy(&mut self, base: u64) -> usize {
        self.stack_copies += 1;
        let span = self.stack_top.wrapping_sub(base);
        if self.stack_copies >= STACK_END_PROBE_EVERY
            || self.stack_top <= base
            || span > (STACK_PAGES * STACK_PAGE) as u64
        {
            self.stack_copies = 0;
            return STACK_PAGES;
        }
        (span / STACK_PAGE as u64) as usize
    }
}

/// Bits of the `PROFILE_SCHED` global: what the `sched_switch` program
/// does for profiling (set by user space before load; 0 without
/// `--profile-dir`, and the verifier then drops that code).
pub mod sched_mode {
    /// Run-queue waits (`sched/runq_wait_*`).
    pub const RUNQ: u32 = 1;
    /// Off-CPU stacks and times (not with `--no-off-cpu`).
    pub const OFF_CPU: u32 = 2;
}

/// Bins of the run-queue wait histogram ([`runq_bin`]): values up to
/// 2^40 ns (18 minutes), longer ones in the last bin.
pub const RUNQ_BINS: usize = 16 + 37 * 16;

/// What the `sched_switch` program counts rather than sends when profiling
/// (map `SCHED_COUNTS`, one slot per CPU), read by user space every 100 ms.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SchedCounts {
    /// ns off CPU of the target's threads, exact: every block, switch-out
    /// to switch-in, counted at its end.
    pub off_cpu_ns: u64,
    /// Run-queue waits per [`runq_bin`].
    pub runq: [u64; RUNQ_BINS],
}

/// The bin of a wait of `v` ns: exact below 16, then 16 bins per power of
/// two (a bin's width is 1/16 of its lower edge: its middle is within 1/32
/// of any value in it). Plain shifts and compares, for the BPF side too.
#[inline(always)]
pub fn runq_bin(v: u64) -> usize {
    if v < 16 {
        return v as usize;
    }
    // floor(log2(v)) without a count-leading-zeros instruction.
    let (mut e, mut x) = (0u64, v);
    if x >= 1 << 32 {
        x >>= 32;
        e += 32;
    }
    if x >= 1 << 16 {
        x >>= 16;
        e += 16;
    }
    if x >= 1 << 8 {
        x >>= 8;
        e += 8;
    }
    if x >= 1 << 4 {
        x >>= 4;
        e += 4;
    }
    if x >= 1 << 2 {
        x >>= 2;
        e += 2;
    }
    if x >= 1 << 1 {
        e += 1;
    }
    let bin = 16 + (e - 4) * 16 + ((v >> (e - 4)) & 15);
    if bin as usize >= RUNQ_BINS { RUNQ_BINS - 1 } else { bin as usize }
}

/// Per CPU (map `OFF_CPU_BUDGET`): how blocks are chosen for a stack. Each
/// block is chosen with probability `1 / one_in` and then weighs
/// `one_in` times its time (an unbiased estimate of every block's time
/// per stack); `one_in` is set every [`OFF_CPU_PERIOD_NS`] from the blocks
/// of the period before, and raised within a period as its blocks pass
/// that, so that about the aimed-at number of stacks are chosen (the
/// global `OFF_CPU_STACKS_PER_SEC`: `--profile-hz`, 1 in `one_in` while
/// blocks are fewer: every block is then sampled). A token
/// bucket refilled at twice that rate caps the copies (a burst before
/// `one_in` catches up): a chosen block it refuses sends nothing (its time
/// is in its thread's exact total all the same).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuBudget {
    /// When the bucket was last refilled, ns.
    pub last_ns: u64,
    /// Budget saved up, in ns of refill time.
    pub credit_ns: u64,
    /// Start of the current period, ns.
    pub period_start_ns: u64,
    /// ns of refill time one stack costs ([`off_cpu_stack_cost_ns`]), set
    /// at each period's start from the aim (a division the blocks in
    /// between do not pay).
    pub stack_cost_ns: u64,
    /// Blocks seen in the current period.
    pub blocks: u32,
    /// 1 in how many blocks is chosen now (at least 1 once a block was seen).
    pub one_in: u32,
    /// Stacks aimed at per period ([`off_cpu_stacks_per_period`]).
    pub per_period: u32,
    /// [`sched_kind::OFF_CPU_LONG_END`] records sent in the current
    /// period (at most `per_period`).
    pub long_records: u32,
    /// This CPU's xorshift64 state for the draws that choose blocks (0:
    /// not seeded yet).
    pub rng: u64,
}

/// How often the sampling rate of blocks follows their number, ns.
pub const OFF_CPU_PERIOD_NS: u64 = 100_000_000;

/// Stacks per CPU and period that block sampling aims at, for an aim of
/// `stacks_per_sec` per CPU (rounded up, at least 1).
#[inline(always)]
pub fn off_cpu_stacks_per_period(stacks_per_sec: u32) -> u32 {
    let n = (u64::from(stacks_per_sec) * OFF_CPU_PERIOD_NS).div_ceil(1_000_000_000);
    if n == 0 { 1 } else { n as u32 }
}

/// Most stacks sent per CPU and second when target threads block, for an
/// aim of `stacks_per_sec`: the token bucket's rate, twice the aim.
#[inline(always)]
pub fn off_cpu_stacks_per_sec_max(stacks_per_sec: u32) -> u64 {
    2 * u64::from(if stacks_per_sec == 0 { 1 } else { stacks_per_sec })
}

/// ns of the token bucket's refill time one stack costs.
#[inline(always)]
pub fn off_cpu_stack_cost_ns(stacks_per_sec: u32) -> u64 {
    1_000_000_000 / off_cpu_stacks_per_sec_max(stacks_per_sec)
}

/// `one_in` after `blocks` blocks in a period that aims at `per_period`
/// stacks: the blocks over the aim, rounded down, at least 1.
#[inline(always)]
pub fn off_cpu_one_in(blocks: u32, per_period: u32) -> u32 {
    let n = blocks.checked_div(per_period).unwrap_or(blocks);
    if n == 0 { 1 } else { n }
}

/// Per-CPU counters of the profiling programs (map `PROFILE_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileStats {
    /// Samples of the target sent to user space.
    pub sent: u64,
    /// Samples, block stacks or sched records lost: the ring buffer was full.
    pub ring_full: u64,
    /// Blocks of target threads (all of them, chosen or not).
    pub off_cpu_blocks: u64,
    /// Stacks sent when a target thread blocked.
    pub off_cpu_stacks: u64,
    /// Blocks chosen whose stack was not sent (over the token bucket).
    pub off_cpu_unsampled: u64,
    /// Run-queue waits counted, and their total, ns.
    pub runq_waits: u64,
    pub runq_total_ns: u64,
    /// User stack bytes copied into samples sent (cpu-clock and blocks).
    pub stack_bytes: u64,
}

impl ProfileStats {
    /// Adds another CPU's counters, field by field (see
    /// [`crate::add_u64_fields`]).
    pub fn accumulate(&mut self, other: &ProfileStats) {
        // SAFETY: `repr(C)`, eight `u64` fields, nothing else.
        unsafe { crate::add_u64_fields(self, other) }
    }
}

/// Smallest ring buffer, used when profiling is off (the map exists in the
/// object either way; a power of two of pages).
pub const RING_BYTES_OFF: u32 = 4096;

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], integers only, no padding (asserted below).
    unsafe impl aya::Pod for super::ProfileStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SchedRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SchedCounts {}
}

const _: () = assert!(core::mem::size_of::<ProfileStats>() == 8 * 8);
const _: () = assert!(core::mem::size_of::<SchedRecord>() == 40);
const _: () = assert!(core::mem::size_of::<ThreadSched>() == 56);
const _: () = assert!(core::mem::size_of::<SchedCounts>() == 8 + RUNQ_BINS * 8);
const _: () = assert!(core::mem::size_of::<OffCpuBudget>() == 56);
const _: () = assert!(SAMPLE_HEAD_BYTES == 5 * 8 + 6 * 4 + KERNEL_FRAMES * 8);
const _: () =
    assert!(core::mem::size_of::<ProfileSample>() == SAMPLE_HEAD_BYTES + STACK_PAGE * STACK_PAGES);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runq_bins_are_monotonic_and_fine() {
        let mut last = 0;
        for v in 0..200_000u64 {
            let b = runq_bin(v);
            assert!(b >= last, "{v}");
            last = b;
        }
        assert_eq!(runq_bin(16), 16);
        assert_eq!(runq_bin(17), 17);
        assert_eq!(runq_bin(32), 32);
        assert_eq!(runq_bin(34), 33);
        assert_eq!(runq_bin(u64::MAX), RUNQ_BINS - 1);
        assert_eq!(runq_bin((1 << 41) - 1), RUNQ_BINS - 1);
    }

    #[test]
    fn blocks_are_chosen_one_in_their_number_over_the_aim() {
        // 99 stacks/s (the default --profile-hz): 10 per 100 ms period.
        let per_period = off_cpu_stacks_per_period(99);
        assert_eq!(per_period, 10);
        assert_eq!(off_cpu_stacks_per_period(0), 1);
        assert_eq!(off_cpu_stacks_per_period(1), 1);
        assert_eq!(off_cpu_stacks_per_period(1000), 100);
        assert_eq!(off_cpu_one_in(0, per_period), 1);
        assert_eq!(off_cpu_one_in(per_period * 2 - 1, per_period), 1, "under twice the aim: all");
        assert_eq!(off_cpu_one_in(per_period * 2, per_period), 2);
        assert_eq!(off_cpu_one_in(per_period * 50 + 3, per_period), 50);
        assert_eq!(off_cpu_one_in(7, 0), 7, "no division by zero");
    }

    #[test]
    fn stack_copies_stop_at_the_known_end_and_probe_again_now_and_then() {
        const P: u64 = STACK_PAGE as u64;
        let base = 0x7f00_0000_0000u64;
        let mut t = ThreadSched::default();
        assert_eq!(t.stack_pages_to_copy(base), STACK_PAGES, "end not known");
        t.stack_top = base + 3 * P;
        assert_eq!(t.stack_pages_to_copy(base), 3);
        assert_eq!(t.stack_pages_to_copy(base + P), 2, "deeper sp, same end");
        assert_eq!(t.stack_pages_to_copy(base + 3 * P), STACK_PAGES, "sp at the end: probe");
        assert_eq!(t.stack_pages_to_copy(base + 5 * P), STACK_PAGES, "sp above it: probe");
        assert_eq!(t.stack_pages_to_copy(base - 10 * P), STACK_PAGES, "too far: all pages");
        t.stack_copies = 0;
        let known =
            (1..=STACK_END_PROBE_EVERY).filter(|_| t.stack_pages_to_copy(base) == 3).count();
        assert_eq!(known, STACK_END_PROBE_EVERY as usize - 1, "one probe in every 32 copies");
    }

    #[test]
    fn the_bucket_refills_at_twice_the_aim() {
        assert_eq!(off_cpu_stacks_per_sec_max(99), 198);
        assert_eq!(off_cpu_stack_cost_ns(99), 1_000_000_000 / 198);
        assert_eq!(off_cpu_stack_cost_ns(0), 500_000_000);
    }
}
