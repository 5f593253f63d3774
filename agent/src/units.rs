//! Numbers as people read them: sizes in MiB/GiB, durations in µs/ms/s,
//! differences in percent. For the summary and the live status line.

pub fn human_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b as f64 >= 1024.0 * MIB {
        format!("{:.2} GiB", b as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

pub fn human_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// Relative difference of `agent` from `truth`, as text; empty when it
/// means nothing (no truth, a value that is not a number).
pub fn relative_diff(agent: f64, truth: f64) -> String {
    if truth == 0.0 || !truth.is_finite() || !agent.is_finite() {
        return String::new();
    }
    format!("{:+.2} %", (agent - truth) * 100.0 / truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_switch_at_their_thresholds() {
        assert_eq!(human_bytes(10 << 20), "10.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(human_ns(1500.0), "1.5 µs");
        assert_eq!(human_ns(2.5e6), "2.50 ms");
        assert_eq!(human_ns(1.25e9), "1.250 s");
        assert_eq!(human_ns(f64::NAN), "-");
    }

    #[test]
    fn differences_only_against_a_real_truth() {
        assert_eq!(relative_diff(50.0, 40.0), "+25.00 %");
        assert_eq!(relative_diff(1.0, 0.0), "");
        assert_eq!(relative_diff(f64::NAN, 1.0), "");
    }
}
