//! CPU profiles (`--profile-dir DIR`): samples of the target's stacks from
//! the cpu-clock `perf_event` program (`probes/profile.rs`), unwound in user
//! space as they arrive ([`unwind`]), counted per distinct stack and time
//! bucket ([`aggregate`]), and at the end cut into the run's phases,
//! symbolized ([`symbols`]) and written as folded stacks and flame graphs
//! ([`output`]).
//!
//! With off-CPU on (the default), the same thread reads a task iterator
//! bound to the target at every 1/`--off-cpu-hz` ([`offcpu_ticks`]): each
//! thread's time off CPU from the scheduler's counters ([`tick_totals`]),
//! and the stacks of a few blocked threads, which split it ([`offcpu`]).
//! Every run-queue wait is timed at the switch-in that ends it
//! (`agent-ebpf/src/sched.rs`, [`runq`]).
//!
//! A thread of its own drains the ring buffer at each off-CPU tick, every
//! 100 ms at least, and when the kernel side finds it half full
//! ([`collect`]), so the sampling loop of `session.rs` is untouched.

pub mod aggregate;
pub mod collect;
pub mod diff;
pub mod elf;
pub mod host_steal;
pub mod maps;
pub mod offcpu;
pub mod offcpu_ticks;
pub mod output;
pub mod pause;
pub mod pprof;
pub mod proc_truth;
pub mod runq;
mod summary;
pub mod symbols;
pub mod tick_totals;
pub mod unwind;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuArray};

use crate::probes::profile::{ProfileCounters, ProfileProbe, read_counters};
use aggregate::StackCounts;
use collect::Collected;
use output::{BlockingSite, Folded, FunctionShare};
use runq::RunqSummary;
use symbols::Symbolizer;
use unwind::Frame;

/// `--profile-dir`, `--profile-hz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileOptions {
    pub dir: PathBuf,
    pub hz: u32,
    /// Off-CPU profiles too (default; `--no-off-cpu` turns them off).
    pub off_cpu: bool,
    /// `--off-cpu-hz`: off-CPU stacks aimed at per CPU and second
    /// ([`default_off_cpu_hz`] unless given).
    pub off_cpu_hz: u32,
    /// `--runq-waits`: `sched_switch` attached for run-queue waits (their
    /// p50/p99) and the exact time stolen from target slices.
    pub runq_waits: bool,
    /// `--debug-dir`: where debug files shipped apart from their stripped
    /// modules are found by build-id (`DIR/.build-id/ab/cdef….debug`).
    pub debug_dir: PathBuf,
    /// `--profile-control`: a FIFO whose `disable`/`enable` lines pause
    /// and resume profiling, and one to acknowledge them on ([`pause`]).
    pub control: Option<pause::ControlPaths>,
}

/// Default `--profile-hz`: like perf and dpsoft/perf-agent, off the beat of
/// 100 Hz timers in the target.
pub const DEFAULT_HZ: u32 = 99;
/// Highest `--profile-hz` (and `--off-cpu-hz`) accepted.
pub const MAX_HZ: u32 = 10_000;

/// Default `--off-cpu-hz` for a `--profile-hz`: a quarter of it, at least
/// 1 (25 at 99 Hz). An off-CPU stack costs more than a cpu-clock sample:
/// the user stack is copied page by page from another thread's memory and
/// the kernel stack unwound from its saved frame. The stacks only split
/// their thread's total, which the scheduler's counters give whatever the
/// rate: fewer of them coarsen the split, never the total.
pub fn default_off_cpu_hz(hz: u32) -> u32 {
    hz.div_ceil(4).max(1)
}

/// Default `--debug-dir`: where distributions install debug files (gdb's
/// `debug-file-directory`).
pub const DEFAULT_DEBUG_DIR: &str = "/usr/lib/debug";
/// Callers shown with each blocking site (the summary, `diff`): the call that
/// blocked is mostly a libc wrapper (`syscall`, `epoll_wait`); two callers
/// reach the code that chose to wait.
pub(crate) const BLOCKING_SITE_CALLERS: usize = 2;

