//! CPU profiles (`--profile-dir DIR`): samples of the target's stacks from
//! the cpu-clock `perf_event` program (`probes/profile.rs`), unwound in user
//! space as they arrive ([`unwind`]), counted per distinct stack and time
//! bucket ([`aggregate`]), and at the end cut into the run's phases,
//! symbolized ([`symbols`]) and written as folded stacks and flame graphs
//! ([`output`]).
//!
//! A thread of its own drains the ring buffer every 20 ms (the kernel side
//! does not wake it), so the sampling loop of `session.rs` is untouched.

pub mod aggregate;
pub mod elf;
pub mod maps;
pub mod output;
pub mod symbols;
pub mod unwind;

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agent_common::profile::{KERNEL_FRAMES, ProfileSample, STACK_PAGE, STACK_PAGES, sample_flags};
use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuArray, RingBuf};

use crate::{
    bmf::{BmfReport, Measure},
    probes::profile::{ProfileCounters, ProfileProbe, read_counters},
};
use aggregate::StackCounts;
use output::{Folded, FunctionShare};
use symbols::Symbolizer;
use unwind::{Frame, StackWalker, UserRegsAndStack};

/// `--profile-dir`, `--profile-hz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileOptions {
    pub dir: PathBuf,
    pub hz: u32,
}

/// Default `--profile-hz`: like perf and dpsoft/perf-agent, off the beat of
/// 100 Hz timers in the target.
pub const DEFAULT_HZ: u32 = 99;
/// Highest `--profile-hz` accepted.
pub const MAX_HZ: u32 = 10_000;

impl ProfileOptions {
    /// Checks the options before anything is attached: the rate, and that
    /// the directory exists (or can be made) and is writable.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.hz == 0 || self.hz > MAX_HZ {
            bail!("--profile-hz {}: give 1 to {MAX_HZ} samples per second per CPU", self.hz);
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

/// How often the thread drains the ring buffer.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// What the draining thread gathered.
#[derive(Default)]
pub struct Collected {
    pub walker: StackWalker,
    pub counts: StackCounts,
    pub samples: u64,
    pub truncated: u64,
    /// Records shorter than a sample (never expected).
    pub malformed: u64,
    /// Time spent unwinding and counting, ns.
    pub unwind_ns: u64,
}

impl Collected {
    /// Unwinds one sample and counts its stack.
    pub fn add(&mut self, s: &ProfileSample, frames: &mut Vec<Frame>) {
        let started = Instant::now();
        frames.clear();
        if s.flags & sample_flags::NO_USER_REGS == 0 {
            let copied = (s.user_pages as usize).min(STACK_PAGES) * STACK_PAGE;
            let user = UserRegsAndStack {
                ip: s.ip,
                sp: s.sp,
                bp: s.bp,
                stack_base: s.stack_base,
                stack: &s.user_stack[..copied],
            };
            self.walker.user_frames(s.tgid, s.execs, &user, frames);
        } else {
            frames.push(Frame::Truncated);
        }
        let kernel = (s.kernel_bytes.max(0) as usize / 8).min(KERNEL_FRAMES);
        unwind::kernel_frames(&s.kernel_stack[..kernel], frames);
        if frames.first() == Some(&Frame::Truncated) {
            self.truncated += 1;
        }
        self.samples += 1;
        self.counts.add(s.time_ns, frames);
        self.unwind_ns += started.elapsed().as_nanos() as u64;
    }
}

/// The running profiler: a thread draining the sampler's ring buffer.
pub struct Profiler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Collected>,
    stats: PerCpuArray<MapData, agent_common::profile::ProfileStats>,
}

impl Profiler {
    pub fn start(probe: ProfileProbe) -> anyhow::Result<Profiler> {
        let stop = Arc::new(AtomicBool::new(false));
        let ProfileProbe { ring, stats } = probe;
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("perf-agent-profile".into())
            .spawn(move || drain_until_stopped(ring, &flag))
            .context("starting the profiling thread")?;
        Ok(Profiler { stop, thread, stats })
    }

    /// After the programs are detached: drains what is left, stops.
    pub fn finish(self) -> anyhow::Result<Profile> {
        let counters = read_counters(&self.stats)?;
        self.stop.store(true, Ordering::Relaxed);
        let collected =
            self.thread.join().map_err(|_| anyhow::anyhow!("the profiling thread panicked"))?;
        Ok(Profile { collected, counters })
    }
}

