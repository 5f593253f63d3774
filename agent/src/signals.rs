//! SIGINT / SIGTERM / SIGHUP handling: the handler only records the signal; the
//! main loop sees it (its `poll` returns EINTR, as SA_RESTART is not set),
//! detaches and writes what it measured. A second signal while results are
//! being written changes nothing: they are written once.
//!
//! SIGUSR1 is a phase marker for load tools that cannot run `perf-agent
//! mark`: each one starts a phase (`mark-1`, `mark-2`, ...), stamped in the
//! handler itself.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// CLOCK_MONOTONIC ns of each SIGUSR1, in order; later ones past the
/// capacity are counted but not stamped.
const MAX_MARKS: usize = 256;
static MARK_TIMES: [AtomicU64; MAX_MARKS] = [const { AtomicU64::new(0) }; MAX_MARKS];
static MARKS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn record_mark(_signal: libc::c_int) {
    // clock_gettime and atomics only: async-signal-safe.
    let now = crate::clock::monotonic_ns();
    let i = MARKS.fetch_add(1, Ordering::SeqCst);
    if let Some(slot) = MARK_TIMES.get(i) {
        slot.store(now, Ordering::SeqCst);
    }
}

/// The SIGUSR1 marks received from index `from` on: (index, time).
pub fn marks_since(from: usize) -> Vec<(usize, u64)> {
    let n = MARKS.load(Ordering::SeqCst).min(MAX_MARKS);
    (from..n)
        .map(|i| (i, MARK_TIMES[i].load(Ordering::SeqCst)))
        .take_while(|(_, t)| *t != 0) // stamped just after being counted
        .collect()
}

extern "C" fn record(signal: libc::c_int) {
    // Keep the first one: it is the reason the run ended.
    let _ = RECEIVED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

pub fn install() {
    let handlers: [(i32, extern "C" fn(libc::c_int)); 4] = [
        (libc::SIGINT, record),
        (libc::SIGTERM, record),
        (libc::SIGHUP, record),
        (libc::SIGUSR1, record_mark),
    ];
    for (signal, handler) in handlers {
        // SAFETY: installing async-signal-safe handlers (atomics, clock_gettime).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = 0;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The first signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