impl ProfileOptions {
    /// Checks the options before anything is attached: the rate, that the
    /// directory exists (or can be made) and is writable, and that a
    /// `--debug-dir` other than the default is a directory (a typo there
    /// would only show as unnamed frames at the end; the default may be
    /// missing: no debug package installed).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.hz == 0 || self.hz > MAX_HZ {
            bail!("--profile-hz {}: give 1 to {MAX_HZ} samples per second per CPU", self.hz);
        }
        if self.off_cpu && (self.off_cpu_hz == 0 || self.off_cpu_hz > MAX_HZ) {
            bail!(
                "--off-cpu-hz {}: give 1 to {MAX_HZ} off-CPU stacks per second per CPU (or \
                 --no-off-cpu for none)",
                self.off_cpu_hz
            );
        }
        if self.debug_dir != Path::new(DEFAULT_DEBUG_DIR) && !self.debug_dir.is_dir() {
            bail!(
                "--debug-dir {}: not a directory; give the directory that holds .build-id/ \
                 (default {DEFAULT_DEBUG_DIR})",
                self.debug_dir.display()
            );
        }
        if let Some(paths) = &self.control {
            paths.check()?;
        }
        let d = &self.dir;
        if d.exists() && !d.is_dir() {
            bail!(
                "--profile-dir {}: is not a directory; give a directory for the profiles",
                d.display()
            );
        }
        std::fs::create_dir_all(d)
            .with_context(|| format!("--profile-dir {}: cannot create it", d.display()))?;
        let probe = d.join(".perf-agent-write-check");
        std::fs::write(&probe, b"")
            .with_context(|| format!("--profile-dir {}: not writable", d.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(())
    }
}

/// The running profiler: a thread draining the sampler's ring buffer.
pub struct Profiler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Collected>,
    stats: PerCpuArray<MapData, agent_common::profile::ProfileStats>,
    pid: u32,
    /// The ground truth's window: CLOCK_MONOTONIC at its edges (shared
    /// with the thread, which counts the samples in it; end 0 while open),
    /// and at each edge `/proc`'s run-queue delay and the programs' total
    /// of run-queue waits.
    window: Arc<collect::Window>,
    /// When `--profile-control` paused it (shared with the thread).
    pauses: Arc<pause::Pauses>,
    proc_at_start: Option<proc_truth::Snapshot>,
    proc_at_end: Option<proc_truth::Snapshot>,
    runq_total_at_start: u64,
    runq_total_at_end: Option<u64>,
}

impl Profiler {
    /// Starts draining; `pid`'s run-queue delay in `/proc` is read now, as
    /// the ground truth's start.
    pub fn start(
        probe: ProfileProbe,
        pid: u32,
        ticks: Option<offcpu_ticks::OffCpuTicker>,
    ) -> anyhow::Result<Profiler> {
        let stop = Arc::new(AtomicBool::new(false));
        let ProfileProbe { ring, stats, sched_counts } = probe;
        let flag = stop.clone();
        let proc_at_start = proc_truth::Snapshot::read(pid);
        let runq_total_at_start = read_counters(&stats)?.runq_total_ns;
        let window = Arc::new(collect::Window::starting(crate::clock::monotonic_ns()));
        let w = window.clone();
        let pauses = Arc::new(pause::Pauses::default());
        let p = pauses.clone();
        let thread = std::thread::Builder::new()
            .name("perf-agent-profile".into())
            .spawn(move || collect::drain_until_stopped(ring, sched_counts, ticks, &flag, (&w, &p)))
            .context("starting the profiling thread")?;
        Ok(Profiler {
            stop,
            thread,
            stats,
            pid,
            window,
            pauses,
            proc_at_start,
            proc_at_end: None,
            runq_total_at_start,
            runq_total_at_end: None,
        })
    }

    /// When profiling is paused, for `--profile-control` to record its
    /// pauses in.
    pub fn pauses(&self) -> Arc<pause::Pauses> {
        self.pauses.clone()
    }

