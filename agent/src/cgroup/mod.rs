//! Sidecar-realistic runs without Docker: `run --cpus 0.5 --memory 128m`
//! starts the target in a cgroup of its own with the limits `docker run
//! --cpus 0.5 --memory 128m` sets, on either layout:
//!
//! | limit | cgroup v2 | cgroup v1 |
//! |---|---|---|
//! | `--cpus C` | `cpu.max` = "C×100000 100000" | `cpu.cfs_period_us` = 100000, `cpu.cfs_quota_us` = C×100000 |
//! | `--memory M` | `memory.max` = M, `memory.swap.max` = 0 | `memory.limit_in_bytes` = M, `memory.memsw.limit_in_bytes` = M (where present) |
//!
//! Where the cgroup goes: [`place`]. What it reports at the end: [`stats`]
//! (throttling from `cpu.stat`, the peak, OOM kills), added to the BMF file
//! as `cgroup/*` with the names REQ-OBS-001 tracks for such runs,
//! `throughput/rps_constrained` and `memory/constrained_rss`. The cgroup is
//! `perf-agent-<agent pid>`; it is removed at the end (leftover processes of
//! the target killed first), and one a killed agent left behind is removed
//! at the next start.

pub mod limits;
pub mod place;
pub mod stats;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub use self::{limits::Limits, stats::CgroupStats};
use crate::bmf::{BmfReport, Measure};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The target's cgroup, alive until dropped.
#[derive(Debug)]
pub struct Sandbox {
    pub version: Version,
    pub limits: Limits,
    cpu_dir: Option<PathBuf>,
    memory_dir: Option<PathBuf>,
    removed: bool,
}

const PREFIX: &str = "perf-agent-";

impl Sandbox {
    /// Creates `perf-agent-<pid>` where [`place::placement`] says, with the
    /// limits written; errors name the controller or the permission missing.
    pub fn create(limits: Limits) -> anyhow::Result<Sandbox> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let own = fs::read_to_string("/proc/self/cgroup")?;
        let controllers = |root: &Path| fs::read_to_string(root.join("cgroup.controllers")).ok();
        let (need_cpu, need_memory) = (limits.cpus.is_some(), limits.memory.is_some());
        let p = place::placement(&mountinfo, &own, controllers, need_cpu, need_memory)?;
        let name = format!("{PREFIX}{}", std::process::id());
        let mut sandbox = Sandbox {
            version: p.version,
            limits,
            cpu_dir: p.cpu_parent.map(|d| d.join(&name)),
            memory_dir: p.memory_parent.map(|d| d.join(&name)),
            removed: false,
        };
        for dir in sandbox.dirs() {
            let parent = dir.parent().expect("a cgroup has a parent");
            remove_stale(parent);
            if p.version == Version::V2 {
                enable_controllers(parent, need_cpu, need_memory)?;
            }
            fs::create_dir(&dir).with_context(|| {
                format!(
                    "cannot create the cgroup {} for --cpus/--memory (perf-agent must be \
                     root or own a delegated cgroup; is /sys/fs/cgroup read-only here?)",
                    dir.display()
                )
            })?;
        }
        if let Err(e) = sandbox.write_limits() {
            let _ = sandbox.remove();
            return Err(e);
        }
        Ok(sandbox)
    }

    /// The distinct directories (one on v2, one per controller on v1).
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> =
            [&self.cpu_dir, &self.memory_dir].into_iter().flatten().cloned().collect();
        dirs.dedup();
        dirs
    }

    fn write_limits(&self) -> anyhow::Result<()> {
        if let (Some(dir), Some(cpus)) = (&self.cpu_dir, self.limits.cpus) {
            for (file, value) in limits::cpu_writes(self.version, cpus) {
                write(dir, file, &value)?;
            }
        }
        if let (Some(dir), Some(bytes)) = (&self.memory_dir, self.limits.memory) {
            for (file, value, optional) in limits::memory_writes(self.version, bytes) {
                if optional && !dir.join(file).exists() {
                    continue; // no swap accounting on this kernel: nothing to limit
                }
                write(dir, file, &value)?;
            }
        }
        Ok(())
    }

    /// Moves `pid` (the gated child, before its exec) into the cgroup.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        for dir in self.dirs() {
            write(&dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The counters so far (read after the target ended, before removal).
    pub fn stats(&self) -> CgroupStats {
        CgroupStats::read(self.version, self.cpu_dir.as_deref(), self.memory_dir.as_deref())
    }

    /// Kills what is left in the cgroup (the target's own children) and
    /// removes it.
    pub fn remove(&mut self) -> anyhow::Result<()> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        for dir in self.dirs().into_iter().filter(|d| d.exists()) {
            empty_and_remove(&dir, true)?;
        }
        Ok(())
    }

    /// The summary line.
    pub fn summary(&self, s: &CgroupStats) -> String {
        let v = match self.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
        };
        let mut parts = vec![format!("cgroup {v} ({})", self.limits.describe())];
        if let Some(cpus) = self.limits.cpus {
            let mut cpu = format!("cpu quota {cpus} CPU");
            if let (Some(t), Some(p)) = (s.cpu_throttled_periods, s.cpu_periods) {
                let pct = s.throttled_percent().unwrap_or(0.0);
                cpu += &format!(", throttled in {t} of {p} periods ({pct:.1} %)");
            }
            if let Some(ns) = s.cpu_throttled_ns {
                cpu += &format!(", {} throttled", crate::units::human_ns(ns as f64));
            }
            parts.push(cpu);
        }
        if let Some(limit) = self.limits.memory {
            let mut mem = format!("memory limit {}", crate::units::human_bytes(limit));
            if let Some(peak) = s.memory_peak {
                mem += &format!(", peak {}", crate::units::human_bytes(peak));
            }
            if let Some(k) = s.oom_kills {
                mem += &format!(", OOM kills {k}");
            }
            parts.push(mem);
        }
        parts.join("; ") + "\n"
    }

    /// When the OOM killer struck: the message naming the limit.
    pub fn oom_message(&self, s: &CgroupStats) -> Option<String> {
        let kills = s.oom_kills.filter(|&k| k > 0)?;
        let limit = self.limits.memory?;
        let dir = self.memory_dir.as_deref().map(|d| d.display().to_string()).unwrap_or_default();
        Some(format!(
            "the OOM killer killed {kills} process(es) of the target: it reached --memory {} \
             ({limit} bytes, {dir}); results so far written",
            self.limits.memory_arg.as_deref().unwrap_or("")
        ))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("perf-agent: warning: {e:#}");
        }
    }
}

