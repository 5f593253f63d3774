//! After the sampling loop: detach, end k6 and a launched child, build the
//! report, print and write it, and pick the exit status.

use std::{os::fd::OwnedFd, time::Duration};

use anyhow::bail;

use super::{K6Ready, MeasureOptions, profiling};
use crate::{
    bmf::BmfReport,
    cgroup, clock,
    k6::{self, K6Driver, K6Outcome, results::ClientResults},
    launch::{self, GatedChild},
    load::{self, LoadOptions, PhaseInputs},
    outcome::{self, EndReason, Outcome},
    output,
    phases::{self, PhaseReport},
    probes::{Probes, stats::ProgramStats},
    procfs,
    report::{
        self, RunReport,
        html::{run_page::RunPage, series::Series},
    },
    session::{self, SessionConfig, SessionResult},
    startup::{Startup, Watched},
    timeline,
};

/// The process being measured.
pub(super) struct Measured {
    pub pid: u32,
    pub comm: String,
    /// Its exec time when it was armed at exec (startup is measured).
    pub exec_ns: Option<u64>,
}

/// Samples until the end, detaches, reports; returns the exit code.
/// `child`: our own child in launch mode.
pub(super) fn finish(
    mut probes: Probes,
    pidfd: &OwnedFd,
    target: Measured,
    child: Option<GatedChild>,
    opts: &MeasureOptions,
    k6_ready: Option<K6Ready>,
    sandbox: Option<&cgroup::Sandbox>,
) -> anyhow::Result<u8> {
    let binary_size =
        procfs::exe(target.pid).ok().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
    let config = SessionConfig {
        pid: target.pid,
        start_ns: target.exec_ns,
        duration: opts.duration,
        interval: opts.interval,
        idle_after_startup: opts.idle,
        proc_at_start: child.as_ref().and_then(|c| c.stat_at_exec.clone()),
        attached_message: super::attached_message(target.pid, &target.comm, opts),
    };
    let mut driver = k6_driver(opts, k6_ready.as_ref(), target.exec_ns.is_some());
    let controller = driver.as_mut().map(|d| d as &mut dyn session::Controller);
    let mut profiler = profiling::start(&mut probes, target.pid, opts)?;
    let mut control = profiling::control(profiler.as_ref(), opts)?;
    let result = session::run(&mut probes, pidfd, &config, controller, control.as_mut())?;
    let programs = probes.program_stats();
    if let Some(p) = profiler.as_mut() {
        p.end_window();
    }
    drop(probes); // detach before anything else: the target runs unobserved from here
    let profile = profiler.map(crate::profile::Profiler::finish).transpose()?;
    let last_t = result.samples.last().map_or(0, |s| s.t_ns);
    let k6_outcome = driver.map(K6Driver::finish); // stops k6 if the run ended first
    let child_status = child.as_ref().map(|child| end_child(child, result.end));
    // `run --cpus/--memory`: the cgroup's counters, once the target is gone.
    let cgroup_stats = sandbox.map(|s| (s, s.stats()));
    let k6_results = match &opts.load {
        LoadOptions::K6Results { file } => k6::read_client_results(file),
        _ => None,
    };
    // One offset for every conversion, so all of them agree.
    let epoch_offset_ns = clock::epoch_offset_ns();
    let series =
        opts.report.as_ref().map(|_| Series::of(&result.samples, &result.log, opts.interval));
    let run = FinishedRun {
        target: &target,
        opts,
        result,
        programs,
        k6: k6_ready.as_ref().map(|r| r.plan.as_slice()).zip(k6_outcome),
        k6_results,
        binary_size,
        child_status,
        epoch_offset_ns,
    };
    let (r, mut outcome) = build_report(run)?;
    for note in &r.notes {
        eprintln!("perf-agent: {note}");
    }
    print!("{}", report::summary::render(&r));
    if let Some((s, stats)) = &cgroup_stats {
        print!("{}", s.summary(stats));
    }
    let profiles = profiling::write(profile, opts, &r, last_t);
    let profile = profiles.report;
    let mut doc = report::metrics::document(&r);
    if let Some((_, stats)) = &cgroup_stats {
        cgroup::add_metrics(&mut doc, stats, r.window.mean_rss_bytes);
    }
    profiling::add_metrics(profile.as_ref(), &mut doc);
    outcome.results_elsewhere =
        write_results(opts, &r, &doc, epoch_offset_ns, series.as_ref(), profile.as_ref())?
            || profiles.elsewhere;
    if let Some(message) = cgroup_stats.as_ref().and_then(|(s, stats)| s.oom_message(stats)) {
        eprintln!("perf-agent: {message}");
    }
    let verdict = outcome.verdict();
    if let Some(message) = verdict.message {
        eprintln!("perf-agent: {message}");
    }
    Ok(verdict.code)
}

