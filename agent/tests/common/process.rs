//! Child processes that cannot outlive a failing test.

use std::{
    process::{Child, ChildStdout, Command},
    time::{Duration, Instant},
};

/// How a reaped child ended, and what it used over its life (`wait4`).
pub struct Exit {
    /// The exit status, or 128 + the signal that killed it.
    pub code: i32,
    pub usage: libc::rusage,
}

impl Exit {
    /// User + system CPU time, ns (rusage is µs-exact).
    pub fn cpu_ns(&self) -> u64 {
        let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
        ns(self.usage.ru_utime) + ns(self.usage.ru_stime)
    }

    /// Peak RSS over the whole life (ru_maxrss), bytes.
    pub fn max_rss(&self) -> u64 {
        self.usage.ru_maxrss as u64 * 1024
    }
}

/// A child process killed and reaped on drop unless the test reaped it
/// already: every process a test starts is one of these, so a failing test
/// leaves nothing running, and a reaped PID is never signalled again.
pub struct KillOnDrop {
    child: Child,
    reaped: bool,
}

impl KillOnDrop {
    pub fn spawn(cmd: &mut Command, what: &str) -> KillOnDrop {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
        KillOnDrop { child, reaped: false }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn signal(&self, signal: i32) {
        assert!(!self.reaped, "signal {signal} to a child already reaped");
        // SAFETY: our own child, not yet reaped: its PID is still ours.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Still running (not exited): checked without reaping it.
    pub fn alive(&self) -> bool {
        if self.reaped {
            return false;
        }
        // SAFETY: plain data; all-zero is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: WNOWAIT leaves the child waitable; valid out-pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: reading si_pid of a filled siginfo.
        rc == 0 && unsafe { info.si_pid() } == 0
    }

    /// Reaps the child if it has exited.
    pub fn try_reap(&mut self) -> Option<Exit> {
        if self.reaped {
            return None;
        }
        let pid = self.pid() as i32;
        let mut status = 0;
        // SAFETY: plain data; all-zero is valid.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own child; valid out-pointers.
        if unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) } != pid {
            return None;
        }
        self.reaped = true;
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        Some(Exit { code, usage })
    }

    /// Waits up to `timeout` for the child to exit and reaps it; `None`
    /// (still running) after that.
    pub fn reap(&mut self, timeout: Duration) -> Option<Exit> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_reap() {
                return Some(exit);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
