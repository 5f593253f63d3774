//! Child processes that never outlive an error: [`KillOnDrop`], bounded
//! waits, and the CPU time of a reaped child.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Kills and reaps the child when dropped, so no error path (nor an
/// interruption) leaves a server, a load or an agent running.
pub struct KillOnDrop(Option<Child>);

/// How a child ended and the CPU it used (all its threads), from `wait4`.
pub struct Reaped {
    pub status: ExitStatus,
    /// utime + stime, ns (microsecond resolution: unlike /proc's ticks, the
    /// kernel derives both from the scheduler's exact run time).
    pub cpu_ns: f64,
}

impl KillOnDrop {
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("only reap() takes the child, and it consumes self")
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("present until reaped").id()
    }

    /// The child's pid, which the caller now reaps itself (with `wait4`,
    /// for its resource usage, which `Child::wait` does not give).
    fn take_pid(&mut self) -> libc::pid_t {
        let pid = self.id() as libc::pid_t;
        self.0 = None;
        pid
    }

    /// Still running? An error if it exited, naming `what` and the status.
    pub fn check_running(&mut self, what: &str) -> Result<()> {
        match self.child().try_wait()? {
            Some(status) => bail!("{what} exited ({status})"),
            None => Ok(()),
        }
    }

    /// Waits up to `timeout` for the child to exit by itself, then kills it;
    /// returns how it ended (`None`: it was killed at the deadline) and its
    /// CPU time. The wait blocks in `wait4`, so the reaping is as prompt as
    /// the kernel's wake-up (wall times taken around it stay exact).
    pub fn reap(mut self, timeout: Duration) -> Result<(Option<ExitStatus>, Reaped)> {
        let pid = self.take_pid();
        // A pidfd names this process, never a later one that reuses its pid,
        // so the watchdog cannot kill a stranger after we reaped ours.
        // SAFETY: pidfd_open(2) takes a pid and flags.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error()).context("pidfd_open");
        }
        let (done, cancelled) = mpsc::channel::<()>();
        let watchdog = thread::spawn(move || {
            let fired = cancelled.recv_timeout(timeout).is_err();
            if fired {
                // SAFETY: pidfd_send_signal(2) on the pidfd we own.
                unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGKILL, 0, 0) };
            }
            fired
        });
        let reaped = wait4(pid, 0);
        let _ = done.send(());
        let killed = watchdog.join().unwrap_or(true);
        // SAFETY: closing the pidfd we opened, once the watchdog is done with it.
        unsafe { libc::close(pidfd as libc::c_int) };
        let reaped = reaped?.context("wait4 without WNOHANG returned no child")?;
        Ok(((!killed).then_some(reaped.status), reaped))
    }

    /// Kills the child (SIGKILL) and reaps it: for servers, which never exit
    /// by themselves.
    pub fn kill_and_reap(mut self) -> Result<Reaped> {
        let pid = self.take_pid();
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait4(pid, 0)?.context("wait4 without WNOHANG returned no child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `wait4(pid, flags)`: `None` if WNOHANG and it is still running.
fn wait4(pid: libc::pid_t, flags: libc::c_int) -> Result<Option<Reaped>> {
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pointers to locals that outlive the call.
    let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("wait4({pid})"));
    }
    if r == 0 {
        return Ok(None);
    }
    let ns = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    Ok(Some(Reaped {
        status: ExitStatus::from_raw(status),
        cpu_ns: ns(usage.ru_utime) + ns(usage.ru_stime),
    }))
}

/// Waits up to 5 s until `addr` accepts connections.
pub fn wait_listening(server: &mut KillOnDrop, addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        server.check_running(&format!("{what}, before listening on {addr},"))?;
        if Instant::now() > deadline {
            bail!("{what} does not accept connections on {addr}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn reaped_child_reports_its_cpu_time() {
        // A shell loop that burns a little CPU, then exits 3.
        let child = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 3"])
            .spawn()
            .unwrap();
        let (status, reaped) = KillOnDrop::new(child).reap(Duration::from_secs(30)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(3));
        assert!(reaped.cpu_ns > 0.0, "{}", reaped.cpu_ns);
    }

    #[test]
    fn reap_kills_at_the_deadline() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let t = Instant::now();
        let (status, reaped) = KillOnDrop::new(child).reap(Duration::from_millis(100)).unwrap();
        assert!(status.is_none());
        assert_eq!(reaped.status.signal(), Some(libc::SIGKILL));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn dropping_kills_the_child() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        drop(KillOnDrop::new(child));
        // Reaped: the pid no longer names our child.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| !s.contains("(sleep)"))
        );
    }
}