    /// Closes the ground truth's window; call it just before detaching
    /// (detaching takes time that the programs no longer see).
    pub fn end_window(&mut self) {
        self.proc_at_end = proc_truth::Snapshot::read(self.pid);
        self.runq_total_at_end = read_counters(&self.stats).ok().map(|c| c.runq_total_ns);
        self.window.end(crate::clock::monotonic_ns());
    }

    /// After the programs are detached: drains what is left, stops.
    pub fn finish(mut self) -> anyhow::Result<Profile> {
        // Ended once: a process gone by now has no `/proc` snapshot, which
        // must not move the window's end.
        if !self.window.has_ended() {
            self.end_window();
        }
        let kernel = read_counters(&self.stats)?;
        let proc_run_delay = match (&self.proc_at_start, &self.proc_at_end) {
            (Some(a), Some(b)) => Some(proc_truth::RunDelayTruth::between(a, b)),
            _ => None,
        };
        self.stop.store(true, Ordering::Relaxed);
        let collected =
            self.thread.join().map_err(|_| anyhow::anyhow!("the profiling thread panicked"))?;
        let t = collected.ticks;
        let counters = ProfileCounters {
            kernel,
            off_cpu_ticks: t.ticks,
            off_cpu_blocks: t.blocks,
            off_cpu_stacks: t.stacks,
            off_cpu_stack_bytes: t.stack_bytes,
            off_cpu_torn: t.torn,
        };
        let window_ns = self.window.duration_ns();
        let runq_in_window_ns =
            self.runq_total_at_end.unwrap_or(kernel.runq_total_ns) - self.runq_total_at_start;
        let (start, end) = self.window.bounds();
        let paused = self.pauses.within(start, end);
        Ok(Profile { collected, counters, proc_run_delay, window_ns, runq_in_window_ns, paused })
    }
}

/// A finished profile, not yet cut into phases.
pub struct Profile {
    pub collected: Collected,
    pub counters: ProfileCounters,
    /// The target's run-queue delay in `/proc` over the run (threads alive
    /// at its end), ground truth for the run-queue waits.
    pub proc_run_delay: Option<proc_truth::RunDelayTruth>,
    /// The profiler's window, ns, and the run-queue waits that ended in it.
    pub window_ns: u64,
    pub runq_in_window_ns: u64,
    /// `--profile-control`'s pauses inside the window: how many, ns in all.
    pub paused: (usize, u64),
}

/// One phase's profile, as written.
#[derive(Clone, Debug, Default)]
pub struct PhaseProfile {
    pub name: String,
    pub samples: u64,
    pub truncated: u64,
    pub top: Vec<FunctionShare>,
    /// ns the target's threads spent blocked (with `--no-off-cpu`: 0).
    pub off_cpu_ns: u64,
    /// Where the blocked time was spent, from user code's side.
    pub off_cpu_sites: Vec<BlockingSite>,
    pub runq: Option<RunqSummary>,
    /// The mean run-queue wait from the off-CPU ticks' readings of
    /// `run_delay` (none with `--no-off-cpu`).
    pub runq_mean_ns: Option<f64>,
}

impl PhaseProfile {
    pub fn truncated_percent(&self) -> f64 {
        if self.samples == 0 { 0.0 } else { self.truncated as f64 * 100.0 / self.samples as f64 }
    }
}

/// What was written, for the summary and BMF.
#[derive(Clone, Debug, Default)]
pub struct ProfileReport {
    pub dir: PathBuf,
    /// The whole run, named `run`.
    pub run: PhaseProfile,
    pub phases: Vec<PhaseProfile>,
    pub counters: ProfileCounters,
    pub off_cpu: bool,
    /// `--off-cpu-hz`: the off-CPU stacks aimed at per CPU-second.
    pub off_cpu_hz: u32,
    /// `--runq-waits`: run-queue waits timed one by one.
    pub runq_waits: bool,
    /// What the host stole, as the off-CPU ticks saw it (with them).
    pub steal: Option<offcpu_ticks::StealSummary>,
    /// Σ run-queue waits seen inside the ground truth's window (from the
    /// profiler's start to just before detaching), and the `/proc` ground
    /// truth over it.
    pub runq_total_ns: u64,
    pub proc_run_delay: Option<proc_truth::RunDelayTruth>,
    pub symbolize_ms: f64,
    pub unwind_us_per_sample: f64,
    /// The profiler's window (start to just before detaching), ns, and
    /// the cpu-clock samples taken in it.
    pub window_ns: u64,
    pub samples_in_window: u64,
    /// Of the window, `--profile-control`'s pauses: how many, ns in all.
    pub paused: (usize, u64),
    /// Ring records user space could not read (see `Collected::malformed`).
    pub malformed: u64,
}