/// The `cgroup/*` metrics and the two names REQ-OBS-001 tracks for
/// constrained runs: `throughput/rps_constrained` (the run's `throughput/rps`,
/// under load when there is a load phase) and `memory/constrained_rss`
/// (`memory/under_load_rss`, else the run's mean RSS).
pub fn add_metrics(b: &mut BmfReport, s: &CgroupStats, mean_rss_bytes: u64) {
    if let Some(rps) = b.get("throughput/rps", Measure::Throughput) {
        b.add("throughput/rps_constrained", Measure::Throughput, rps);
    }
    let rss = b.get("memory/under_load_rss", Measure::Memory).unwrap_or(mean_rss_bytes as f64);
    b.add("memory/constrained_rss", Measure::Memory, rss);
    let mut add = |id: &str, m: Measure, v: Option<f64>| {
        if let Some(v) = v {
            b.add(id, m, v);
        }
    };
    add("cgroup/memory_peak", Measure::Memory, s.memory_peak.map(|v| v as f64));
    add("cgroup/cpu_throttled_percent", Measure::Percent, s.throttled_percent());
    add("cgroup/cpu_throttled_time", Measure::CpuTime, s.cpu_throttled_ns.map(|v| v as f64));
    add("cgroup/cpu_throttled_periods", Measure::Count, s.cpu_throttled_periods.map(|v| v as f64));
    add("cgroup/cpu_periods", Measure::Count, s.cpu_periods.map(|v| v as f64));
    add("cgroup/oom_kills", Measure::Count, s.oom_kills.map(|v| v as f64));
}

