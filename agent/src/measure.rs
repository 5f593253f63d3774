//! What each subcommand does: check the input, pick the target, attach,
//! sample until the end, detach, report. Every error that bad input can cause
//! is raised before anything is attached.

use std::{
    os::fd::OwnedFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bmf, exit,
    k6::{self, K6Driver, results::ClientResults},
    launch::{self, GatedChild},
    marks,
    phases::{self, Phase},
    preflight,
    probes::{PathOptions, Probes, TargetSpec, clock_ns},
    procfs,
    report::{self, RunReport},
    session::{self, EndReason, SessionConfig},
    signals,
    startup::{Startup, Watched},
    timeline, tracefs,
};

/// Options shared by `attach` and `run`.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    pub duration: Option<Duration>,
    pub out: Option<PathBuf>,
    pub phases_json: Option<PathBuf>,
    pub interval: Duration,
    pub paths: PathOptions,
    /// Length of the idle window: after startup (launch / wait-for-exec), or
    /// before k6 starts.
    pub idle: Duration,
    pub load: LoadOptions,
    /// `--profile-dir`: CPU profiles per phase.
    pub profile: Option<crate::profile::ProfileOptions>,
}

impl MeasureOptions {
    fn profile_config(&self) -> Option<crate::probes::profile::ProfileConfig> {
        self.profile
            .as_ref()
            .map(|p| crate::probes::profile::ProfileConfig { hz: p.hz, off_cpu: p.off_cpu })
    }
}

/// The load whose phases the run is cut into.
#[derive(Clone, Debug, Default)]
pub enum LoadOptions {
    /// None: one window (plus startup and idle when followed from exec).
    #[default]
    None,
    /// Run k6 with this script after the idle window (`--k6`).
    K6 { script: PathBuf, args: Vec<String>, cooldown: Duration },
    /// Read the results of a k6 run made elsewhere with `--out json=FILE`.
    K6Results { file: PathBuf },
}

/// A checked k6 set-up, made before anything is attached.
struct K6Ready {
    k6: PathBuf,
    plan: Vec<k6::plan::Scenario>,
}

/// Checks shared by every mode; returns the tracefs root.
fn common_preflight(opts: &MeasureOptions) -> anyhow::Result<PathBuf> {
    for out in [&opts.out, &opts.phases_json].into_iter().flatten() {
        bmf::check_writable(out)?;
    }
    if let Some(p) = &opts.profile {
        p.check()?;
    }
    if let LoadOptions::K6Results { file } = &opts.load
        && file.is_dir()
    {
        bail!("--k6-results {}: is a directory; give k6's --out json file", file.display());
    }
    preflight::check_privileges()?;
    let tracefs_root = tracefs::ensure_mounted()?;
    preflight::check_kernel(&tracefs_root)?;
    signals::install();
    Ok(tracefs_root)
}

/// `perf-agent attach --pid PID`.
pub fn attach_pid(pid: u32, force: bool, opts: &MeasureOptions) -> anyhow::Result<u8> {
    let stat = preflight::check_target(pid, force)?;
    let k6 = k6_preflight(opts)?;
    let tracefs_root = common_preflight(opts)?;
    let pidfd = session::open_pidfd(pid, stat.starttime_ticks)?;
    let probes = match Probes::attach(
        &TargetSpec::Running { pid },
        &opts.paths,
        &tracefs_root,
        opts.profile_config(),
    ) {
        Ok(p) => p,
        // Seeding reads /proc/PID: a target that exits meanwhile makes that
        // fail with a bare ENOENT. Say what happened instead.
        Err(_) if session::has_exited(&pidfd) => {
            bail!("target PID {pid} ({}) exited while perf-agent was attaching", stat.comm)
        }
        Err(e) => return Err(e.context(format!("attaching to PID {pid}"))),
    };
    announce(pid, &stat.comm, opts);
    let target = Measured { pid, comm: stat.comm, exec_ns: None, child: None };
    finish(probes, &pidfd, target, opts, k6)
}

