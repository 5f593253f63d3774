//! perf-agent's eBPF programs. One module per probe family, named like its
//! user-space twin in `agent/src/probes/`:
//!
//! - [`exec`]: `sched:sched_process_exec` → arms the target at its exec
//!   (launch and wait-for-exec modes), time zero of startup.
//! - [`memory`]: `kmem:rss_stat` → RSS and its peak. (Page faults need no
//!   program: user space reads the kernel's counters in `/proc/PID/stat`.)
//! - [`net`]: socket tracepoints → requests, upstream calls, errors.
//! - [`cpu_clock`]: perf cpu-clock → stack samples (`--profile-dir`),
//!   built and sent by [`profile`].
//! - [`sched`]: `sched_switch`, attached only when profiling → run-queue
//!   waits. (CPU time needs no program: user space reads the target's
//!   process CPU clock.)
//! - [`offcpu_ticks`]: a task iterator user space reads at each off-CPU
//!   tick (`--profile-dir`) → blocked threads' states and stacks.
//! - [`stats`]: an empty program, attached only while the kernel's run-time
//!   statistics are on: the statistics' own cost per run.
//!
//! Everything is filtered on the target's tgid (map `TARGET`), or for the
//! socket programs on the socket having storage. Memory is aggregated in
//! the kernel into per-CPU counters: nothing crosses to user
//! space on those paths, so there is nothing to lose and no wake-up to pay.
//! Requests go through a per-CPU event ring in a mapped array, drained
//! without wake-ups (see `net::ring`). [`access`] holds the helpers every
//! family uses to read kernel memory and write map values.
#![no_std]
#![no_main]
// `atomic_xadd`: the event ring's reservation (see `net::ring::emit`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod access;
mod config;
mod exec;
mod memory;
mod net;
// CPU profiling (issue 15), attached only with --profile-dir.
mod cpu_clock;
mod offcpu_ticks;
mod profile;
mod sched;
mod stats;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
