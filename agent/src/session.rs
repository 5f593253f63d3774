//! One measurement run: sample the probes and `/proc` every interval until the
//! duration ends, a signal arrives or the target exits (seen through a pidfd,
//! so a reused PID can never be mistaken for the target).

use std::{
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    clock::monotonic_ns,
    marks::MarkReader,
    outcome::EndReason,
    probes::{KernelReading, Probes},
    procfs,
    profile::pause::ProfileControl,
    progress::Progress,
    requests::RequestLog,
    signals,
    timeline::Sample,
};

pub struct SessionConfig {
    pub pid: u32,
    /// When the measurement starts (the target's exec in launch and
    /// wait-for-exec modes, whose kernel counters all start there at zero);
    /// `None`: at the first sample.
    pub start_ns: Option<u64>,
    pub duration: Option<Duration>,
    pub interval: Duration,
    /// The idle phase's length after startup (its end is a phase edge).
    pub idle_after_startup: Duration,
    /// `/proc/PID/stat` at `start_ns` (launch mode: read at the exec stop),
    /// so the ground truth starts where the kernel counters do.
    pub proc_at_start: Option<procfs::ProcStat>,
    /// Printed to stderr once the first sample is taken (`perf-agent:
    /// attached to PID …`): load started after it is measured whole. Said
    /// before, a burst started on it could beat the first sample (a test's
    /// listen overflows counted 11 of 24).
    pub attached_message: String,
}

/// Something that steers a run from the sampling loop (the k6 driver).
pub trait Controller {
    /// Called after every sample, with the latest kernel reading.
    fn tick(&mut self, now_ns: u64, kernel: &KernelReading) -> anyhow::Result<Control>;
    /// The phase edges known so far (the request log keeps them exact).
    fn cuts(&self, _now_ns: u64) -> Vec<u64> {
        Vec::new()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// End the run now: complete.
    Finish,
}

pub struct SessionResult {
    pub samples: Vec<Sample>,
    pub end: EndReason,
    pub last_kernel: KernelReading,
    pub log: RequestLog,
    /// Requests read but not answered when the run ended.
    pub in_flight: u64,
    /// Phase marks (`perf-agent mark NAME`, SIGUSR1): name and time.
    pub marks: Vec<(String, u64)>,
}

/// `pidfd_open(2)`: a handle on the process that a reused PID can never
/// stand for.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens a pidfd for `pid` and checks it is still the process we validated.
pub fn open_pidfd(pid: u32, starttime_ticks: u64) -> anyhow::Result<OwnedFd> {
    let fd = pidfd_open(pid)
        .map_err(|e| anyhow::anyhow!("target PID {pid} is gone (pidfd_open: {e})"))?;
    // The pidfd pins the process now; if its start time changed, the PID was
    // reused between validation and here.
    let stat = procfs::read_stat(pid).with_context(|| format!("target PID {pid} exited"))?;
    if stat.starttime_ticks != starttime_ticks {
        bail!("PID {pid} was reused by another process ({}) before attach", stat.comm);
    }
    Ok(fd)
}

/// What ended a [`wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Woken {
    TargetExited,
    /// `--profile-control` has commands to read.
    Control,
    /// The timeout, or a signal.
    Timeout,
}

/// Waits up to `timeout` for the pidfd to become readable (target exited)
/// or `control` to hold commands. Returns early on a signal.
fn wait(pidfd: &OwnedFd, control: Option<BorrowedFd<'_>>, timeout: Duration) -> Woken {
    let pfd = |fd: i32| libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let mut fds = [pfd(pidfd.as_raw_fd()), pfd(control.map_or(-1, |c| c.as_raw_fd()))];
    // Rounded up: a remainder under a millisecond truncated to 0 made the
    // caller's loop spin until its next tick (about 1 ms of CPU per tick).
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    // SAFETY: two valid pollfds (a negative fd is skipped by poll).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if rc > 0 && fds[0].revents & libc::POLLIN != 0 {
        Woken::TargetExited
    } else if rc > 0 && fds[1].revents & libc::POLLIN != 0 {
        Woken::Control
    } else {
        Woken::Timeout
    }
}

