//! The sampled time series and the per-window arithmetic on it.
//!
//! The kernel keeps cumulative counters (CPU ns, faults) and current values
//! (RSS, peak); user space samples them every `--interval` together with the
//! `/proc` ground truth. A window's numbers are differences between its first
//! and last sample, so any set of windows (the whole run, a k6 phase) comes
//! from the same series without re-reading the kernel. Pure code: no I/O.

/// One reading of everything, at `t_ns` (CLOCK_MONOTONIC, the clock of
/// `bpf_ktime_get_ns`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub t_ns: u64,
    /// eBPF: on-CPU ns of the thread group since attach (incl. running slices).
    pub cpu_ns: u64,
    /// eBPF: RSS (file + anon + shmem) bytes now.
    pub rss_bytes: u64,
    /// eBPF: highest RSS since attach.
    pub peak_rss_bytes: u64,
    /// eBPF: page faults since attach.
    pub minor_faults: u64,
    pub major_faults: u64,
    /// eBPF: TCP resets on inbound / upstream connections since attach.
    pub resets: u64,
    pub upstream_resets: u64,
    /// eBPF: events lost (event ring full, connection table full) since attach.
    pub lost_events: u64,
    /// `/proc/PID/net/netstat` `ListenOverflows`: handshakes dropped on a
    /// full accept queue in the target's network namespace (cumulative).
    pub listen_overflows: u64,
    /// Ground truth: `/proc/PID/stat` utime + stime, ns (clock-tick resolution).
    pub proc_cpu_ns: u64,
    /// Ground truth: `/proc/PID/status` VmRSS / VmHWM, bytes.
    pub proc_rss_bytes: u64,
    pub proc_hwm_bytes: u64,
    /// Ground truth: `/proc/PID/stat` minflt / majflt (cumulative since start).
    pub proc_minor_faults: u64,
    pub proc_major_faults: u64,
}

/// The numbers of one window `[first.t_ns, last.t_ns]`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowStats {
    pub duration_ns: u64,
    pub cpu_ns: u64,
    /// Average % of one core: `cpu_ns / duration_ns * 100`.
    pub cpu_percent: f64,
    pub proc_cpu_ns: u64,
    pub proc_cpu_percent: f64,
    /// RSS at the end of the window, and the highest seen in it.
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Average RSS over the samples of the window.
    pub mean_rss_bytes: u64,
    pub proc_rss_bytes: u64,
    pub proc_hwm_bytes: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub proc_minor_faults: u64,
    pub proc_major_faults: u64,
    pub resets: u64,
    pub upstream_resets: u64,
    pub lost_events: u64,
    pub listen_overflows: u64,
}

