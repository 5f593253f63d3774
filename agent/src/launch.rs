//! Launch mode: start the target ourselves with the probes in place before
//! its exec. The child is forked and waits on a pipe (the gate) until the
//! agent has attached; only then does it exec. Nothing is injected: the
//! program runs unmodified, with the agent's stdin, stdout and stderr.
//!
//! The ground truth must start where the probes do, at the exec: the
//! child's `/proc` counters already hold what it did since the fork and
//! during the exec itself. So the agent seizes it with ptrace
//! (`PTRACE_O_TRACEEXEC`) before opening the gate, reads `/proc/PID/stat`
//! at the exec stop (after the kernel's exec hook fired, before the program
//! runs one instruction), and detaches.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::procfs::{self, ProcStat};

/// A forked child waiting at the gate.
pub struct GatedChild {
    pub pid: u32,
    pub program: PathBuf,
    gate: Option<std::fs::File>,
    /// Set once waited for: the PID is no longer ours to signal.
    reaped: std::cell::Cell<bool>,
    /// A wait status collected while waiting for the exec (it failed).
    early_status: std::cell::Cell<Option<i32>>,
    /// `/proc/PID/stat` at the exec, when ptrace could stop it there.
    pub stat_at_exec: Option<ProcStat>,
}

/// Resolves `name` like execvp would, so "command not found" is reported
/// before anything is attached.
pub fn resolve(name: &str) -> anyhow::Result<PathBuf> {
    let candidate = |p: &Path| p.is_file() && is_executable(p);
    if name.contains('/') {
        let p = PathBuf::from(name);
        if candidate(&p) {
            return Ok(p);
        }
        bail!("cannot run {name}: no such executable file");
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if candidate(&p) {
            return Ok(p);
        }
    }
    bail!("cannot run {name}: command not found in PATH")
}

