//! One run of the agent attached to a target: start it, wait until its
//! programs are attached, stop it with SIGTERM, and collect what it and
//! /proc say.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::load::Load;
use super::runs::Env;
use crate::process::KillOnDrop;
use crate::{describe, procfs, workspace_root};

/// The empty calibration program (agent-ebpf/src/stats.rs).
pub const FLOOR_PROGRAM: &str = "stats_floor";

/// What one with-agent run measured.
#[derive(Clone, Debug, Default)]
pub struct AgentRun {
    /// The agent's BMF report.
    pub bmf: Value,
    /// `program → (ns per run, runs)`, from its `agent/prog_ns/<program>`
    /// and `agent/prog_runs/<program>` rows; empty unless the run had
    /// `kernel.bpf_stats_enabled` on.
    pub programs: BTreeMap<String, (f64, f64)>,
    /// The agent process's own CPU while following (after attach, until
    /// SIGTERM; its CPU-time clock, exact), % of one core; and its peak RSS
    /// (VmHWM), bytes.
    pub cpu_percent: f64,
    pub peak_rss: f64,
    /// The target's utime + stime growth from before attach to after the
    /// agent exited, ns (clock-tick resolution); its VmRSS after.
    pub target_proc_cpu_ns: f64,
    pub target_vm_rss: f64,
}

impl AgentRun {
    /// Run time of the agent's programs over the run, ns: the statistics'
    /// calibration program is the instrument, not the agent.
    pub fn bpf_ns(&self) -> f64 {
        self.agent_programs().map(|(_, (ns, n))| ns * n).sum()
    }

    /// [`Self::bpf_ns`] without the statistics' own cost per program run
    /// (the floor program's average in the same run): what the programs cost
    /// with the statistics off, as in production.
    pub fn bpf_ns_net(&self) -> f64 {
        let Some((floor, _)) = self.programs.get(FLOOR_PROGRAM) else { return f64::NAN };
        self.agent_programs().map(|(_, (ns, n))| (ns - floor) * n).sum()
    }

    fn agent_programs(&self) -> impl Iterator<Item = (&String, &(f64, f64))> {
        self.programs.iter().filter(|(name, _)| name.as_str() != FLOOR_PROGRAM)
    }

    /// The value of `benchmark`'s `measure` in the agent's report, NaN if absent.
    pub fn metric(&self, benchmark: &str, measure: &str) -> f64 {
        self.bmf
            .get(benchmark)
            .and_then(|b| b.get(measure))
            .and_then(|m| m.get("value"))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    }
}

/// One load run with the agent attached to `pid`.
pub fn with_agent(
    env: &mut Env,
    pid: u32,
    load: &mut impl FnMut(&Env) -> Result<Load>,
) -> Result<(Load, AgentRun)> {
    with_agent_args(env, pid, &[], load)
}

/// [`with_agent`] with more `attach` arguments (`--delivery`).
pub fn with_agent_args(
    env: &mut Env,
    pid: u32,
    extra: &[&str],
    load: &mut impl FnMut(&Env) -> Result<Load>,
) -> Result<(Load, AgentRun)> {
    let agent = RunningAgent::start(env, pid, extra)?;
    let load = load(env)?;
    // Let the last responses' events reach the agent before it stops.
    thread::sleep(Duration::from_millis(200));
    Ok((load, agent.stop()?))
}

/// An agent attached to a target, until [`RunningAgent::stop`].
pub struct RunningAgent {
    child: KillOnDrop,
    target: u32,
    out: PathBuf,
    stderr: PathBuf,
    stats: Option<BpfStats>,
    target_cpu_before: f64,
    agent_cpu_before: f64,
    attached_at: Instant,
}

