//! `#[repr(C)]` types shared by the eBPF programs (`agent-ebpf`) and the
//! user-space agent (`agent`, with the `user` feature).
//!
//! Rules, as in aya's own shared crates: no padding (every struct is a
//! multiple of 8 bytes with fields ordered large to small), integers instead of
//! `bool`, and nothing that has a different layout on the two sides.
//!
//! One module per family, as on the kernel side (`agent-ebpf/src/`): each
//! type's doc names the map that holds it and the programs that fill it.
//! The types are re-exported at the root, so `agent_common::ConnState`
//! and `agent_common::net::ConnState` are one type.
#![no_std]

pub mod memory;
pub mod net;
pub mod offsets;
// CPU profiling (issue 15): its types stay under `profile::`.
pub mod profile;
pub mod target;

pub use memory::*;
pub use net::*;
pub use offsets::*;
pub use target::*;

/// Adds `from` to `into` as `u64` words, wrapping: per-CPU counters summed
/// without naming each field, so a field added later cannot be left out.
///
/// # Safety
/// `T` must be `repr(C)` and made only of `u64` fields (no padding).
pub unsafe fn add_u64_fields<T>(into: &mut T, from: &T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let words = core::mem::size_of::<T>() / 8;
    let into = into as *mut T as *mut u64;
    let from = from as *const T as *const u64;
    for i in 0..words {
        // SAFETY: in bounds of two distinct `T`s of `words` u64 words each
        // (the caller's promise).
        unsafe { *into.add(i) = (*into.add(i)).wrapping_add(*from.add(i)) };
    }
}

/// Names of the `const volatile` globals user space sets before load.
///
/// They live here so the two sides cannot disagree on a spelling.
pub mod globals {
    /// [`TracepointOffsets`](super::TracepointOffsets): where each field the
    /// programs read sits in its tracepoint record.
    pub const OFFSETS: &str = "OFFSETS";
    /// [`ExecMatch`](super::ExecMatch): which exec arms the target.
    pub const EXEC_MATCH: &str = "EXEC_MATCH";
    /// [`PathMatch`](super::PathMatch): request paths to recognise.
    pub const PATH_MATCH: &str = "PATH_MATCH";
    /// `u32`: log2 of the slots per CPU in the request event ring
    /// ([`EventSlot`](super::EventSlot)).
    pub const EVENT_RING_SHIFT: &str = "EVENT_RING_SHIFT";
    /// `u32`: 1 in node mode (`perf-agent serve`): the targets are the
    /// tgids in the hash map `TARGETS` ([`TargetMember`](super::TargetMember)),
    /// armed at exec by the selector maps, and `TARGET` stays empty. 0 (the
    /// one-target modes): the verifier prunes the set's code, so their
    /// filter is still one array lookup and a compare.
    pub const TARGET_SET: &str = "TARGET_SET";
    /// `u32`: what `sched_switch` does ([`sched_work`](crate::profile::sched_work) bits):
    /// nothing without `--profile-dir --runq-waits` (nor is it attached).
    pub const PROFILE_SCHED: &str = "PROFILE_SCHED";
    /// `u32`: 1 with `--delivery` (issue 14's queue/drain/delivered/accept
    /// wait and retransmits). 0: the socket programs skip the delivery
    /// bookkeeping (the verifier prunes it) and its three hooks are not
    /// attached.
    pub const DELIVERY: &str = "DELIVERY";
}

/// Names of the maps and programs (`names.rs`).
pub mod names;