/// With `--k6`: the driver that starts k6 after the idle window.
/// `wait_for_listen`: the idle window starts at the target's first listen.
fn k6_driver(
    opts: &MeasureOptions,
    ready: Option<&K6Ready>,
    wait_for_listen: bool,
) -> Option<K6Driver> {
    let (LoadOptions::K6 { script, args, cooldown }, Some(ready)) = (&opts.load, ready) else {
        return None;
    };
    Some(K6Driver::new(
        ready.k6.clone(),
        script.clone(),
        args.clone(),
        opts.idle,
        *cooldown,
        wait_for_listen,
        ready.plan.clone(),
    ))
}

/// Launch mode: the run is over, so is our child. Its wait status.
fn end_child(child: &GatedChild, end: EndReason) -> i32 {
    match end {
        EndReason::TargetExited => child.wait(),
        EndReason::Stopped(sig) | EndReason::Interrupted(sig) => {
            child.stop(sig, Duration::from_secs(5))
        }
        EndReason::DurationElapsed | EndReason::LoadFinished => {
            child.stop(libc::SIGTERM, Duration::from_secs(5))
        }
    }
}

/// Everything a finished run left, detached, before it becomes a report.
struct FinishedRun<'a> {
    target: &'a Measured,
    opts: &'a MeasureOptions,
    result: SessionResult,
    programs: Vec<ProgramStats>,
    /// With `--k6`: the plan and what k6 did.
    k6: Option<(&'a [k6::plan::Scenario], K6Outcome)>,
    /// With `--k6-results`: the file, read.
    k6_results: Option<ClientResults>,
    binary_size: Option<u64>,
    /// The wait status of the command `run` launched.
    child_status: Option<i32>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, read once at the end.
    epoch_offset_ns: i128,
}

/// The report of a run (whole window, startup, phases, client results) and
/// the outcome that decides the exit status.
fn build_report(run: FinishedRun) -> anyhow::Result<(RunReport, Outcome)> {
    let FinishedRun { target, opts, result, .. } = run;
    let Some(whole) = timeline::window(&result.samples) else { bail!("no samples were taken") };
    let (first_t, last_t) = (result.samples[0].t_ns, result.samples[result.samples.len() - 1].t_ns);
    let startup = target.exec_ns.map(|exec_ns| {
        let watched = Watched {
            health_path: opts.paths.health_path.is_some(),
            ready_path: opts.paths.ready_path.is_some(),
        };
        Startup::compute(exec_ns, &result.last_kernel.net.milestones, &result.log, watched)
    });
    let (phase_list, load) = load::plan_phases(PhaseInputs {
        load: &opts.load,
        idle: opts.idle,
        startup: startup.as_ref(),
        k6: run.k6,
        k6_results: run.k6_results,
        marks: &result.marks,
        first_ns: first_t,
        last_ns: last_t,
        epoch_offset_ns: run.epoch_offset_ns,
    });
    let mut phase_reports = phases::measure(&phase_list, &result.samples, &result.log);
    if let Some(client) = &load.client {
        phases::add_client_windows(
            &mut phase_reports,
            client,
            load.client_cpu.as_ref(),
            last_t,
            run.epoch_offset_ns,
        );
    }
    let outcome = Outcome {
        end: result.end,
        duration_given: opts.duration.is_some(),
        child_status: run.child_status,
        never_listened_after: startup
            .as_ref()
            .filter(|s| s.listen_ns.is_none())
            .map(Startup::last_milestone),
        with_k6: matches!(opts.load, LoadOptions::K6 { .. }),
        k6_status: load.k6_status,
        results_elsewhere: false,
    };
    let mut notes: Vec<String> = load.warnings.iter().map(|w| format!("warning: {w}")).collect();
    if result.log.late_cuts() > 0 {
        notes.push(format!(
            "note: {} phase edges were known only after their requests had been folded: \
             requests at those edges are placed within one segment (see docs/metrics.md)",
            result.log.late_cuts()
        ));
    }
    let report = RunReport {
        pid: target.pid,
        comm: &target.comm,
        window: whole,
        requests: result.log.window(first_t.saturating_sub(1), last_t),
        phases: phase_reports,
        startup,
        binary_size: run.binary_size,
        kernel: result.last_kernel,
        in_flight: result.in_flight,
        rejected_events: result.log.rejected,
        programs: run.programs,
        end: result.end,
        partial: outcome.partial(),
        target_status: run.child_status.map(launch::describe_status),
        canonical: load.canonical,
        client_total: load.client.as_ref().map(|c| (c.http_reqs, c.malformed)),
        k6_status: load.k6_status.as_ref().map(outcome::describe_k6_exit),
        notes,
        delivery: opts.delivery,
    };
    Ok((report, outcome))
}