/// A phase to cut out: name and `[start, end)` on CLOCK_MONOTONIC.
pub struct PhaseSpan<'a> {
    pub name: &'a str,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Profile {
    /// Writes `run.*` and `<phase>.*` (`cpu`, and `offcpu` when
    /// `opts.off_cpu`) into `opts.dir`: folded, SVG and pprof.
    pub fn write(
        &self,
        opts: &ProfileOptions,
        phases: &[PhaseSpan],
    ) -> anyhow::Result<ProfileReport> {
        let started = Instant::now();
        let c = &self.collected;
        let (modules, vdso) = (&c.walker.modules, c.walker.vdso.as_deref());
        let mut sym = Symbolizer::new(modules, vdso, &opts.debug_dir);
        let cpu = pprof::Kind {
            values: &[("samples", "count"), ("cpu", "nanoseconds")],
            value_of: |n, period| vec![n, n * period],
            period_ns: 1_000_000_000 / u64::from(opts.hz.max(1)),
        };
        let off = pprof::Kind {
            values: &[("off_cpu", "nanoseconds")],
            value_of: |ns, _| vec![ns],
            period_ns: 0,
        };
        let dir = &opts.dir;
        let mut window = |name: &str, range: Option<(u64, u64)>| -> anyhow::Result<PhaseProfile> {
            let stem = output::file_safe(name);
            let stacks = stacks_in(&c.on_cpu, range);
            let on = fold(&stacks, &mut sym);
            output::write_phase(dir, name, "cpu", &on.folded)?;
            pprof::write(
                dir,
                &format!("{stem}.cpu"),
                &pprof::encode(&stacks, &cpu, modules, vdso, &mut sym)?,
            )?;
            let mut p = PhaseProfile {
                name: name.to_string(),
                samples: on.total,
                truncated: on.truncated,
                top: output::top_functions(&on.folded),
                runq: c.runq.window(range),
                runq_mean_ns: c.runq.mean(range),
                ..Default::default()
            };
            if opts.off_cpu {
                let estimate = c.off_cpu.estimate(range);
                let stacks: Vec<(&[Frame], u64)> =
                    estimate.iter().map(|(s, n)| (&s[..], *n)).collect();
                let mut folded = fold(&stacks, &mut sym);
                folded.folded = trim_tracing_frames(folded.folded);
                output::write_phase(dir, name, "offcpu", &folded.folded)?;
                let data = pprof::encode(&stacks, &off, modules, vdso, &mut sym)?;
                pprof::write(dir, &format!("{stem}.offcpu"), &data)?;
                p.off_cpu_ns = folded.total;
                p.off_cpu_sites = output::blocking_sites(&folded.folded, BLOCKING_SITE_CALLERS);
            }
            Ok(p)
        };
        let run = window("run", None)?;
        let mut out = Vec::new();
        for p in phases {
            out.push(window(p.name, Some((p.start_ns, p.end_ns)))?);
        }
        Ok(ProfileReport {
            dir: dir.to_path_buf(),
            run,
            phases: out,
            counters: self.counters,
            off_cpu: opts.off_cpu,
            off_cpu_hz: opts.off_cpu_hz,
            runq_waits: opts.runq_waits,
            steal: opts.off_cpu.then_some(c.ticks.steal),
            runq_total_ns: self.runq_in_window_ns,
            proc_run_delay: self.proc_run_delay,
            symbolize_ms: started.elapsed().as_secs_f64() * 1e3,
            window_ns: self.window_ns,
            samples_in_window: c.samples_in_window,
            paused: self.paused,
            malformed: c.malformed,
            unwind_us_per_sample: c.unwind_ns as f64
                / 1e3
                / (c.samples + self.counters.off_cpu_stacks).max(1) as f64,
        })
    }
}