impl RunningAgent {
    /// Starts `perf-agent attach --pid PID [extra…]` and waits until its
    /// programs are attached (with `kernel.bpf_stats_enabled` on if
    /// `env.bpf_stats`).
    pub fn start(env: &mut Env, target: u32, extra: &[&str]) -> Result<RunningAgent> {
        env.agent_runs += 1;
        let n = env.agent_runs;
        let out = env.logs.join(format!("agent-{n}.json"));
        let stderr = env.logs.join(format!("agent-{n}.stderr"));
        let target_cpu_before = procfs::cpu_ns(target)?;
        let stats = if env.bpf_stats { Some(BpfStats::enable()?) } else { None };
        let mut cmd = Command::new(&env.agent);
        cmd.args(["attach", "--pid", &target.to_string()])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(File::create(env.logs.join(format!("agent-{n}.stdout")))?)
            .stderr(File::create(&stderr)?);
        let child = KillOnDrop::new(
            cmd.spawn().with_context(|| format!("cannot start `{}`", describe(&cmd)))?,
        );
        let mut agent = RunningAgent {
            child,
            target,
            out,
            stderr,
            stats,
            target_cpu_before,
            agent_cpu_before: 0.0,
            attached_at: Instant::now(),
        };
        agent.wait_links_settled(Duration::from_millis(250), Duration::from_secs(20))?;
        // 200 ms more, so its first sample is taken before the load starts.
        thread::sleep(Duration::from_millis(200));
        // Its CPU-time clock: exact, where /proc's ticks move by 10 ms (0.25 %
        // of a core over a 4 s run, a quarter of the profiling goal).
        agent.agent_cpu_before = procfs::process_cpu_clock_ns(agent.child.id())?;
        agent.attached_at = Instant::now();
        Ok(agent)
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the agent holds at least one `bpf_link` fd and their count
    /// has not changed for `quiet` (its programs are attached, or it has
    /// finished detaching some); an error after `timeout`. Returns the count.
    pub fn wait_links_settled(&mut self, quiet: Duration, timeout: Duration) -> Result<usize> {
        let pid = self.child.id();
        let deadline = Instant::now() + timeout;
        let (mut last, mut stable_since) = (procfs::bpf_link_count(pid), Instant::now());
        loop {
            if let Some(status) = self.child.child().try_wait()? {
                bail!("perf-agent exited ({status}): {}", self.stderr_text());
            }
            let links = procfs::bpf_link_count(pid);
            if links != last {
                (last, stable_since) = (links, Instant::now());
            } else if links > 0 && stable_since.elapsed() >= quiet {
                return Ok(links);
            }
            if Instant::now() > deadline {
                bail!("perf-agent's programs did not settle within {timeout:?} ({last} links)");
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// How many programs it has attached right now.
    pub fn links(&self) -> usize {
        procfs::bpf_link_count(self.child.id())
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default().trim().to_string()
    }

    /// Stops the agent with SIGTERM and collects its report.
    pub fn stop(mut self) -> Result<AgentRun> {
        let apid = self.child.id();
        let agent_cpu = procfs::process_cpu_clock_ns(apid)? - self.agent_cpu_before;
        let wall = self.attached_at.elapsed().as_nanos() as f64;
        let mut peak_rss = procfs::status_bytes(apid, procfs::Status::VmHwm).unwrap_or(f64::NAN);
        // SAFETY: kill(2) on our own unreaped child's pid.
        unsafe { libc::kill(apid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(hwm) = procfs::status_bytes(apid, procfs::Status::VmHwm) {
                peak_rss = hwm; // the high-water mark only grows: the last reading is the peak
            }
            if let Some(s) = self.child.child().try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                bail!(
                    "perf-agent did not exit within 30 s of SIGTERM; see {}",
                    self.stderr.display()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stats_on = self.stats.take().is_some_and(|s| s.enabled());
        // 0: complete; 4: interrupted before --duration (we gave none): results written.
        if !matches!(status.code(), Some(0) | Some(4)) {
            bail!("perf-agent failed ({status}): {}", self.stderr_text());
        }
        let target_proc_cpu_ns = procfs::cpu_ns(self.target)? - self.target_cpu_before;
        let text = fs::read_to_string(&self.out)
            .with_context(|| format!("perf-agent wrote no {}", self.out.display()))?;
        let bmf: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", self.out.display()))?;
        let programs = if stats_on { program_costs(&bmf, &self.out)? } else { BTreeMap::new() };
        Ok(AgentRun {
            bmf,
            programs,
            cpu_percent: agent_cpu / wall * 100.0,
            peak_rss,
            target_proc_cpu_ns,
            target_vm_rss: procfs::status_bytes(self.target, procfs::Status::VmRss)
                .unwrap_or(f64::NAN),
        })
    }
}

const PROG_NS: &str = "agent/prog_ns/";
const PROG_RUNS: &str = "agent/prog_runs/";

/// `program → (ns per run, runs)` from the agent's BMF report (`path`, for
/// messages), written with the statistics on: every `agent/prog_ns/<program>`
/// (measure `latency`) with its `agent/prog_runs/<program>` (a count).
fn program_costs(bmf: &Value, path: &std::path::Path) -> Result<BTreeMap<String, (f64, f64)>> {
    let value = |key: &str, measure: Option<&str>| -> Option<f64> {
        let b = bmf.get(key)?.as_object()?;
        let m = match measure {
            Some(measure) => b.get(measure)?,
            None => b.values().next()?, // the count's measure slug is the agent's choice
        };
        m.get("value")?.as_f64()
    };
    let mut out = BTreeMap::new();
    let names =
        bmf.as_object().into_iter().flat_map(|o| o.keys()).filter_map(|k| k.strip_prefix(PROG_NS));
    for name in names {
        let ns = value(&format!("{PROG_NS}{name}"), Some("latency")).with_context(|| {
            format!("{}: `{PROG_NS}{name}` has no `latency` value", path.display())
        })?;
        let runs = value(&format!("{PROG_RUNS}{name}"), None).with_context(|| {
            format!(
                "{}: the agent wrote `{PROG_NS}{name}` but no `{PROG_RUNS}{name}`: the bench \
                 needs each program's run count to weigh its averages and to sum BPF time per \
                 request. Fix: make the agent write `{PROG_RUNS}<program>` beside \
                 `{PROG_NS}<program>`",
                path.display()
            )
        })?;
        out.insert(name.to_string(), (ns, runs));
    }
    if out.is_empty() {
        bail!(
            "{}: no `{PROG_NS}<program>` rows although kernel.bpf_stats_enabled was 1: this \
             perf-agent binary does not report per-program cost in its BMF file, which the bench \
             reads. Fix: build an agent that does (`cargo xtask build` on a branch with it)",
            path.display()
        );
    }
    Ok(out)
}

/// Sets `kernel.bpf_stats_enabled` to 1; restores the old value when dropped.
struct BpfStats {
    old: Option<String>,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let old = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("cannot read {BPF_STATS}: no per-program cost"))?;
        fs::write(BPF_STATS, "1")
            .with_context(|| format!("cannot write 1 to {BPF_STATS}: no per-program cost"))?;
        Ok(BpfStats { old: Some(old.trim().to_string()) })
    }

    fn enabled(&self) -> bool {
        self.old.is_some()
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = &self.old
            && let Err(e) = fs::write(BPF_STATS, old)
        {
            eprintln!("warning: cannot restore kernel.bpf_stats_enabled={old}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn program_costs_come_from_the_bmf_rows() {
        let bmf = json!({
            "agent/prog_ns/sched_switch": { "latency": { "value": 74.0 } },
            "agent/prog_runs/sched_switch": { "count": { "value": 41349.0 } },
            "agent/prog_ns/stats_floor": { "latency": { "value": 44.0 } },
            "agent/prog_runs/stats_floor": { "count": { "value": 41000.0 } },
            "latency/p50": { "latency": { "value": 1000.0 } },
        });
        let p = program_costs(&bmf, std::path::Path::new("a.json")).unwrap();
        assert_eq!(p.get("sched_switch"), Some(&(74.0, 41349.0)));
        assert_eq!(p.len(), 2);
        let run = AgentRun { programs: p, ..AgentRun::default() };
        assert_eq!(run.bpf_ns(), 74.0 * 41349.0);
        assert_eq!(run.bpf_ns_net(), 30.0 * 41349.0);
    }

    #[test]
    fn missing_cost_rows_are_a_clear_error() {
        let none = json!({ "latency/p50": { "latency": { "value": 1.0 } } });
        let e = program_costs(&none, std::path::Path::new("a.json")).unwrap_err().to_string();
        assert!(e.contains("no `agent/prog_ns/<program>` rows") && e.contains("Fix:"), "{e}");
        let no_runs = json!({ "agent/prog_ns/x": { "latency": { "value": 1.0 } } });
        let e =
            format!("{:#}", program_costs(&no_runs, std::path::Path::new("a.json")).unwrap_err());
        assert!(e.contains("no `agent/prog_runs/x`"), "{e}");
    }
}
