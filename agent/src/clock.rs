//! The clocks: CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns` and of every
//! time perf-agent keeps, and its offset from wall-clock time for what comes
//! from outside (k6's timestamps, `--phases-json`).

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `clock_gettime(clock)` in ns. Async-signal-safe (the SIGUSR1 mark
/// handler uses it).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, ns: add it to a monotonic time to get
/// Unix ns. Read once per run, so that every conversion agrees.
pub fn epoch_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) as i128 - clock_ns(libc::CLOCK_MONOTONIC) as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_places_monotonic_time_on_the_wall_clock() {
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as i128;
        let placed = monotonic_ns() as i128 + epoch_offset_ns();
        assert!((placed - wall).abs() < 50_000_000, "{placed} vs {wall}");
    }
}