/// `perf-agent attach --wait-exec NAME`.
pub fn attach_wait_exec(name: &str, opts: &MeasureOptions) -> anyhow::Result<u8> {
    let k6 = k6_preflight(opts)?;
    let tracefs_root = common_preflight(opts)?;
    let spec = TargetSpec::ExecMatching { name: name.to_string() };
    let mut probes = Probes::attach(&spec, &opts.paths, &tracefs_root, opts.profile_config())?;
    eprintln!("perf-agent: waiting for the next exec of {name} (Ctrl-C to give up)");
    let Some(target) = wait_armed(&mut probes, None)? else {
        eprintln!("perf-agent: no exec of {name} seen; nothing measured");
        return Ok(exit::ERROR);
    };
    let pid = target.tgid;
    let comm = procfs::read_stat(pid).map(|s| s.comm).unwrap_or_else(|_| name.to_string());
    let pidfd = match procfs::read_stat(pid) {
        Ok(stat) => session::open_pidfd(pid, stat.starttime_ticks)?,
        Err(_) => bail!("PID {pid} ({name}) exec'd and exited before perf-agent could follow it"),
    };
    announce(pid, &comm, opts);
    let target = Measured { pid, comm, exec_ns: Some(target.exec_ns), child: None };
    finish(probes, &pidfd, target, opts, k6)
}

/// `perf-agent run -- CMD ARGS...`.
pub fn run(argv: &[String], opts: &MeasureOptions) -> anyhow::Result<u8> {
    launch::resolve(&argv[0])?;
    let k6 = k6_preflight(opts)?;
    let tracefs_root = common_preflight(opts)?;
    // Fork before attaching: no thread may exist at fork time.
    let mut child = GatedChild::spawn(argv)?;
    let spec = TargetSpec::ExecOfPid { pid: child.pid };
    let mut probes = match Probes::attach(&spec, &opts.paths, &tracefs_root, opts.profile_config())
    {
        Ok(p) => p,
        Err(e) => {
            child.stop(libc::SIGKILL, Duration::ZERO);
            return Err(e);
        }
    };
    child.release()?;
    let Some(target) = wait_armed(&mut probes, Some(&child))? else {
        child.stop(libc::SIGTERM, Duration::from_secs(5));
        eprintln!("perf-agent: interrupted before {} started", argv[0]);
        return Ok(exit::INTERRUPTED);
    };
    let pid = target.tgid;
    // Our own child, not yet reaped: its PID cannot have been reused.
    let pidfd =
        session::pidfd_open(pid).with_context(|| format!("pidfd_open on our child {pid}"))?;
    let comm =
        child.program.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    announce(pid, &comm, opts);
    let target = Measured { pid, comm, exec_ns: Some(target.exec_ns), child: Some(child) };
    finish(probes, &pidfd, target, opts, k6)
}

/// With `--k6`: k6 is installed and the script loads (checked by `k6
/// inspect`, which also gives the plan).
fn k6_preflight(opts: &MeasureOptions) -> anyhow::Result<Option<K6Ready>> {
    let LoadOptions::K6 { script, args, .. } = &opts.load else { return Ok(None) };
    let k6 = k6::find_k6()?;
    let plan = k6::inspect(&k6, script, args)?;
    Ok(Some(K6Ready { k6, plan }))
}

fn announce(pid: u32, comm: &str, opts: &MeasureOptions) {
    eprintln!(
        "perf-agent: attached to PID {pid} ({comm}){}",
        match opts.duration {
            Some(d) => format!(" for {:.1} s", d.as_secs_f64()),
            None => ", Ctrl-C to stop".into(),
        }
    );
}