fn is_executable(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else { return false };
    // SAFETY: valid C string.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

impl GatedChild {
    /// Forks; the child blocks until [`GatedChild::release`], then execs
    /// `argv` (`argv[0]` resolved through PATH). Call before any thread exists.
    pub fn spawn(argv: &[String]) -> anyhow::Result<GatedChild> {
        let program = resolve(&argv[0])?;
        let c_program = CString::new(program.as_os_str().as_bytes())?;
        let c_args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .context("an argument contains a NUL byte")?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());
        let failure = format!("perf-agent: cannot exec {}\n", program.display());

        let mut fds = [0; 2];
        // SAFETY: valid out-array; O_CLOEXEC so the gate never leaks into the target.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe2");
        }
        let (read_end, write_end) = (fds[0], fds[1]);
        // SAFETY: the child only calls async-signal-safe functions (close,
        // read, signal reset, sched_setscheduler, execv, write, _exit) on memory prepared above.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            unsafe {
                libc::close(write_end);
                let mut byte = 0u8;
                let n = libc::read(read_end, (&mut byte as *mut u8).cast(), 1);
                if n != 1 {
                    libc::_exit(126); // the agent went away before attaching
                }
                // The agent's handlers record signals; the target gets defaults.
                for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                // And the scheduling policy it would have without the agent.
                let _ = crate::priority::restore_in_child();
                libc::execv(c_program.as_ptr(), c_argv.as_ptr());
                libc::write(2, failure.as_ptr().cast(), failure.len());
                libc::_exit(127);
            }
        }
        // SAFETY: we own both ends; the read end is the child's.
        unsafe { libc::close(read_end) };
        // SAFETY: write_end is a fresh fd we own.
        let gate = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(write_end) };
        Ok(GatedChild {
            pid: pid as u32,
            program,
            gate: Some(gate),
            reaped: Default::default(),
            early_status: Default::default(),
            stat_at_exec: None,
        })
    }

    /// Lets the child exec, and reads its `/proc/PID/stat` at the exec
    /// ([`GatedChild::stat_at_exec`]; left `None`, with a warning, where
    /// ptrace is not allowed).
    pub fn release(&mut self) -> anyhow::Result<()> {
        use std::io::Write as _;
        let Some(mut gate) = self.gate.take() else { return Ok(()) };
        let pid = self.pid as libc::pid_t;
        // SAFETY: plain syscall on our own child.
        let seized = unsafe {
            libc::ptrace(libc::PTRACE_SEIZE, pid, 0, libc::PTRACE_O_TRACEEXEC as libc::c_long)
        } == 0;
        if !seized {
            eprintln!(
                "perf-agent: warning: cannot ptrace the child ({}): its /proc numbers include \
                 what it did between fork and exec",
                std::io::Error::last_os_error()
            );
        }
        gate.write_all(&[1]).context("releasing the child")?;
        drop(gate);
        if seized {
            self.stat_at_exec = self.stop_at_exec()?;
        }
        Ok(())
    }

    /// Waits for the exec stop, reads `/proc/PID/stat` there, detaches.
    /// Signals arriving meanwhile are passed on; `None` if the child exited
    /// instead (its exec failed).
    fn stop_at_exec(&self) -> anyhow::Result<Option<ProcStat>> {
        let pid = self.pid as libc::pid_t;
        loop {
            let mut status = 0;
            // SAFETY: valid out-pointer; our own (traced) child.
            if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } != pid {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("waiting for the child's exec");
            }
            if !libc::WIFSTOPPED(status) {
                self.early_status.set(Some(status));
                return Ok(None);
            }
            let exec_stop = status >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXEC << 8));
            if exec_stop {
                let stat = procfs::read_stat(self.pid).ok();
                // SAFETY: detaching our stopped tracee resumes it.
                unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
                return Ok(stat);
            }
            // Another stop (a signal before the exec): deliver it, go on.
            let sig = libc::WSTOPSIG(status);
            let pass = if sig == libc::SIGTRAP { 0 } else { sig };
            // SAFETY: resuming our stopped tracee.
            unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, pass as libc::c_long) };
        }
    }

    /// Sends `signal` to the child (never to a reaped, maybe reused, PID).
    pub fn signal(&self, signal: i32) {
        if !self.reaped.get() {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }

    /// Reaps the child if it has exited: `Some(wait status)`.
    pub fn try_reap(&self) -> Option<i32> {
        if let Some(status) = self.early_status.get() {
            self.reaped.set(true);
            return Some(status);
        }
        let mut status = 0;
        // SAFETY: valid out-pointer; our own child.
        let rc = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
        let done = rc == self.pid as i32;
        self.reaped.set(self.reaped.get() || done);
        done.then_some(status)
    }

    /// Ends the child: `signal` first, SIGKILL after `grace`. Returns its wait status.
    pub fn stop(&self, signal: i32, grace: Duration) -> i32 {
        if let Some(status) = self.try_reap() {
            return status;
        }
        self.signal(signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_reap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal(libc::SIGKILL);
        self.wait()
    }

    /// Waits for the child to exit; returns its wait status.
    pub fn wait(&self) -> i32 {
        if let Some(status) = self.early_status.get() {
            self.reaped.set(true);
            return status;
        }
        let mut status = 0;
        // SAFETY: valid out-pointer; our own child.
        unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
        self.reaped.set(true);
        status
    }
}

/// On an error path the launched command must not outlive the agent that
/// owns it.
impl Drop for GatedChild {
    fn drop(&mut self) {
        if !self.reaped.get() {
            self.stop(libc::SIGTERM, Duration::from_secs(2));
        }
    }
}

/// "exited with status N" / "killed by signal N" for a wait status.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended (wait status {status})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_path_and_rejects_missing_commands() {
        assert!(resolve("sh").unwrap().is_absolute());
        let e = resolve("no-such-command-perf-agent").unwrap_err().to_string();
        assert!(e.contains("command not found"), "{e}");
        let e = resolve("/nonexistent/prog").unwrap_err().to_string();
        assert!(e.contains("no such executable"), "{e}");
    }

    #[test]
    fn gated_child_runs_only_after_release() {
        let dir = std::env::temp_dir().join(format!("perf-agent-gate-{}", std::process::id()));
        let marker = dir.with_extension("done");
        let _ = std::fs::remove_file(&marker);
        let script = format!("touch {}", marker.display());
        let mut child = GatedChild::spawn(&["sh".into(), "-c".into(), script]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!marker.exists(), "the child ran before the gate opened");
        child.release().unwrap();
        let status = child.wait();
        assert!(libc::WIFEXITED(status));
        assert!(marker.exists());
        let _ = std::fs::remove_file(&marker);
    }

    /// The baseline is read at the exec stop: after the exec (the new
    /// program's name), before the program runs.
    #[test]
    fn stat_at_exec_is_read_before_the_program_runs() {
        let mut child = GatedChild::spawn(&["true".into()]).unwrap();
        child.release().unwrap();
        let stat = child.stat_at_exec.clone().expect("ptrace allowed for our own child");
        assert_eq!(stat.comm, "true", "read after the exec");
        assert!(libc::WIFEXITED(child.wait()));
    }

    #[test]
    fn a_failed_exec_is_reaped_once() {
        let dir = std::env::temp_dir().join(format!("perf-agent-noexec-{}", std::process::id()));
        std::fs::write(&dir, "not a program").unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut child = GatedChild::spawn(&[dir.to_string_lossy().into_owned()]).unwrap();
        child.release().unwrap();
        assert!(child.stat_at_exec.is_none());
        let status = child.try_reap().expect("exited");
        assert_eq!(libc::WEXITSTATUS(status), 127);
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn statuses_read_well() {
        assert_eq!(describe_status(3 << 8), "exited with status 3");
        assert_eq!(describe_status(9), "killed by signal 9");
    }
}