/// Writes `--out` (`doc`), `--phases-json` and `--report` (from `series`,
/// showing `profile`'s tops and linking its files). A measurement is never lost:
/// what cannot go where asked goes to a fallback file named on stderr, and
/// the return value (`true`) says so, for the exit status.
fn write_results(
    opts: &MeasureOptions,
    r: &RunReport,
    doc: &BmfReport,
    epoch_offset_ns: i128,
    series: Option<&Series>,
    profile: Option<&crate::profile::ProfileReport>,
) -> anyhow::Result<bool> {
    let mut elsewhere = false;
    if let Some(out) = &opts.out {
        let json = doc.to_json() + "\n";
        match output::write_results(out, &json, &output::fallback_dirs())? {
            output::Written::AtPath => eprintln!("perf-agent: wrote {}", out.display()),
            output::Written::Fallback(_) => elsewhere = true,
        }
    }
    if let Some(path) = &opts.phases_json {
        let json = phases_json(&r.phases, epoch_offset_ns);
        elsewhere |= output::write_results(path, &json, &output::fallback_dirs())?
            != output::Written::AtPath;
    }
    if let (Some(path), Some(series)) = (&opts.report, series) {
        let page = RunPage { report: r, series, doc, profile, path };
        elsewhere |= write_file(path, &page.render())?;
    }
    Ok(elsewhere)
}

/// Writes a file as the results are (fallback file when it cannot go
/// where asked); `true` when it went elsewhere.
fn write_file(path: &std::path::Path, contents: &str) -> anyhow::Result<bool> {
    let written = output::write_results(path, contents, &output::fallback_dirs())?;
    if written == output::Written::AtPath {
        eprintln!("perf-agent: wrote {}", path.display());
    }
    Ok(written != output::Written::AtPath)
}

