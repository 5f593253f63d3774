//! `--profile-dir`: the profiler around the sampling loop, and its files,
//! summary section and BMF rows once the run's phases are known.

use super::MeasureOptions;
use crate::{
    bmf::BmfReport,
    probes::{Probes, profile::ProfileConfig},
    profile::{PhaseSpan, Profile, ProfileOptions, ProfileReport, Profiler, pause::ProfileControl},
    report::RunReport,
};

impl MeasureOptions {
    /// What the profiling programs are attached for (`None`: not at all).
    pub(super) fn profile_config(&self) -> Option<ProfileConfig> {
        self.profile.as_ref().map(|p| ProfileConfig {
            hz: p.hz,
            off_cpu: p.off_cpu,
            runq_waits: p.runq_waits,
        })
    }
}

/// Starts draining the sampler's ring, before the sampling loop; off-CPU
/// ticks too unless `--no-off-cpu`: at `--off-cpu-hz`, each taking about
/// one stack of a new block per CPU.
pub(super) fn start(
    probes: &mut Probes,
    pid: u32,
    opts: &MeasureOptions,
) -> anyhow::Result<Option<Profiler>> {
    let Some(probe) = probes.take_profile_probe() else { return Ok(None) };
    let ticks = match &opts.profile {
        Some(p) if p.off_cpu => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            Some(crate::profile::offcpu_ticks::OffCpuTicker::new(
                probes.offcpu_ticks(pid)?,
                std::time::Duration::from_secs_f64(1.0 / f64::from(p.off_cpu_hz.max(1))),
                cpus,
                crate::clock::monotonic_ns(),
                !p.runq_waits,
            ))
        }
        _ => None,
    };
    Profiler::start(probe, pid, ticks).map(Some)
}

/// `--profile-control CTL[,ACK]`: opened once the profiler runs (checked to be
/// a FIFO before anything was attached: `ProfileOptions::check`).
pub(super) fn control(
    profiler: Option<&Profiler>,
    opts: &MeasureOptions,
) -> anyhow::Result<Option<ProfileControl>> {
    let paths = opts.profile.as_ref().and_then(|p| p.control.as_ref());
    match (profiler, paths) {
        (Some(profiler), Some(paths)) => ProfileControl::open(paths, profiler.pauses()).map(Some),
        _ => Ok(None),
    }
}

/// What became of the profiles.
pub(super) struct Written {
    pub report: Option<ProfileReport>,
    /// Not where `--profile-dir` said (a fallback directory, or nowhere):
    /// the exit status says the results went elsewhere.
    pub elsewhere: bool,
}

/// `--profile-dir`: the whole run and each phase (cut at the last sample,
/// `last_t`), written; the summary's section printed. A profile is never
/// lost for want of its directory (removed or unwritable since the start):
/// it goes to `perf-agent-<pid>-<unix s>-profiles` in the first fallback
/// directory that takes it (`$TMPDIR`, then the current one), named on
/// stderr, as `--out` does. Nor does a profile that cannot be written
/// anywhere cost the run's other results: that is an error message, and
/// the rest is still written.
pub(super) fn write(
    profile: Option<Profile>,
    opts: &MeasureOptions,
    r: &RunReport,
    last_t: u64,
) -> Written {
    let (Some(profile), Some(options)) = (profile, &opts.profile) else {
        return Written { report: None, elsewhere: false };
    };
    let (report, elsewhere) = match write_profiles(&profile, options, r, last_t) {
        Ok(report) => (Some(report), false),
        Err(e) => {
            eprintln!(
                "perf-agent: error: cannot write the profiles to {}: {e:#}",
                options.dir.display()
            );
            (write_elsewhere(&profile, options, r, last_t), true)
        }
    };
    if let Some(report) = &report {
        print!("{}", report.summary(r.canonical.as_ref().map(|c| c.0.as_str())));
    }
    Written { report, elsewhere }
}

/// The profiles in the first fallback directory that takes them.
fn write_elsewhere(
    profile: &Profile,
    options: &ProfileOptions,
    r: &RunReport,
    last_t: u64,
) -> Option<ProfileReport> {
    let name = crate::output::fallback_name("profiles");
    for dir in crate::output::fallback_dirs() {
        let fallback = ProfileOptions { dir: dir.join(&name), ..options.clone() };
        let written = std::fs::create_dir_all(&fallback.dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| write_profiles(profile, &fallback, r, last_t));
        match written {
            Ok(report) => {
                eprintln!("perf-agent: the profiles are in {} instead", fallback.dir.display());
                return Some(report);
            }
            Err(e) => eprintln!(
                "perf-agent: error: cannot write the profiles to {} either: {e:#}",
                fallback.dir.display()
            ),
        }
    }
    None
}

fn write_profiles(
    profile: &Profile,
    opts: &ProfileOptions,
    r: &RunReport,
    last_t: u64,
) -> anyhow::Result<ProfileReport> {
    let spans: Vec<PhaseSpan> = r
        .phases
        .iter()
        .map(|p| PhaseSpan {
            name: &p.phase.name,
            start_ns: p.phase.start_ns,
            end_ns: p.phase.end_ns.min(last_t + 1),
        })
        .collect();
    let report = profile.write(opts, &spans)?;
    eprintln!("perf-agent: wrote profiles to {}", opts.dir.display());
    Ok(report)
}

/// The profile's BMF rows (`profile/*`, `sched/runq_wait_*`), if any.
pub(super) fn add_metrics(report: Option<&ProfileReport>, doc: &mut BmfReport) {
    if let Some(p) = report {
        p.add_bmf(doc);
    }
}