/// True once the process behind `pidfd` has exited (without waiting).
pub fn has_exited(pidfd: &OwnedFd) -> bool {
    wait(pidfd, None, Duration::ZERO) == Woken::TargetExited
}

/// Reads everything once (`proc`: the target's files, kept open). When
/// `/proc` cannot be read (the target is gone), the ground-truth fields
/// repeat `prev`'s.
pub fn sample(
    probes: &Probes,
    proc: &mut procfs::ProcessFiles,
    ticks: u64,
    prev: Option<&Sample>,
) -> anyhow::Result<(Sample, KernelReading)> {
    let stat = proc.stat();
    let k = probes.read(stat.as_ref().ok().map(|s| (proc.pid(), s)))?;
    let t_ns = monotonic_ns();
    let mut s = Sample {
        t_ns,
        cpu_ns: k.cpu.on_cpu_ns,
        rss_bytes: k.memory.rss_bytes,
        peak_rss_bytes: k.memory.peak_rss_bytes,
        minor_faults: k.memory.minor_faults,
        major_faults: k.memory.major_faults,
        resets: k.net.stats.inbound_resets,
        upstream_resets: k.net.stats.outbound_resets,
        lost_events: k.net.stats.lost(),
        ..Default::default()
    };
    // The target's namespace's counter; kept from `prev` once it is gone.
    s.listen_overflows =
        proc.listen_overflows().unwrap_or_else(|_| prev.map_or(0, |p| p.listen_overflows));
    match (stat, proc.status()) {
        (Ok(stat), Ok(status)) if status.vm_rss > 0 || stat.state != 'Z' => {
            s.proc_cpu_ns = stat.cpu_time_ns(ticks);
            s.proc_minor_faults = stat.minflt;
            s.proc_major_faults = stat.majflt;
            s.proc_rss_bytes = status.vm_rss;
            s.proc_hwm_bytes = status.vm_hwm;
        }
        _ => {
            if let Some(p) = prev {
                s.proc_cpu_ns = p.proc_cpu_ns;
                s.proc_minor_faults = p.proc_minor_faults;
                s.proc_major_faults = p.proc_major_faults;
                s.proc_rss_bytes = p.proc_rss_bytes;
                s.proc_hwm_bytes = p.proc_hwm_bytes;
            }
        }
    }
    Ok((s, k))
}

/// The sample at the exec: everything the kernel counts starts at zero
/// there, and so does `/proc` when it was read at the exec stop.
fn exec_sample(t_ns: u64, proc_at_exec: Option<&procfs::ProcStat>, ticks: u64) -> Sample {
    let mut zero = Sample { t_ns, ..Default::default() };
    if let Some(st) = proc_at_exec {
        zero.proc_cpu_ns = st.cpu_time_ns(ticks);
        zero.proc_minor_faults = st.minflt;
        zero.proc_major_faults = st.majflt;
    }
    zero
}

/// Registers the phase edges known at `now_ns`, then folds what is two
/// ticks old: every edge is known by then, so windows between edges stay
/// exact.
fn cut_and_fold(
    log: &mut RequestLog,
    cuts: impl Iterator<Item = u64>,
    now_ns: u64,
    interval: Duration,
) {
    cuts.for_each(|t| log.cut(t));
    log.fold(now_ns.saturating_sub(2 * interval.as_nanos() as u64));
}