fn drain_until_stopped(mut ring: RingBuf<MapData>, stop: &AtomicBool) -> Collected {
    let mut c = Collected::default();
    let mut frames = Vec::with_capacity(256);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some(item) = ring.next() {
            let aligned = item.as_ptr().align_offset(std::mem::align_of::<ProfileSample>()) == 0;
            if item.len() < std::mem::size_of::<ProfileSample>() || !aligned {
                c.malformed += 1;
                continue;
            }
            // SAFETY: a whole, aligned record written by the kernel side as
            // a `ProfileSample` (plain integers: any bytes are valid).
            let s = unsafe { &*(item.as_ptr() as *const ProfileSample) };
            c.add(s, &mut frames);
        }
        if stopping {
            return c;
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// A finished profile, not yet cut into phases.
pub struct Profile {
    pub collected: Collected,
    pub counters: ProfileCounters,
}

/// One phase's profile, as written.
#[derive(Clone, Debug, Default)]
pub struct PhaseProfile {
    pub name: String,
    pub samples: u64,
    pub truncated: u64,
    pub top: Vec<FunctionShare>,
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
    pub ring_full: u64,
    pub symbolize_ms: f64,
    pub unwind_us_per_sample: f64,
}

/// A phase to cut out: name and `[start, end)` on CLOCK_MONOTONIC.
pub struct PhaseSpan<'a> {
    pub name: &'a str,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Profile {
    /// Writes `run.cpu.*` and `<phase>.cpu.*` into `dir`.
    pub fn write(&self, dir: &Path, phases: &[PhaseSpan]) -> anyhow::Result<ProfileReport> {
        let started = Instant::now();
        let c = &self.collected;
        let mut sym = Symbolizer::new(&c.walker.modules, c.walker.vdso.as_deref());
        let run = write_window(dir, "run", None, c, &mut sym)?;
        let mut out = Vec::new();
        for p in phases {
            out.push(write_window(dir, p.name, Some((p.start_ns, p.end_ns)), c, &mut sym)?);
        }
        Ok(ProfileReport {
            dir: dir.to_path_buf(),
            run,
            phases: out,
            ring_full: self.counters.ring_full,
            symbolize_ms: started.elapsed().as_secs_f64() * 1e3,
            unwind_us_per_sample: c.unwind_ns as f64 / 1e3 / c.samples.max(1) as f64,
        })
    }
}

fn write_window(
    dir: &Path,
    name: &str,
    range: Option<(u64, u64)>,
    c: &Collected,
    sym: &mut Symbolizer,
) -> anyhow::Result<PhaseProfile> {
    let mut folded: Folded = HashMap::new();
    let (mut samples, mut truncated) = (0, 0);
    for (id, n) in c.counts.window(range) {
        let stack = c.counts.stack(id);
        samples += n;
        if stack.first() == Some(&Frame::Truncated) {
            truncated += n;
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
        *folded.entry(line).or_default() += n;
    }
    output::write_phase(dir, name, "cpu", &folded)?;
    Ok(PhaseProfile {
        name: name.to_string(),
        samples,
        truncated,
        top: output::top_functions(&folded),
    })
}

impl ProfileReport {
    /// `profile/samples` and `profile/truncated_percent`, whole run and
    /// `@<phase>`.
    pub fn add_bmf(&self, bmf: &mut BmfReport) {
        let mut add = |suffix: String, p: &PhaseProfile| {
            bmf.add(format!("profile/samples{suffix}"), Measure::Count, p.samples as f64);
            bmf.add(
                format!("profile/truncated_percent{suffix}"),
                Measure::Percent,
                p.truncated_percent(),
            );
        };
        add(String::new(), &self.run);
        for p in &self.phases {
            add(format!("@{}", p.name), p);
        }
    }

    /// The summary's profile section: samples and truncation per phase, and
    /// the top functions of `canonical` (else of the whole run).
    pub fn summary(&self, canonical: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nCPU profile ({}):", self.dir.display());
        for p in std::iter::once(&self.run).chain(&self.phases) {
            let _ = writeln!(
                out,
                "  {:<16} {:>7} samples, {:>5.1} % truncated",
                p.name,
                p.samples,
                p.truncated_percent()
            );
        }
        if self.ring_full > 0 {
            let _ = writeln!(out, "  {} samples lost: ring buffer full", self.ring_full);
        }
        let top =
            canonical.and_then(|c| self.phases.iter().find(|p| p.name == c)).unwrap_or(&self.run);
        let _ = writeln!(out, "  top functions of {} (self %, total %):", top.name);
        for f in top.top.iter().take(10) {
            let _ =
                writeln!(out, "    {:>5.1} {:>5.1}  {}", f.self_percent, f.total_percent, f.name);
        }
        let _ = writeln!(
            out,
            "  unwinding {:.1} µs per sample; symbolizing and writing {:.0} ms",
            self.unwind_us_per_sample, self.symbolize_ms
        );
        out
    }
}
