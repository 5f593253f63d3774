//! `--profile-dir`: the profiler around the sampling loop, and its files,
//! summary section and BMF rows once the run's phases are known.

use super::MeasureOptions;
use crate::{
    bmf::BmfReport,
    probes::{Probes, profile::ProfileConfig},
    profile::{PhaseSpan, Profile, ProfileOptions, ProfileReport, Profiler},
    report::RunReport,
};

impl MeasureOptions {
    /// What the profiling programs are attached for (`None`: not at all).
    pub(super) fn profile_config(&self) -> Option<ProfileConfig> {
        self.profile.as_ref().map(|p| ProfileConfig { hz: p.hz, off_cpu: p.off_cpu })
    }
}

/// Starts draining the sampler's ring, before the sampling loop.
pub(super) fn start(probes: &mut Probes, pid: u32) -> anyhow::Result<Option<Profiler>> {
    probes.take_profile_probe().map(|p| Profiler::start(p, pid)).transpose()
}

/// `--profile-dir`: the whole run and each phase (cut at the last sample,
/// `last_t`), written; the summary's section printed.
pub(super) fn write(
    profile: Option<Profile>,
    opts: &MeasureOptions,
    r: &RunReport,
    last_t: u64,
) -> anyhow::Result<Option<ProfileReport>> {
    let (Some(profile), Some(options)) = (profile, &opts.profile) else { return Ok(None) };
    let report = write_profiles(&profile, options, r, last_t)?;
    print!("{}", report.summary(r.canonical.as_ref().map(|c| c.0.as_str())));
    Ok(Some(report))
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