/// The stacks of a window with their weights, heaviest first.
fn stacks_in(counts: &StackCounts, range: Option<(u64, u64)>) -> Vec<(&[Frame], u64)> {
    let mut v: Vec<(&[Frame], u64)> =
        counts.window(range).into_iter().map(|(id, n)| (counts.stack(id), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v
}

/// A window of stack counts, symbolized and folded.
struct FoldedWindow {
    folded: Folded,
    total: u64,
    /// Weight of the stacks cut short.
    truncated: u64,
}

fn fold(stacks: &[(&[Frame], u64)], sym: &mut Symbolizer) -> FoldedWindow {
    let mut w = FoldedWindow { folded: HashMap::new(), total: 0, truncated: 0 };
    for &(stack, n) in stacks {
        w.total += n;
        if stack.first() == Some(&Frame::Truncated) {
            w.truncated += n;
        }
        let mut line = String::new();
        for &f in stack {
            for name in sym.names(f) {
                if !line.is_empty() {
                    line.push(';');
                }
                line.push_str(name);
            }
        }
        *w.folded.entry(line).or_default() += n;
    }
    w
}

/// Off-CPU stacks are taken inside the `sched_switch` tracepoint: their
/// innermost kernel frames are the tracing machinery (`__traceiter_*`,
/// `bpf_trace_run*`, the program itself). The stack ends at `__schedule`.
fn trim_tracing_frames(folded: Folded) -> Folded {
    let mut out = Folded::new();
    for (line, n) in folded {
        let line = match line.rfind(";__schedule_[k];") {
            Some(i) => line[..i + ";__schedule_[k]".len()].to_string(),
            None => line,
        };
        *out.entry(line).or_default() += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> ProfileOptions {
        ProfileOptions {
            dir: dir.to_path_buf(),
            hz: DEFAULT_HZ,
            off_cpu: true,
            off_cpu_hz: default_off_cpu_hz(DEFAULT_HZ),
            runq_waits: false,
            debug_dir: DEFAULT_DEBUG_DIR.into(),
            control: None,
        }
    }

    #[test]
    fn bad_options_are_named_with_their_fix() {
        let tmp =
            std::env::temp_dir().join(format!("perf-agent-profile-opts-{}", std::process::id()));
        let dir = tmp.join("profiles");
        assert!(options(&dir).check().is_ok());
        assert!(dir.is_dir(), "created");
        let err = |o: ProfileOptions| o.check().unwrap_err().to_string();
        assert!(
            err(ProfileOptions { hz: 0, ..options(&dir) }).starts_with("--profile-hz 0: give 1 to")
        );
        assert!(err(ProfileOptions { hz: MAX_HZ + 1, ..options(&dir) }).contains("give 1 to"));
        let e = err(ProfileOptions { off_cpu_hz: 0, ..options(&dir) });
        assert!(e.starts_with("--off-cpu-hz 0: give 1 to") && e.contains("--no-off-cpu"), "{e}");
        // Without off-CPU profiles the rate is not used.
        assert!(ProfileOptions { off_cpu: false, off_cpu_hz: 0, ..options(&dir) }.check().is_ok());
        let file = tmp.join("a-file");
        std::fs::write(&file, b"").unwrap();
        assert!(err(options(&file)).contains("is not a directory"));
        let missing = tmp.join("no-such-debug");
        let e = err(ProfileOptions { debug_dir: missing, ..options(&dir) });
        assert!(e.starts_with("--debug-dir ") && e.contains("holds .build-id/"), "{e}");
        let _ = std::fs::remove_dir_all(tmp);
    }

    #[test]
    fn off_cpu_stacks_default_to_a_quarter_of_the_sampling_rate() {
        assert_eq!(default_off_cpu_hz(DEFAULT_HZ), 25);
        assert_eq!(default_off_cpu_hz(1), 1);
        assert_eq!(default_off_cpu_hz(4), 1);
        assert_eq!(default_off_cpu_hz(MAX_HZ), 2_500);
    }
}