/// Waits until the exec hook armed the target. `None` on a signal.
fn wait_armed(
    probes: &mut Probes,
    child: Option<&GatedChild>,
) -> anyhow::Result<Option<agent_common::Target>> {
    let started = Instant::now();
    loop {
        if let Some(t) = probes.target()? {
            return Ok(Some(t));
        }
        if signals::received().is_some() {
            return Ok(None);
        }
        if let Some(child) = child
            && let Some(status) = child.try_reap()
        {
            bail!(
                "{} {} before its exec (could not be started)",
                child.program.display(),
                launch::describe_status(status)
            );
        }
        if child.is_some() && started.elapsed() > Duration::from_secs(10) {
            bail!("the child did not exec within 10 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The process being measured.
struct Measured {
    pid: u32,
    comm: String,
    /// Its exec time when it was armed at exec (startup is measured).
    exec_ns: Option<u64>,
    /// Our own child in launch mode.
    child: Option<GatedChild>,
}

/// Samples until the end, detaches, reports; returns the exit code.
fn finish(
    mut probes: Probes,
    pidfd: &OwnedFd,
    target: Measured,
    opts: &MeasureOptions,
    k6_ready: Option<K6Ready>,
) -> anyhow::Result<u8> {
    let binary_size =
        procfs::exe(target.pid).ok().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
    let config = SessionConfig {
        pid: target.pid,
        start_ns: target.exec_ns,
        duration: opts.duration,
        interval: opts.interval,
    };
    let mut driver = match (&opts.load, &k6_ready) {
        (LoadOptions::K6 { script, args, cooldown }, Some(ready)) => Some(K6Driver::new(
            ready.k6.clone(),
            script.clone(),
            args.clone(),
            opts.idle,
            *cooldown,
            target.exec_ns.is_some(),
        )),
        _ => None,
    };
    let controller = driver.as_mut().map(|d| d as &mut dyn session::Controller);
    let profiler = probes
        .take_profile_probe()
        .map(|p| crate::profile::Profiler::start(p, target.pid))
        .transpose()?;
    let result = session::run(&mut probes, pidfd, &config, controller)?;
    let programs = probes.program_stats();
    let mut profiler = profiler;
    if let Some(p) = profiler.as_mut() {
        p.end_window();
    }
    drop(probes); // detach before anything else: the target runs unobserved from here
    let profile = profiler.map(crate::profile::Profiler::finish).transpose()?;
    if let Some(d) = driver.as_mut() {
        d.stop(); // the run ended before k6 did
    }

    // Launch mode: the run is over, so is our child.
    let child_status = target.child.as_ref().map(|child| match result.end {
        EndReason::TargetExited => child.wait(),
        EndReason::Stopped(sig) | EndReason::Interrupted(sig) => {
            child.stop(sig, Duration::from_secs(5))
        }
        EndReason::DurationElapsed | EndReason::LoadFinished => {
            child.stop(libc::SIGTERM, Duration::from_secs(5))
        }
    });

    let Some(whole) = timeline::window(&result.samples) else { bail!("no samples were taken") };
    let (first_t, last_t) = (result.samples[0].t_ns, result.samples[result.samples.len() - 1].t_ns);
    let startup = target.exec_ns.map(|exec_ns| {
        let watched = Watched {
            health_path: opts.paths.health_path.is_some(),
            ready_path: opts.paths.ready_path.is_some(),
        };
        Startup::compute(exec_ns, &result.last_kernel.net.milestones, &result.log, watched)
    });
    // One offset for every conversion, so all of them agree.
    let offset = epoch_offset_ns();
    let (phase_list, load) = plan_phases(
        opts,
        driver.as_ref(),
        k6_ready.as_ref(),
        startup.as_ref(),
        &result,
        first_t,
        offset,
    );
    let mut phase_reports = phases::measure(&phase_list, &result.samples, &result.log);
    if let Some(client) = &load.client {
        for p in &mut phase_reports {
            let (a, b) =
                (p.phase.start_ns as i128 + offset, p.phase.end_ns.min(last_t) as i128 + offset);
            p.client = Some(client.window(a, b));
        }
    }
    // A launched command that ends by itself with success, no duration
    // asked: the run is complete (a batch job need not listen).
    let finished_cleanly = result.end == EndReason::TargetExited
        && opts.duration.is_none()
        && child_status.is_some_and(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0);
    let exited_in_startup = result.end == EndReason::TargetExited
        && !finished_cleanly
        && startup.as_ref().is_some_and(|s| s.listen_ns.is_none());
    let partial = result.end.is_partial() && !finished_cleanly;
    let r = RunReport {
        pid: target.pid,
        comm: &target.comm,
        window: whole,
        requests: result.log.window(first_t.saturating_sub(1), last_t),
        phases: phase_reports,
        startup,
        binary_size,
        kernel: result.last_kernel,
        in_flight: result.in_flight,
        rejected_events: result.log.rejected,
        programs,
        end: result.end,
        partial,
        target_status: child_status.map(launch::describe_status),
        canonical: load.canonical.clone(),
        client_total: load.client.as_ref().map(|c| (c.http_reqs, c.malformed)),
        k6_status: load.k6_status.as_ref().map(k6::describe_exit),
    };
    print!("{}", report::summary(&r));
    let profile = match (profile, &opts.profile) {
        (Some(p), Some(o)) => Some(write_profiles(&p, o, &r, last_t)?),
        _ => None,
    };
    if let Some(p) = &profile {
        print!("{}", p.summary(r.canonical.as_ref().map(|c| c.0.as_str())));
    }
    if let Some(path) = &opts.phases_json {
        write_phases_json(path, &r.phases, offset)?;
    }
    if let Some(out) = &opts.out {
        let mut doc = report::bmf(&r);
        if let Some(p) = &profile {
            p.add_bmf(&mut doc);
        }
        doc.write(out)?;
        eprintln!("perf-agent: wrote {}", out.display());
    }
    if exited_in_startup {
        eprintln!(
            "perf-agent: the target exited during startup (last milestone: {}){}",
            r.startup.as_ref().map_or("exec", |s| s.last_milestone()),
            r.target_status.as_ref().map_or(String::new(), |s| format!(", {s}"))
        );
        return Ok(exit::STARTUP_FAILED);
    }
    // k6's own failure (thresholds, script error) is the run's verdict.
    if let Some(code) = load.k6_status.and_then(|s| s.code()).filter(|c| *c != 0) {
        eprintln!("perf-agent: {}", k6::describe_exit(&load.k6_status.expect("status")));
        return Ok(u8::try_from(code).unwrap_or(exit::ERROR));
    }
    if matches!(opts.load, LoadOptions::K6 { .. }) && load.k6_status.is_none() {
        eprintln!("perf-agent: k6 did not run to the end");
    }
    Ok(match result.end {
        _ if finished_cleanly => exit::OK,
        EndReason::TargetExited => exit::TARGET_EXITED,
        EndReason::Interrupted(_) => exit::INTERRUPTED,
        _ => exit::OK,
    })
}

/// The run's phases: startup and idle when followed from exec, then the
/// load's (k6's plan, or a k6 results file), then manual marks; with what the
/// load generator reported.
fn plan_phases(
    opts: &MeasureOptions,
    driver: Option<&K6Driver>,
    k6_ready: Option<&K6Ready>,
    startup: Option<&Startup>,
    result: &session::SessionResult,
    first_t: u64,
    offset: i128,
) -> (Vec<Phase>, LoadReport) {
    let last_t = result.samples.last().map_or(first_t, |s| s.t_ns);
    let mut phase_list = Vec::new();
    if let Some(s) = startup
        && let Some(end) = s.end_ns()
    {
        phase_list.push(Phase::new("startup", s.exec_ns, end));
        if matches!(opts.load, LoadOptions::None) {
            phase_list.push(Phase::new("idle", end, end + opts.idle.as_nanos() as u64));
        }
    }
    // k6: phases, canonical "under load" phase, client-side results.
    let mut load = LoadReport::default();
    match (&opts.load, driver, k6_ready) {
        (LoadOptions::K6 { .. }, Some(d), Some(ready)) => {
            let markers = d.markers.lock().unwrap_or_else(|e| e.into_inner()).clone();
            // Idle begins once startup is over (the driver only saw the listen).
            let idle_start = match (d.idle_start_ns, startup.and_then(Startup::end_ns)) {
                (Some(idle), Some(ready)) => Some(idle.max(ready)),
                (idle, _) => idle,
            };
            let (load_phases, planned) =
                k6::phases_from_run(&ready.plan, &markers, idle_start, last_t);
            phase_list.extend(load_phases);
            if let Some(steady) = k6::plan::steady_phase(&planned) {
                load.canonical = Some((steady.name.clone(), steady.vus));
            } else if markers.test_start_ns.is_some() {
                load.canonical = Some(("load".into(), None));
            }
            load.client = read_client_results(&d.results_path);
            let _ = std::fs::remove_file(&d.results_path);
            // A k6 the agent stopped itself (the run ended first) did not fail.
            load.k6_status = d.exit_status.filter(|_| !d.stopped_early);
        }
        (LoadOptions::K6Results { file }, _, _) => {
            load.client = read_client_results(file);
            if let Some(client) = &load.client {
                phase_list.extend(phases_from_results(client, first_t, last_t, offset));
                load.canonical = Some(("load".into(), None));
            }
        }
        _ => {}
    }
    // Manual marks: each starts a phase; one named "steady" stands for
    // "under load" unless k6 said otherwise.
    phase_list.extend(marks::phases_from_marks(&result.marks, last_t));
    if load.canonical.is_none() && result.marks.iter().any(|(n, _)| n == "steady") {
        load.canonical = Some(("steady".into(), None));
    }
    (phase_list, load)
}

/// `--profile-dir`: the whole run and each phase.
fn write_profiles(
    profile: &crate::profile::Profile,
    opts: &crate::profile::ProfileOptions,
    r: &RunReport,
    last_t: u64,
) -> anyhow::Result<crate::profile::ProfileReport> {
    let spans: Vec<crate::profile::PhaseSpan> = r
        .phases
        .iter()
        .map(|p| crate::profile::PhaseSpan {
            name: &p.phase.name,
            start_ns: p.phase.start_ns,
            end_ns: p.phase.end_ns.min(last_t + 1),
        })
        .collect();
    let report = profile.write(opts, &spans)?;
    eprintln!("perf-agent: wrote profiles to {}", opts.dir.display());
    Ok(report)
}

/// `--phases-json`: each phase's name and edges as Unix ns.
fn write_phases_json(
    path: &std::path::Path,
    phases: &[phases::PhaseReport],
    offset: i128,
) -> anyhow::Result<()> {
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
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// What the load generator contributed to a run.
#[derive(Default)]
struct LoadReport {
    /// The phase standing for "under load", and its VU count if known.
    canonical: Option<(String, Option<u64>)>,
    client: Option<ClientResults>,
    k6_status: Option<std::process::ExitStatus>,
}

fn read_client_results(path: &std::path::Path) -> Option<ClientResults> {
    match std::fs::File::open(path) {
        Ok(f) => Some(ClientResults::parse(std::io::BufReader::new(f))),
        Err(e) => {
            eprintln!("perf-agent: no k6 results at {}: {e}", path.display());
            None
        }
    }
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, to place k6's wall-clock timestamps
/// on the probes' clock.
fn epoch_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) as i128 - clock_ns(libc::CLOCK_MONOTONIC) as i128
}

/// Phases of a k6 run made elsewhere (`--k6-results`): no plan, so each
/// scenario spans its first to last response; idle before, cooldown after.
/// `offset`: CLOCK_REALTIME − CLOCK_MONOTONIC ([`epoch_offset_ns`]).
fn phases_from_results(
    client: &ClientResults,
    first_t: u64,
    last_t: u64,
    offset: i128,
) -> Vec<Phase> {
    let mono = |t: i128| (t - offset).clamp(first_t as i128, last_t as i128) as u64;
    let spans = client.scenario_spans();
    let Some(lo) = spans.iter().map(|s| s.1).min() else { return Vec::new() };
    let hi = spans.iter().map(|s| s.2).max().unwrap_or(lo);
    // The first response ends a request that began a little earlier: open
    // the load window at the first request's start.
    let first_start =
        client.requests.iter().map(|r| r.t_epoch_ns - r.duration_ns as i128).min().unwrap_or(lo);
    let mut out = vec![Phase::new("idle", first_t, mono(first_start))];
    if spans.len() > 1 {
        out.extend(spans.iter().map(|(name, a, b)| Phase::new(name.clone(), mono(*a), mono(*b))));
    }
    out.push(Phase::new("load", mono(first_start), mono(hi)));
    out.push(Phase::new("cooldown", mono(hi), last_t));
    out
}
