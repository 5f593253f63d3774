//! CPU profiling (`--profile-dir`): what the `perf_event` program on
//! cpu-clock sends user space for each sample of the target, what the
//! off-CPU ticks' task iterator writes, and their counters. Kernel side:
//! `agent-ebpf/src/{cpu_clock,profile,offcpu_ticks,sched}.rs`;
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
    /// Taken by an off-CPU tick of a blocked thread, not by the cpu-clock
    /// (`agent-ebpf/src/offcpu_ticks.rs`).
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

/// Where a sampled target thread's user stack ends, kept in the thread's
/// own BPF task storage (map `THREAD_STACK`; freed with the thread) by the
/// programs that copy its stack (`agent-ebpf/src/profile.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStack {
    /// The end of the thread's user stack, as the copy of a stack last
    /// found it (the first page above it could not be read); 0: not known.
    /// A copy then stops there rather than try the page above, whose
    /// failed read costs a page fault (~3 µs, more than copying two
    /// pages); every [`STACK_END_PROBE_EVERY`]th copy tries it again.
    pub stack_top: u64,
    /// Stacks of the thread copied since its stack's end was last probed
    /// (`stack_top`).
    pub stack_copies: u32,
    pub _pad: u32,
}

/// How often a copy of a thread's stack probes past its known end
/// ([`ThreadStack::stack_top`]), in copies: a wrong end (a page that
/// could not be read for another reason) lasts at most this many.
pub const STACK_END_PROBE_EVERY: u32 = 32;

impl ThreadStack {
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

/// Bins of the run-queue wait histogram ([`runq_bin`]): values up to
/// 2^40 ns (18 minutes), longer ones in the last bin.
pub const RUNQ_BINS: usize = 16 + 37 * 16;

/// What the `sched_switch` program counts when profiling (map
/// `SCHED_COUNTS`, one slot per CPU), read by user space every 100 ms.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SchedCounts {
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

/// Per-CPU counters of the profiling programs (map `PROFILE_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileStats {
    /// Samples of the target sent to user space.
    pub sent: u64,
    /// Samples lost: the ring buffer was full.
    pub ring_full: u64,
    /// Run-queue waits counted, and their total, ns.
    pub runq_waits: u64,
    pub runq_total_ns: u64,
    /// User stack bytes copied into samples sent.
    pub stack_bytes: u64,
}

impl ProfileStats {
    /// Adds another CPU's counters, field by field (see
    /// [`crate::add_u64_fields`]).
    pub fn accumulate(&mut self, other: &ProfileStats) {
        // SAFETY: `repr(C)`, five `u64` fields, nothing else.
        unsafe { crate::add_u64_fields(self, other) }
    }
}

/// Off-CPU by wall-clock ticks (`agent-ebpf/src/offcpu_ticks.rs`): what
/// the task iterator writes for each target thread at a tick, followed in
/// its output by a [`SampleHead`] and its `user_pages` pages when `flags`
/// has [`tick_flags::STACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickThread {
    /// The thread's context switches so far (`nvcsw + nivcsw`): unchanged
    /// between two ticks, the thread has not run in between, so a blocked
    /// thread is still in the same block.
    pub switches: u64,
    /// Of those, the ones it was preempted at (`nivcsw`).
    pub preemptions: u64,
    /// When the iterator read this thread (`bpf_ktime_get_ns`), and when
    /// the thread began (`start_time`), both `CLOCK_MONOTONIC` ns.
    pub time_ns: u64,
    pub start_ns: u64,
    /// Its CPU time so far (`se.sum_exec_runtime`, plus the running
    /// slice's part not yet added when it is on a CPU).
    pub exec_ns: u64,
    /// Its run-queue waits so far (`sched_info.run_delay`, plus the
    /// current wait's part when it is waiting). With `exec_ns` and the
    /// wall clock, its exact time asleep: what is neither run nor waited.
    pub run_delay_ns: u64,
    /// Time stolen from its CPUs while it ran (by the hypervisor: steal
    /// time), so far: in neither its CPU time nor its waits. Summed at its
    /// switch-outs by `sched_switch` ([`StolenSlot`]), plus the running
    /// slice's part when it is on a CPU.
    pub stolen_ns: u64,
    pub tid: u32,
    /// [`tick_flags`].
    pub flags: u32,
}

/// Time stolen from one thread's running slices on one CPU (map
/// `THREAD_STOLEN`, per CPU, slot `tid % STOLEN_SLOTS`): at a target
/// thread's switch-out, its slice's run-queue clock less its CPU time (the
/// scheduler's task clock skips steal time). A slot another thread holds
/// is taken over (its sum starts again), so with more than
/// [`STOLEN_SLOTS`] threads some sums restart; user space sees a sum fall
/// and counts from there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StolenSlot {
    pub stolen_ns: u64,
    pub tid: u32,
    pub _pad: u32,
}

/// Slots of `THREAD_STOLEN` per CPU (a power of two).
pub const STOLEN_SLOTS: u32 = 1024;

/// CPUs whose `THREAD_STOLEN` slots an off-CPU tick sums at most.
pub const TICK_MAX_CPUS: u32 = 512;