fn write(dir: &Path, file: &str, value: &str) -> anyhow::Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// v2: the parent must hand the controllers to its children.
fn enable_controllers(parent: &Path, cpu: bool, memory: bool) -> anyhow::Result<()> {
    let current = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = [("cpu", cpu), ("memory", memory)]
        .iter()
        .filter(|(c, need)| *need && !current.split_whitespace().any(|x| x == *c))
        .map(|(c, _)| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(parent, "cgroup.subtree_control", &missing.join(" ")).with_context(|| {
        format!(
            "cannot enable {} for the children of {} (a cgroup v2 parent with processes of \
             its own cannot; run perf-agent where the cgroup root is writable)",
            missing.join(" "),
            parent.display()
        )
    })
}

/// A `perf-agent-<pid>` cgroup whose agent is gone: its processes (if any)
/// go back to the parent, unconstrained, and it is removed.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive =
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "perf-agent");
        if pid == std::process::id() || alive {
            continue;
        }
        match empty_and_remove(&entry.path(), false) {
            Ok(()) => eprintln!(
                "perf-agent: removed the stale cgroup {} (left by a perf-agent that did not finish)",
                entry.path().display()
            ),
            Err(e) => eprintln!("perf-agent: warning: stale cgroup: {e:#}"),
        }
    }
}

/// Empties `dir` (kills its processes, or moves them to the parent when
/// `kill` is false) and removes it, retrying while they exit.
fn empty_and_remove(dir: &Path, kill: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<u32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
        for &pid in &pids {
            if kill {
                // SAFETY: kill(2) has no memory preconditions; these PIDs are
                // in our cgroup, the target's own processes.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            } else if let Some(parent) = dir.parent() {
                let _ = write(parent, "cgroup.procs", &pid.to_string());
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("cannot remove the cgroup {} ({e}; processes in it: {pids:?})", dir.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constrained_names_come_from_the_run() {
        let mut b = BmfReport::default();
        b.add("throughput/rps", Measure::Throughput, 812.5);
        b.add("memory/under_load_rss", Measure::Memory, 40e6);
        let s = CgroupStats {
            cpu_periods: Some(100),
            cpu_throttled_periods: Some(25),
            cpu_throttled_ns: Some(2_000_000_000),
            memory_peak: Some(50_000_000),
            oom_kills: Some(0),
        };
        add_metrics(&mut b, &s, 1);
        assert_eq!(b.get("throughput/rps_constrained", Measure::Throughput), Some(812.5));
        assert_eq!(b.get("memory/constrained_rss", Measure::Memory), Some(40e6));
        assert_eq!(b.get("cgroup/cpu_throttled_percent", Measure::Percent), Some(25.0));
        assert_eq!(b.get("cgroup/cpu_throttled_time", Measure::CpuTime), Some(2e9));
        assert_eq!(b.get("cgroup/memory_peak", Measure::Memory), Some(5e7));
        assert_eq!(b.get("cgroup/oom_kills", Measure::Count), Some(0.0));
        let mut idle = BmfReport::default();
        add_metrics(&mut idle, &CgroupStats::default(), 3 << 20);
        assert_eq!(idle.get("memory/constrained_rss", Measure::Memory), Some((3 << 20) as f64));
        assert!(idle.get("throughput/rps_constrained", Measure::Throughput).is_none());
        assert!(idle.get("cgroup/oom_kills", Measure::Count).is_none(), "unknown is left out");
    }

    #[test]
    fn summary_and_oom_message_name_the_limits() {
        let limits = Limits::parse(Some("0.5"), Some("128m")).unwrap();
        let sb = Sandbox {
            version: Version::V2,
            limits,
            cpu_dir: None,
            memory_dir: Some("/sys/fs/cgroup/perf-agent-1".into()),
            removed: true,
        };
        let s = CgroupStats {
            cpu_periods: Some(30),
            cpu_throttled_periods: Some(29),
            cpu_throttled_ns: Some(1_450_000_000),
            memory_peak: Some(128 << 20),
            oom_kills: Some(1),
        };
        let line = sb.summary(&s);
        assert!(line.starts_with("cgroup v2 (--cpus 0.5 --memory 128m)"), "{line}");
        assert!(
            line.contains("throttled in 29 of 30 periods (96.7 %), 1.450 s throttled"),
            "{line}"
        );
        assert!(line.contains("memory limit 128.0 MiB, peak 128.0 MiB, OOM kills 1"), "{line}");
        let m = sb.oom_message(&s).unwrap();
        assert!(m.contains("--memory 128m (134217728 bytes, /sys/fs/cgroup/perf-agent-1)"), "{m}");
        assert!(sb.oom_message(&CgroupStats { oom_kills: Some(0), ..s }).is_none());
    }
}