pub fn run(
    probes: &mut Probes,
    pidfd: &OwnedFd,
    config: &SessionConfig,
    mut controller: Option<&mut dyn Controller>,
    mut profile_control: Option<&mut ProfileControl>,
) -> anyhow::Result<SessionResult> {
    let ticks = procfs::clock_ticks_per_sec();
    let mut log = RequestLog::with_idle_after_startup(config.idle_after_startup.as_nanos() as u64);
    let mut mark_reader = MarkReader::new();
    let mut marks = Vec::new();
    let mut signal_marks = 0;
    let mut collect_marks = |marks: &mut Vec<(String, u64)>| {
        marks.extend(mark_reader.read_new());
        for (i, t) in signals::marks_since(signal_marks) {
            marks.push((format!("mark-{}", i + 1), t));
            signal_marks = i + 1;
        }
    };
    let mut proc = procfs::ProcessFiles::open(config.pid);
    let (first, _) = sample(probes, &mut proc, ticks, None)?;
    eprintln!("{}", config.attached_message);
    let mut samples = match config.start_ns {
        // ListenOverflows is the namespace's, not the target's: it starts
        // at the first reading, not at zero.
        Some(t_ns) => {
            let at_exec = exec_sample(t_ns, config.proc_at_start.as_ref(), ticks);
            vec![Sample { listen_overflows: first.listen_overflows, ..at_exec }, first]
        }
        None => vec![first],
    };
    let mut progress = Progress::new();
    let start = samples[0].t_ns;
    let deadline = config.duration.map(|d| start + d.as_nanos() as u64);
    let mut next_tick = start + config.interval.as_nanos() as u64;
    let end = loop {
        let now = monotonic_ns();
        if let Some(signal) = signals::received() {
            // A signal is the expected end only when nothing else was to end the run.
            break if deadline.is_some() || controller.is_some() {
                EndReason::Interrupted(signal)
            } else {
                EndReason::Stopped(signal)
            };
        }
        if deadline.is_some_and(|d| now >= d) {
            break EndReason::DurationElapsed;
        }
        let until = deadline.map_or(next_tick, |d| d.min(next_tick));
        if now < until {
            let control = profile_control.as_ref().map(|c| c.fd());
            match wait(pidfd, control, Duration::from_nanos(until - now)) {
                Woken::TargetExited => break EndReason::TargetExited,
                Woken::Control => {
                    let c = profile_control.as_deref_mut().expect("polled");
                    // Never the end of the run: the profiles say how long
                    // they were paused.
                    if let Err(e) = c.serve(probes) {
                        eprintln!("perf-agent: warning: --profile-control: {e:#}");
                    }
                    continue;
                }
                Woken::Timeout => {}
            }
        }
        if monotonic_ns() >= next_tick {
            probes.drain(&mut log);
            let (s, k) = sample(probes, &mut proc, ticks, samples.last())?;
            let prev = *samples.last().expect("first sample");
            samples.push(s);
            progress.update(&samples[0], &s, &prev, log.count());
            next_tick += config.interval.as_nanos() as u64;
            collect_marks(&mut marks);
            let control = match controller.as_deref_mut() {
                Some(c) => c.tick(s.t_ns, &k)?,
                None => Control::Continue,
            };
            let edges = controller.as_deref().map_or_else(Vec::new, |c| c.cuts(s.t_ns));
            let listen = Some(k.net.milestones.first_listen_ns).filter(|t| *t != 0);
            let cuts = marks.iter().map(|m| m.1).chain(edges).chain(listen);
            cut_and_fold(&mut log, cuts, s.t_ns, config.interval);
            if control == Control::Finish {
                break EndReason::LoadFinished;
            }
        }
    };
    progress.clear();
    // The closing sample: kernel counters are final (an exited target's last
    // slice and faults are in them); /proc may be gone.
    let (s, last_kernel) = sample(probes, &mut proc, ticks, samples.last())?;
    samples.push(s);
    let in_flight = probes.drain_final(&mut log);
    collect_marks(&mut marks);
    // A mark stamped before the run started (a racing `mark`) opens at the start.
    let start_t = samples[0].t_ns;
    marks.retain(|(_, t)| *t <= s.t_ns);
    marks.iter_mut().for_each(|(_, t)| *t = (*t).max(start_t));
    Ok(SessionResult { samples, end, last_kernel, log, in_flight, marks })
}
