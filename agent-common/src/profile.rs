//! CPU profiling (`--profile-dir`): what the `perf_event` program on
//! cpu-clock sends user space for each sample of the target, and its
//! counters. Kernel side: `agent-ebpf/src/profile.rs`; user space:
//! `agent/src/probes/profile.rs` and `agent/src/profile/`.

/// Map and program names, so the two sides cannot disagree on a spelling.
pub mod names {
    /// `RINGBUF` of [`ProfileSample`](super::ProfileSample) records.
    pub const SAMPLES: &str = "PROFILE_SAMPLES";
    /// One-slot `PERCPU_ARRAY` of [`ProfileStats`](super::ProfileStats).
    pub const STATS: &str = "PROFILE_STATS";
    /// The `perf_event` program attached to cpu-clock on every CPU.
    pub const PROGRAM: &str = "profile_cpu_clock";
}

/// Bytes in one page of the copied user stack.
pub const STACK_PAGE: usize = 4096;
/// Pages of user stack copied per sample, from the page holding the user
/// stack pointer upwards (towards the callers): 32 KiB, of which at least
/// 28 KiB are above the stack pointer.
pub const STACK_PAGES: usize = 8;
/// Kernel return addresses kept per sample (the kernel's
/// `perf_event_max_stack` is 127 by default).
pub const KERNEL_FRAMES: usize = 128;

/// Bits of [`ProfileSample::flags`].
pub mod sample_flags {
    /// The task's user registers could not be read: no user stack.
    pub const NO_USER_REGS: u32 = 1;
}

/// One sample of a target thread: its user registers, its kernel stack
/// (return addresses from `bpf_get_stack`) and a copy of its user stack,
/// which user space unwinds with the binaries' `.eh_frame` (no frame
/// pointers needed). Written straight into the ring buffer, never on the
/// BPF stack (it is 33 KiB).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProfileSample {
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
    /// first unmapped page, the top of the stack).
    pub user_pages: u32,
    /// Bytes of `kernel_stack` filled (8 per frame), negative on error.
    pub kernel_bytes: i32,
    /// [`sample_flags`].
    pub flags: u32,
    /// Kernel return addresses, innermost first.
    pub kernel_stack: [u64; KERNEL_FRAMES],
    /// User stack bytes from `stack_base` upwards.
    pub user_stack: [u8; STACK_PAGE * STACK_PAGES],
}

/// Per-CPU counters of the profiling program (map `PROFILE_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileStats {
    /// Samples of the target sent to user space.
    pub sent: u64,
    /// Samples of the target lost because the ring buffer was full.
    pub ring_full: u64,
}

/// Smallest ring buffer, used when profiling is off (the map exists in the
/// object either way; a power of two of pages).
pub const RING_BYTES_OFF: u32 = 4096;

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], integers only, no padding (asserted below).
    unsafe impl aya::Pod for super::ProfileStats {}
}

const _: () = assert!(core::mem::size_of::<ProfileStats>() == 16);
const _: () = assert!(
    core::mem::size_of::<ProfileSample>()
        == 5 * 8 + 6 * 4 + KERNEL_FRAMES * 8 + STACK_PAGE * STACK_PAGES
);