/// Bits of the global `PROFILE_SCHED`: the work `sched_switch` does, set
/// before load (the verifier prunes the rest). It is attached only with
/// `--runq-waits`.
pub mod sched_work {
    /// Run-queue waits into `SCHED_COUNTS` (`--runq-waits`).
    pub const RUNQ_WAITS: u32 = 1;
    /// Time stolen from target slices into `THREAD_STOLEN`, which only the
    /// off-CPU ticks read (`--runq-waits` without `--no-off-cpu`; else
    /// user space estimates it from `/proc/stat`).
    pub const STOLEN: u32 = 2;
}

/// Bits of [`TickThread::flags`].
pub mod tick_flags {
    /// Off CPU at the tick: not on a CPU, and sleeping
    /// (`TASK_INTERRUPTIBLE` or `TASK_UNINTERRUPTIBLE`), or woken inside a
    /// system call and waiting for a CPU (the end of a block).
    pub const BLOCKED: u32 = 1;
    /// Blocked and chosen by the tick's draw ([`tick_selected`]): its
    /// stack stands for the thread's blocked ticks.
    pub const SELECTED: u32 = 2;
    /// A stack follows (selected, and a block whose stack user space did
    /// not have yet).
    pub const STACK: u32 = 4;
    /// Blocked because woken and waiting for a CPU (not asleep): the
    /// block's tail, part of `run_delay_ns`.
    pub const WOKEN: u32 = 8;
    /// In a run queue waiting for a CPU, woken or preempted.
    pub const WAITING: u32 = 16;
    /// Selected, but the stack taken was dropped: the thread ran (or was
    /// running again) while its stack was copied, so the copy may mix two
    /// moments of it. The block's time still counts, without a stack.
    pub const TORN: u32 = 32;
}

/// What user space sets before each tick's read (map `OFF_CPU_TICK`, one
/// slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickConfig {
    /// The draws' seed, mixed with each read's session id: a blocked
    /// thread is selected when `tick_selected(seed', tid, threshold)`.
    pub seed: u64,
    /// Selection probability × 2^32 (`u32::MAX`: every blocked thread).
    pub threshold: u32,
    pub _pad: u32,
}

/// Pages of user stack an off-CPU tick copies at most: its whole record
/// (a [`TickThread`], the head, the pages) must fit the iterator's output
/// buffer, 32 KiB per object (`bpf_iter`'s `seq_file`), or the read fails.
pub const TICK_STACK_PAGES: usize = 7;

/// Whether blocked thread `tid` is selected at a tick with `seed`: a
/// 64-bit mix of the two (splitmix64's finalizer), its top 32 bits under
/// `threshold`. The same on both sides of the kernel boundary; decided
/// from the tick's inputs only, so an object the iterator shows twice (its
/// output overflowed the buffer) gets the same answer.
#[inline(always)]
pub fn tick_selected(seed: u64, tid: u32, threshold: u32) -> bool {
    let mut x = seed ^ u64::from(tid);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    threshold == u32::MAX || ((x >> 32) as u32) < threshold
}

/// Smallest ring buffer, used when profiling is off (the map exists in the
/// object either way; a power of two of pages).
pub const RING_BYTES_OFF: u32 = 4096;

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], integers only, no padding (asserted below).
    unsafe impl aya::Pod for super::ProfileStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SchedCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TickConfig {}
}

const _: () = assert!(core::mem::size_of::<ProfileStats>() == 5 * 8);
const _: () = assert!(core::mem::size_of::<ThreadStack>() == 16);
const _: () = assert!(core::mem::size_of::<SchedCounts>() == RUNQ_BINS * 8);
const _: () = assert!(core::mem::size_of::<TickThread>() == 64);
const _: () = assert!(core::mem::size_of::<TickConfig>() == 16);
const _: () = assert!(core::mem::size_of::<StolenSlot>() == 16);
const _: () = assert!(STOLEN_SLOTS.is_power_of_two());
const _: () = assert!(
    core::mem::size_of::<TickThread>() + SAMPLE_HEAD_BYTES + TICK_STACK_PAGES * STACK_PAGE
        <= 32 * 1024
);
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
    fn stack_copies_stop_at_the_known_end_and_probe_again_now_and_then() {
        const P: u64 = STACK_PAGE as u64;
        let base = 0x7f00_0000_0000u64;
        let mut t = ThreadStack::default();
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
    fn tick_draws_select_their_share_of_threads() {
        let n = 100_000u32;
        for (threshold, share) in [(u32::MAX / 4, 0.25), (u32::MAX / 2, 0.5)] {
            for seed in [1u64, 0xdead_beef, 7 << 40] {
                let chosen = (0..n).filter(|&tid| tick_selected(seed, tid, threshold)).count();
                let got = chosen as f64 / f64::from(n);
                assert!((got - share).abs() < 0.01, "seed {seed}: {got} for {share}");
            }
        }
        assert!((0..1000).all(|tid| tick_selected(3, tid, u32::MAX)), "all");
        assert!(!(0..1000).any(|tid| tick_selected(3, tid, 0)), "none");
        // Another seed selects other threads (independent draws per tick).
        let same = (0..1000)
            .filter(|&t| tick_selected(1, t, u32::MAX / 2) == tick_selected(2, t, u32::MAX / 2))
            .count();
        assert!((400..600).contains(&same), "{same} of 1000 alike");
    }
}
