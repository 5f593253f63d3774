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
    launch::{self, GatedChild},
    phases::{self, Phase},
    preflight,
    probes::{PathOptions, Probes, TargetSpec},
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
    pub interval: Duration,
    pub paths: PathOptions,
    /// Length of the idle window after startup (launch / wait-for-exec).
    pub idle: Duration,
}

/// Checks shared by every mode; returns the tracefs root.
fn common_preflight(opts: &MeasureOptions) -> anyhow::Result<PathBuf> {
    if let Some(out) = &opts.out {
        bmf::check_writable(out)?;
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
    let tracefs_root = common_preflight(opts)?;
    let pidfd = session::open_pidfd(pid, stat.starttime_ticks)?;
    let probes = Probes::attach(&TargetSpec::Running { pid }, &opts.paths, &tracefs_root)
        .with_context(|| format!("attaching to PID {pid}"))?;
    announce(pid, &stat.comm, opts);
    let target = Measured { pid, comm: stat.comm, exec_ns: None, child: None };
    finish(probes, &pidfd, target, opts)
}

/// `perf-agent attach --wait-exec NAME`.
pub fn attach_wait_exec(name: &str, opts: &MeasureOptions) -> anyhow::Result<u8> {
    let tracefs_root = common_preflight(opts)?;
    let spec = TargetSpec::ExecMatching { name: name.to_string() };
    let mut probes = Probes::attach(&spec, &opts.paths, &tracefs_root)?;
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
    finish(probes, &pidfd, Measured { pid, comm, exec_ns: Some(target.exec_ns), child: None }, opts)
}

/// `perf-agent run -- CMD ARGS...`.
pub fn run(argv: &[String], opts: &MeasureOptions) -> anyhow::Result<u8> {
    launch::resolve(&argv[0])?;
    let tracefs_root = common_preflight(opts)?;
    // Fork before attaching: no thread may exist at fork time.
    let mut child = GatedChild::spawn(argv)?;
    let spec = TargetSpec::ExecOfPid { pid: child.pid };
    let mut probes = match Probes::attach(&spec, &opts.paths, &tracefs_root) {
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
    // SAFETY: plain syscall on our own child (not yet reaped, so no reuse).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        bail!("pidfd_open on our child {pid}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let comm =
        child.program.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    announce(pid, &comm, opts);
    finish(
        probes,
        &pidfd,
        Measured { pid, comm, exec_ns: Some(target.exec_ns), child: Some(child) },
        opts,
    )
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
) -> anyhow::Result<u8> {
    let binary_size =
        procfs::exe(target.pid).ok().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
    let config = SessionConfig {
        pid: target.pid,
        start_ns: target.exec_ns,
        duration: opts.duration,
        interval: opts.interval,
    };
    let result = session::run(&mut probes, pidfd, &config)?;
    let programs = probes.program_stats();
    drop(probes); // detach before anything else: the target runs unobserved from here

    // Launch mode: the run is over, so is our child.
    let child_status = target.child.as_ref().map(|child| match result.end {
        EndReason::TargetExited => child.wait(),
        EndReason::Stopped(sig) | EndReason::Interrupted(sig) => {
            child.stop(sig, Duration::from_secs(5))
        }
        EndReason::DurationElapsed => child.stop(libc::SIGTERM, Duration::from_secs(5)),
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
    let mut phase_list = Vec::new();
    if let Some(s) = &startup {
        if let Some(end) = s.end_ns() {
            phase_list.push(Phase::new("startup", s.exec_ns, end));
            phase_list.push(Phase::new("idle", end, end + opts.idle.as_nanos() as u64));
        }
    }
    let phase_reports = phases::measure(&phase_list, &result.samples, &result.log);
    let exited_in_startup = result.end == EndReason::TargetExited
        && startup.as_ref().is_some_and(|s| s.listen_ns.is_none());
    // A launched command that ends by itself with success, no duration
    // asked: the run is complete.
    let finished_cleanly = result.end == EndReason::TargetExited
        && opts.duration.is_none()
        && child_status.is_some_and(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0);
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
    };
    print!("{}", report::summary(&r));
    if let Some(out) = &opts.out {
        report::bmf(&r).write(out)?;
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
    Ok(match result.end {
        _ if finished_cleanly => exit::OK,
        EndReason::TargetExited => exit::TARGET_EXITED,
        EndReason::Interrupted(_) => exit::INTERRUPTED,
        _ => exit::OK,
    })
}
