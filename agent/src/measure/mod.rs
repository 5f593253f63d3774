//! What each subcommand does: check the input, pick the target, attach,
//! then sample until the end, detach and report ([`finish`](mod@finish)). Every error
//! that bad input can cause is raised before anything is attached.

mod finish;
mod profiling;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::finish::{Measured, finish};
use crate::{
    cgroup, k6,
    launch::{self, GatedChild},
    load::LoadOptions,
    outcome::exit,
    output, preflight,
    probes::{PathOptions, Probes, TargetSpec},
    procfs, session, signals, tracefs,
};

/// Options shared by `attach` and `run`.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    pub duration: Option<Duration>,
    pub out: Option<PathBuf>,
    pub phases_json: Option<PathBuf>,
    /// `--report FILE.html`: the run's page.
    pub report: Option<PathBuf>,
    pub interval: Duration,
    pub paths: PathOptions,
    /// Length of the idle window: after startup (launch / wait-for-exec), or
    /// before k6 starts.
    pub idle: Duration,
    pub load: LoadOptions,
    /// `--profile-dir`: CPU profiles per phase.
    pub profile: Option<crate::profile::ProfileOptions>,
    /// `--delivery`: queue, drain, delivered, accept wait and retransmits
    /// per request (issue 14), at a cost per request (`docs/performance.md`).
    pub delivery: bool,
}

/// A checked k6 set-up, made before anything is attached.
struct K6Ready {
    k6: PathBuf,
    plan: Vec<k6::plan::Scenario>,
}

/// Checks shared by every mode; returns the tracefs root.
fn common_preflight(opts: &MeasureOptions) -> anyhow::Result<PathBuf> {
    let outputs =
        [("--out", &opts.out), ("--phases-json", &opts.phases_json), ("--report", &opts.report)];
    for (flag, path) in outputs {
        path.as_deref().map_or(Ok(()), |p| output::check_writable(flag, p))?;
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
    let spec = TargetSpec::Running { pid };
    let probes = match Probes::attach(
        &spec,
        &opts.paths,
        &tracefs_root,
        opts.profile_config(),
        opts.delivery,
    ) {
        Ok(p) => p,
        // Seeding reads /proc/PID: a target that exits meanwhile makes that
        // fail with a bare ENOENT. Say what happened instead.
        Err(_) if session::has_exited(&pidfd) => {
            bail!("target PID {pid} ({}) exited while perf-agent was attaching", stat.comm)
        }
        Err(e) => return Err(e.context(format!("attaching to PID {pid}"))),
    };
    let target = Measured { pid, comm: stat.comm, exec_ns: None };
    finish(probes, &pidfd, target, None, opts, k6, None)
}

/// `perf-agent attach --wait-exec NAME`.
pub fn attach_wait_exec(name: &str, opts: &MeasureOptions) -> anyhow::Result<u8> {
    let k6 = k6_preflight(opts)?;
    let tracefs_root = common_preflight(opts)?;
    let spec = TargetSpec::ExecMatching { name: name.to_string() };
    let mut probes =
        Probes::attach(&spec, &opts.paths, &tracefs_root, opts.profile_config(), opts.delivery)?;
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
    let target = Measured { pid, comm, exec_ns: Some(target.exec_ns) };
    finish(probes, &pidfd, target, None, opts, k6, None)
}

/// `perf-agent run [--cpus C] [--memory M] -- CMD ARGS...`.
pub fn run(argv: &[String], opts: &MeasureOptions, limits: &cgroup::Limits) -> anyhow::Result<u8> {
    launch::resolve(&argv[0])?;
    let k6 = k6_preflight(opts)?;
    let tracefs_root = common_preflight(opts)?;
    // The target's own cgroup (removed when dropped, after the report).
    let sandbox =
        (!limits.is_empty()).then(|| cgroup::Sandbox::create(limits.clone())).transpose()?;
    // Fork before attaching: no thread may exist at fork time.
    let mut child = GatedChild::spawn(argv)?;
    if let Some(Err(e)) = sandbox.as_ref().map(|s| s.add(child.pid)) {
        child.stop(libc::SIGKILL, Duration::ZERO);
        return Err(e.context("moving the command into its cgroup"));
    }
    let spec = TargetSpec::ExecOfPid { pid: child.pid };
    let mut probes = match Probes::attach(
        &spec,
        &opts.paths,
        &tracefs_root,
        opts.profile_config(),
        opts.delivery,
    ) {
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
    let target = Measured { pid, comm, exec_ns: Some(target.exec_ns) };
    finish(probes, &pidfd, target, Some(child), opts, k6, sandbox.as_ref())
}

/// With `--k6`: k6 is installed and the script loads (checked by `k6
/// inspect`, which also gives the plan).
fn k6_preflight(opts: &MeasureOptions) -> anyhow::Result<Option<K6Ready>> {
    let LoadOptions::K6 { script, args, .. } = &opts.load else { return Ok(None) };
    let k6 = k6::find_k6()?;
    let plan = k6::inspect(&k6, script, args)?;
    Ok(Some(K6Ready { k6, plan }))
}

/// What the session says once measuring (`SessionConfig::attached_message`).
pub(super) fn attached_message(pid: u32, comm: &str, opts: &MeasureOptions) -> String {
    format!(
        "perf-agent: attached to PID {pid} ({comm}){}",
        match opts.duration {
            Some(d) => format!(" for {:.1} s", d.as_secs_f64()),
            None => ", Ctrl-C to stop".into(),
        }
    )
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
