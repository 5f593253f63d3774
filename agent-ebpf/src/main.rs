//! perf-agent's eBPF programs. One module per probe family, named like its
//! user-space twin in `agent/src/probes/`:
//!
//! - [`cpu`]: `sched:sched_switch` → on-CPU time of the target's thread group.
//! - [`memory`]: `kmem:rss_stat` → RSS and its peak; perf software events →
//!   minor and major page faults.
//!
//! Everything is filtered on the target's tgid, set before load in the
//! `const volatile` global `TARGET_TGID`, and aggregated in the kernel into
//! per-CPU counters: no event crosses to user space on these paths, so there is
//! nothing to lose and no wake-up to pay.
#![no_std]
#![no_main]

mod config;
mod cpu;
mod memory;
mod net;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