impl WindowStats {
    pub fn page_faults(&self) -> u64 {
        self.minor_faults + self.major_faults
    }
    pub fn proc_page_faults(&self) -> u64 {
        self.proc_minor_faults + self.proc_major_faults
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { f64::NAN } else { part as f64 * 100.0 / whole as f64 }
}

/// Computes a window over `samples` (in time order, at least one).
///
/// The peak: the kernel's peak since attach is exact; if it rose inside the
/// window, the new peak happened inside the window. Otherwise the window's
/// peak is below the earlier all-time peak and is taken from its samples (the
/// exact in-kernel value is the highest sampled RSS, and the end value).
pub fn window(samples: &[Sample]) -> Option<WindowStats> {
    let (first, last) = (samples.first()?, samples.last()?);
    let duration_ns = last.t_ns.saturating_sub(first.t_ns);
    let cpu_ns = last.cpu_ns.saturating_sub(first.cpu_ns);
    let proc_cpu_ns = last.proc_cpu_ns.saturating_sub(first.proc_cpu_ns);
    let sampled_max = samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
    let peak_rss_bytes = if last.peak_rss_bytes > first.peak_rss_bytes {
        last.peak_rss_bytes.max(sampled_max)
    } else {
        sampled_max
    };
    let mean_rss_bytes =
        (samples.iter().map(|s| s.rss_bytes as u128).sum::<u128>() / samples.len() as u128) as u64;
    Some(WindowStats {
        duration_ns,
        cpu_ns,
        cpu_percent: percent(cpu_ns, duration_ns),
        proc_cpu_ns,
        proc_cpu_percent: percent(proc_cpu_ns, duration_ns),
        rss_bytes: last.rss_bytes,
        peak_rss_bytes,
        mean_rss_bytes,
        proc_rss_bytes: last.proc_rss_bytes,
        proc_hwm_bytes: last.proc_hwm_bytes,
        minor_faults: last.minor_faults.saturating_sub(first.minor_faults),
        major_faults: last.major_faults.saturating_sub(first.major_faults),
        proc_minor_faults: last.proc_minor_faults.saturating_sub(first.proc_minor_faults),
        proc_major_faults: last.proc_major_faults.saturating_sub(first.proc_major_faults),
        resets: last.resets.saturating_sub(first.resets),
        upstream_resets: last.upstream_resets.saturating_sub(first.upstream_resets),
        lost_events: last.lost_events.saturating_sub(first.lost_events),
        listen_overflows: last.listen_overflows.saturating_sub(first.listen_overflows),
    })
}

/// The series read at `t_ns`, between two samples: cumulative counters
/// (CPU time, faults, resets) are interpolated linearly; instantaneous values
/// (RSS, peak) are the earlier sample's, the last value known at `t_ns`.
pub fn at(samples: &[Sample], t_ns: u64) -> Option<Sample> {
    let after = samples.partition_point(|s| s.t_ns <= t_ns);
    let a = samples.get(after.checked_sub(1)?)?;
    let Some(b) = samples.get(after) else { return Some(*a) };
    let f = (t_ns - a.t_ns) as f64 / (b.t_ns - a.t_ns) as f64;
    let lerp = |x: u64, y: u64| x + (y.saturating_sub(x) as f64 * f) as u64;
    Some(Sample {
        t_ns,
        cpu_ns: lerp(a.cpu_ns, b.cpu_ns),
        minor_faults: lerp(a.minor_faults, b.minor_faults),
        major_faults: lerp(a.major_faults, b.major_faults),
        resets: lerp(a.resets, b.resets),
        upstream_resets: lerp(a.upstream_resets, b.upstream_resets),
        lost_events: lerp(a.lost_events, b.lost_events),
        listen_overflows: lerp(a.listen_overflows, b.listen_overflows),
        proc_cpu_ns: lerp(a.proc_cpu_ns, b.proc_cpu_ns),
        proc_minor_faults: lerp(a.proc_minor_faults, b.proc_minor_faults),
        proc_major_faults: lerp(a.proc_major_faults, b.proc_major_faults),
        ..*a
    })
}

/// The window `[start_ns, end_ns]` (clamped to the series), with its edges
/// read by [`at`] so that a phase boundary between two samples costs at most
/// the non-linearity within one interval, not a whole interval.
pub fn window_between(samples: &[Sample], start_ns: u64, end_ns: u64) -> Option<WindowStats> {
    let (first, last) = (samples.first()?, samples.last()?);
    let (start, end) = (start_ns.max(first.t_ns), end_ns.min(last.t_ns));
    if start > end {
        return None;
    }
    let mut edges = vec![at(samples, start)?];
    edges.extend(samples.iter().filter(|s| s.t_ns > start && s.t_ns < end));
    edges.push(at(samples, end)?);
    window(&edges)
}

/// One sampling interval `(previous sample, t_ns]`: the CPU time used in it
/// and the RSS at its end, for the report's timelines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub t_ns: u64,
    pub duration_ns: u64,
    pub cpu_ns: u64,
    /// % of one core over the interval (NaN for an empty interval).
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

/// The series as intervals between every `stride`-th sample (the last
/// sample always ends the last one), so a long run keeps a bounded number
/// of points. The intervals' CPU times add up to the whole window's.
pub fn intervals(samples: &[Sample], max_points: usize) -> Vec<Interval> {
    let stride = samples.len().saturating_sub(1).div_ceil(max_points.max(1)).max(1);
    let mut picked: Vec<&Sample> = samples.iter().step_by(stride).collect();
    if let Some(last) = samples.last()
        && picked.last().is_some_and(|p| p.t_ns != last.t_ns)
    {
        picked.push(last);
    }
    picked
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let duration_ns = b.t_ns.saturating_sub(a.t_ns);
            let cpu_ns = b.cpu_ns.saturating_sub(a.cpu_ns);
            Interval {
                t_ns: b.t_ns,
                duration_ns,
                cpu_ns,
                cpu_percent: percent(cpu_ns, duration_ns),
                rss_bytes: b.rss_bytes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_ms: u64, cpu_ms: u64, rss: u64, peak: u64) -> Sample {
        Sample {
            t_ns: t_ms * 1_000_000,
            cpu_ns: cpu_ms * 1_000_000,
            rss_bytes: rss,
            peak_rss_bytes: peak,
            ..Default::default()
        }
    }

    #[test]
    fn cpu_percent_is_of_one_core() {
        // Two cores busy for 1 s: 2 s of CPU, 200 %.
        let w = window(&[s(0, 0, 0, 0), s(1000, 2000, 0, 0)]).unwrap();
        assert_eq!(w.cpu_ns, 2_000_000_000);
        assert!((w.cpu_percent - 200.0).abs() < 1e-9);
        assert_eq!(w.duration_ns, 1_000_000_000);
    }

    #[test]
    fn empty_and_single_sample_windows() {
        assert!(window(&[]).is_none());
        let w = window(&[s(5, 1, 10, 10)]).unwrap();
        assert_eq!(w.duration_ns, 0);
        assert!(w.cpu_percent.is_nan(), "no rate over an empty window");
        assert_eq!(w.rss_bytes, 10);
    }

    #[test]
    fn peak_inside_window_comes_from_the_kernel() {
        // The kernel saw 500 between samples; samples show at most 300.
        let w = window(&[s(0, 0, 100, 100), s(100, 0, 300, 500), s(200, 0, 200, 500)]).unwrap();
        assert_eq!(w.peak_rss_bytes, 500);
        assert_eq!(w.rss_bytes, 200);
    }

    #[test]
    fn earlier_peak_does_not_leak_into_a_later_window() {
        // All-time peak 900 happened before this window; the window's own peak is sampled.
        let w = window(&[s(0, 0, 100, 900), s(100, 0, 150, 900), s(200, 0, 120, 900)]).unwrap();
        assert_eq!(w.peak_rss_bytes, 150);
        assert_eq!(w.mean_rss_bytes, (100 + 150 + 120) / 3);
    }

    #[test]
    fn counters_never_go_negative() {
        let mut a = s(0, 10, 0, 0);
        a.minor_faults = 5;
        let b = s(10, 5, 0, 0); // a reset counter must not wrap to 2^64
        let w = window(&[a, b]).unwrap();
        assert_eq!((w.cpu_ns, w.minor_faults), (0, 0));
    }

    #[test]
    fn edges_between_samples_are_interpolated() {
        let v = [s(0, 0, 100, 100), s(100, 100, 200, 200), s(200, 300, 300, 300)];
        let w = window_between(&v, 50 * 1_000_000, 150 * 1_000_000).unwrap();
        assert_eq!(w.duration_ns, 100_000_000);
        // cpu at 50 ms: 50 ms; at 150 ms: 200 ms.
        assert_eq!(w.cpu_ns, 150_000_000);
        assert_eq!(w.rss_bytes, 200, "RSS at 150 ms is the last known value");
        assert!(window_between(&v, 500 * 1_000_000, 600 * 1_000_000).is_none());
        let clamped = window_between(&v, 0, u64::MAX).unwrap();
        assert_eq!(clamped.cpu_ns, 300_000_000);
    }

    #[test]
    fn intervals_add_up_to_the_window_and_stay_bounded() {
        let v: Vec<Sample> = (0..=10).map(|i| s(i * 100, i * i * 10, i * 1000, i * 1000)).collect();
        let every = intervals(&v, 100);
        assert_eq!(every.len(), 10);
        assert_eq!(
            every[0],
            Interval {
                t_ns: 100_000_000,
                duration_ns: 100_000_000,
                cpu_ns: 10_000_000,
                cpu_percent: 10.0,
                rss_bytes: 1000,
            }
        );
        let whole = window(&v).unwrap();
        let sum = |iv: &[Interval]| iv.iter().map(|i| i.cpu_ns).sum::<u64>();
        assert_eq!(sum(&every), whole.cpu_ns);
        // At most 3 points: every 4th sample (0, 4, 8) and the last (10).
        let few = intervals(&v, 3);
        assert_eq!(few.iter().map(|i| i.t_ns / 1_000_000).collect::<Vec<_>>(), [400, 800, 1000]);
        assert_eq!(sum(&few), whole.cpu_ns);
        assert!(intervals(&v[..1], 10).is_empty());
    }
}
