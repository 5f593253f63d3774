//! What is measured: the target (one thread group, or node mode's set)
//! and the `const volatile` matches that arm it at exec or mark its
//! startup milestones.

/// The thread group being measured (map `TARGET`, one-slot `ARRAY`).
///
/// A map rather than a constant because it can be set by the kernel side
/// itself: in launch and wait-for-exec modes the exec hook arms it at the
/// target's exec, so nothing before the exec is counted and nothing after it
/// is missed. `tgid == 0` means no target yet (0 is also the idle task's
/// tgid, so every filter checks for it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub tgid: u32,
    /// execs by the target seen since it was armed (it may exec again): the
    /// profiler's unwinder reloads the target's address space when it
    /// changes (`agent/src/profile/unwind.rs`).
    pub execs: u32,
    /// CLOCK_MONOTONIC ns of the exec that armed it; 0 in attach mode.
    pub exec_ns: u64,
    /// The exec'ing thread's `se.sum_exec_runtime` at that exec: where the
    /// target's process CPU clock starts counting (the launcher's time
    /// before the exec is not the target's); 0 in attach mode.
    pub runtime_at_exec_ns: u64,
    /// The thread group's minor and major page faults at that exec (the
    /// exec'ing thread's plus its dead threads'): where the counts from
    /// `/proc/PID/stat` start; 0 in attach mode.
    pub min_flt_at_exec: u64,
    pub maj_flt_at_exec: u64,
}

/// One target of node mode (map `TARGETS`, a `HASH` keyed by tgid, sized by
/// `serve --max-targets`). Inserted by user space for a process its
/// selectors found running, or by the exec hook when an exec matches one of
/// the selector maps (`EXEC_COMMS`, `EXEC_PATHS`, `EXEC_CGROUPS`, whose
/// values are the selector's index); removed by user space when the process
/// has exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetMember {
    /// Index of the selector that matched (user space's numbering).
    pub selector: u32,
    /// execs by this thread group since it became a target.
    pub execs: u32,
    /// CLOCK_MONOTONIC ns of the exec that made it a target; 0 when user
    /// space added it.
    pub exec_ns: u64,
}

/// Key of `EXEC_PATHS`: a path as passed to `execve`, NUL-padded.
pub const EXEC_PATH_KEY: usize = 256;
/// Key of `EXEC_COMMS`: a command name as the kernel keeps it, NUL-padded.
pub const COMM_KEY: usize = 16;

/// Kinds of [`ExecMatch`].
pub mod exec_match {
    /// Never arm at exec (attach mode: user space sets the target).
    pub const NONE: u32 = 0;
    /// Arm when process `pid` execs (launch mode: our own child).
    pub const PID: u32 = 1;
    /// Arm when a process execs with `comm` equal to `name_a`.
    pub const COMM: u32 = 2;
    /// Arm when the exec'd filename equals `name_a` or `name_b`.
    pub const PATH: u32 = 3;
    /// Longest name matched (bytes, without the NUL).
    pub const NAME_MAX: usize = 255;
}

/// `const volatile` configuration of the exec hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecMatch {
    pub kind: u32,
    pub pid: u32,
    pub len_a: u32,
    pub len_b: u32,
    pub name_a: [u8; 256],
    pub name_b: [u8; 256],
}

impl ExecMatch {
    pub const NONE: ExecMatch = ExecMatch {
        kind: exec_match::NONE,
        pid: 0,
        len_a: 0,
        len_b: 0,
        name_a: [0; 256],
        name_b: [0; 256],
    };
}

/// `const volatile` request paths whose responses mark startup milestones
/// (`--health-path`, `--ready-path`). Length 0: not watched, and the read
/// hooks that would find them are not attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathMatch {
    pub health_len: u32,
    pub ready_len: u32,
    pub health: [u8; 128],
    pub ready: [u8; 128],
}

impl PathMatch {
    pub const NONE: PathMatch =
        PathMatch { health_len: 0, ready_len: 0, health: [0; 128], ready: [0; 128] };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], integers only, no padding (asserted below).
    unsafe impl aya::Pod for super::Target {}
    unsafe impl aya::Pod for super::TargetMember {}
    unsafe impl aya::Pod for super::ExecMatch {}
    unsafe impl aya::Pod for super::PathMatch {}
}

// No padding: sizes equal the sum of field sizes.
const _: () = assert!(core::mem::size_of::<Target>() == 40);
const _: () = assert!(core::mem::size_of::<TargetMember>() == 16);
const _: () = assert!(core::mem::size_of::<ExecMatch>() == 16 + 512);
const _: () = assert!(core::mem::size_of::<PathMatch>() == 8 + 256);
