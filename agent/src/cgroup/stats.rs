//! What a cgroup's files say at the end of a run, parsed (pure, tested on
//! recorded files of both layouts): CPU throttling, peak memory, OOM kills.

use std::path::Path;

use super::Version;

/// A cgroup's counters since it was created (perf-agent creates a fresh one
/// per run, so these are the run's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Enforcement periods that had runnable tasks (`nr_periods`).
    pub cpu_periods: Option<u64>,
    /// Periods in which the quota ran out (`nr_throttled`).
    pub cpu_throttled_periods: Option<u64>,
    /// Time the tasks spent throttled, ns (v1 `throttled_time`, v2
    /// `throttled_usec` × 1000).
    pub cpu_throttled_ns: Option<u64>,
    /// Highest memory charged to the cgroup, bytes (v2 `memory.peak`, v1
    /// `memory.max_usage_in_bytes`).
    pub memory_peak: Option<u64>,
    /// Processes the OOM killer killed in it (v2 `memory.events` `oom_kill`,
    /// v1 `memory.oom_control` `oom_kill`).
    pub oom_kills: Option<u64>,
}

impl CgroupStats {
    /// Throttled periods over periods, in percent.
    pub fn throttled_percent(&self) -> Option<f64> {
        match (self.cpu_throttled_periods, self.cpu_periods) {
            (Some(t), Some(p)) if p > 0 => Some(t as f64 * 100.0 / p as f64),
            (Some(_), Some(_)) => Some(0.0),
            _ => None,
        }
    }

    /// Reads the counters of `cpu_dir` and `memory_dir` (either may be
    /// absent: that limit was not asked for). Files that cannot be read
    /// leave their numbers unknown.
    pub fn read(version: Version, cpu_dir: Option<&Path>, memory_dir: Option<&Path>) -> Self {
        let read = |dir: Option<&Path>, file: &str| {
            dir.and_then(|d| std::fs::read_to_string(d.join(file)).ok())
        };
        let mut s = CgroupStats::default();
        if let Some(text) = read(cpu_dir, "cpu.stat") {
            s.cpu_periods = keyed(&text, "nr_periods");
            s.cpu_throttled_periods = keyed(&text, "nr_throttled");
            s.cpu_throttled_ns = match version {
                Version::V1 => keyed(&text, "throttled_time"),
                Version::V2 => keyed(&text, "throttled_usec").map(|us| us * 1000),
            };
        }
        match version {
            Version::V1 => {
                s.memory_peak = read(memory_dir, "memory.max_usage_in_bytes")
                    .and_then(|t| t.trim().parse().ok());
                s.oom_kills =
                    read(memory_dir, "memory.oom_control").and_then(|t| keyed(&t, "oom_kill"));
            }
            Version::V2 => {
                s.memory_peak = read(memory_dir, "memory.peak").and_then(|t| t.trim().parse().ok());
                s.oom_kills = read(memory_dir, "memory.events").and_then(|t| keyed(&t, "oom_kill"));
            }
        }
        s
    }
}

/// The value of `key` in a flat-keyed file (`key value` per line).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v2 files in the format of the kernel's cgroup-v2.rst (this machine has
    /// no v2 controllers to record them from): `cpu.stat` with `cpu.max`
    /// "50000 100000" after two spinning threads, `memory.events` after an
    /// OOM kill.
    const V2_CPU_STAT: &str = "usage_usec 1503112\nuser_usec 1501020\nsystem_usec 2092\n\
        core_sched.force_idle_usec 0\nnr_periods 31\nnr_throttled 30\nthrottled_usec 1483360\n\
        nr_bursts 0\nburst_usec 0\n";
    const V2_MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 212\noom 1\noom_kill 1\noom_group_kill 0\n";
    /// Recorded on this machine (v1, kernel 6.18) during `run --cpus 0.5`
    /// with two spinning threads; `memory.oom_control` recorded too, its
    /// `oom_kill` set to 2 (it read 0 before any kill).
    const V1_CPU_STAT: &str =
        "nr_periods 28\nnr_throttled 27\nthrottled_time 3894586041\nnr_bursts 0\nburst_time 0\n";
    const V1_OOM_CONTROL: &str = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";

    fn dir_with(files: &[(&str, &str)]) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "perf-agent-cgstats-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn v2_files() {
        let dir = dir_with(&[
            ("cpu.stat", V2_CPU_STAT),
            ("memory.events", V2_MEMORY_EVENTS),
            ("memory.peak", "134217728\n"),
        ]);
        let s = CgroupStats::read(Version::V2, Some(&dir), Some(&dir));
        assert_eq!(s.cpu_periods, Some(31));
        assert_eq!(s.cpu_throttled_periods, Some(30));
        assert_eq!(s.cpu_throttled_ns, Some(1_483_360_000), "µs → ns");
        assert_eq!(s.memory_peak, Some(134_217_728));
        assert_eq!(s.oom_kills, Some(1));
        assert!((s.throttled_percent().unwrap() - 96.774).abs() < 0.001);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn v1_files() {
        let dir = dir_with(&[
            ("cpu.stat", V1_CPU_STAT),
            ("memory.oom_control", V1_OOM_CONTROL),
            ("memory.max_usage_in_bytes", "782336\n"),
        ]);
        let s = CgroupStats::read(Version::V1, Some(&dir), Some(&dir));
        assert_eq!(s.cpu_throttled_ns, Some(3_894_586_041), "already ns");
        assert_eq!((s.cpu_periods, s.cpu_throttled_periods), (Some(28), Some(27)));
        assert_eq!(s.memory_peak, Some(782_336));
        assert_eq!(s.oom_kills, Some(2));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_files_and_limits_leave_numbers_unknown() {
        let dir = dir_with(&[("cpu.stat", "usage_usec 5\n")]);
        let s = CgroupStats::read(Version::V2, Some(&dir), None);
        assert_eq!(s, CgroupStats::default(), "no throttling fields, no memory dir");
        assert_eq!(s.throttled_percent(), None);
        let idle = CgroupStats { cpu_periods: Some(0), cpu_throttled_periods: Some(0), ..s };
        assert_eq!(idle.throttled_percent(), Some(0.0));
        assert_eq!(keyed("oom_kill_disable 0\noom_kill 3", "oom_kill"), Some(3), "whole key");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