/// `--phases-json`: each phase's name and edges as Unix ns.
fn phases_json(phases: &[PhaseReport], offset: i128) -> String {
    let phases: Vec<serde_json::Value> = phases
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.phase.name,
                "start_unix_ns": p.phase.start_ns as i128 + offset,
                "end_unix_ns": p.phase.end_ns as i128 + offset,
                "truncated": p.truncated,
            })
        })
        .collect();
    let doc = serde_json::json!({ "phases": phases });
    serde_json::to_string_pretty(&doc).expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        k6::results::ClientRequest,
        outcome::exit,
        probes::{KernelReading, PathOptions},
        requests::RequestLog,
    };

    const S: u64 = 1_000_000_000;

    fn opts(load: LoadOptions) -> MeasureOptions {
        MeasureOptions {
            duration: None,
            out: None,
            phases_json: None,
            report: None,
            interval: Duration::from_millis(100),
            paths: PathOptions::default(),
            idle: Duration::from_secs(2),
            load,
            profile: None,
            delivery: false,
        }
    }

    /// A session sampled every second from `from` to `to` s, 10 ms of CPU
    /// per second.
    fn session(from: u64, to: u64, end: EndReason, marks: Vec<(String, u64)>) -> SessionResult {
        let samples = (from..=to)
            .map(|t| timeline::Sample { t_ns: t * S, cpu_ns: t * S / 100, ..Default::default() })
            .collect();
        SessionResult {
            samples,
            end,
            last_kernel: KernelReading::default(),
            log: RequestLog::default(),
            in_flight: 0,
            marks,
        }
    }

    fn run<'a>(
        target: &'a Measured,
        opts: &'a MeasureOptions,
        result: SessionResult,
    ) -> FinishedRun<'a> {
        FinishedRun {
            target,
            opts,
            result,
            programs: vec![],
            k6: None,
            k6_results: None,
            binary_size: Some(4096),
            child_status: None,
            epoch_offset_ns: 0,
        }
    }

    #[test]
    fn a_launched_target_that_exits_before_listening_is_a_startup_failure() {
        let target = Measured { pid: 7, comm: "srv".into(), exec_ns: Some(S) };
        let opts = opts(LoadOptions::None);
        let mut finished = run(&target, &opts, session(1, 3, EndReason::TargetExited, vec![]));
        finished.child_status = Some(3 << 8);
        let (r, outcome) = build_report(finished).unwrap();
        assert_eq!(outcome.verdict().code, exit::STARTUP_FAILED);
        assert!(r.partial);
        assert_eq!(r.target_status.as_deref(), Some("exited with status 3"));
        assert_eq!(r.startup.map(|s| s.exec_ns), Some(S));
        assert!(r.phases.is_empty(), "no end of startup, so no startup or idle phase");
        assert_eq!(r.window.duration_ns, 2 * S);
        assert_eq!(r.binary_size, Some(4096));
    }

    #[test]
    fn marks_make_phases_and_steady_stands_for_under_load() {
        let target = Measured { pid: 7, comm: "srv".into(), exec_ns: None };
        let opts = opts(LoadOptions::None);
        let marks = vec![("warmup".to_string(), 2 * S), ("steady".to_string(), 5 * S)];
        let stopped = EndReason::Stopped(libc::SIGINT);
        let (r, outcome) =
            build_report(run(&target, &opts, session(0, 10, stopped, marks))).unwrap();
        assert_eq!(outcome.verdict().code, exit::OK);
        assert!(!r.partial);
        let names: Vec<&str> = r.phases.iter().map(|p| p.phase.name.as_str()).collect();
        assert_eq!(names, ["warmup", "steady"]);
        assert_eq!(r.phases[1].system.cpu_ns, 5 * S / 100, "steady is 5 s to 10 s");
        assert_eq!(r.canonical, Some(("steady".into(), None)));
    }

    #[test]
    fn a_k6_results_file_cuts_phases_and_counts_per_phase() {
        let target = Measured { pid: 7, comm: "srv".into(), exec_ns: None };
        let opts = opts(LoadOptions::K6Results { file: "k6.json".into() });
        let at = |t: u64| ClientRequest {
            t_epoch_ns: (t * S) as i128,
            duration_ns: S / 2,
            waiting_ns: 0,
            scenario: 0,
        };
        let client = ClientResults {
            requests: vec![at(3), at(4), at(6)],
            http_reqs: 3,
            scenarios: vec!["default".into()],
            malformed: 2,
        };
        let mut finished = run(&target, &opts, session(0, 10, EndReason::DurationElapsed, vec![]));
        finished.k6_results = Some(client);
        let (r, outcome) = build_report(finished).unwrap();
        assert_eq!(outcome.verdict().code, exit::OK);
        let counts: Vec<(&str, u64)> = r
            .phases
            .iter()
            .map(|p| (p.phase.name.as_str(), p.client.expect("client window").count))
            .collect();
        assert_eq!(counts, [("idle", 0), ("load", 3), ("cooldown", 0)]);
        assert_eq!(r.client_total, Some((3, 2)));
        assert_eq!(r.canonical, Some(("load".into(), None)));
    }
}
