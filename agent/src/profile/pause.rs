//! Pausing profiling (`--profile-control FIFO`): what the session, which
//! detaches and attaches the programs, shares with the draining thread,
//! which stops its off-CPU ticks meanwhile, and with the summary, which
//! says how long the profiles were paused. A pause costs nothing: the
//! programs are detached (`probes::profile::ProfileLinks`), and no tick
//! runs.
//!
//! The control's words are perf's (`perf record --control fifo:`):
//! `disable` pauses, `enable` resumes; one per line.

use std::{
    fs::File,
    io::Read as _,
    os::fd::{AsFd, BorrowedFd},
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;

use crate::probes::Probes;

/// When profiling was paused.
#[derive(Debug, Default)]
pub struct Pauses {
    paused: AtomicBool,
    /// `(start, end)` of each pause, CLOCK_MONOTONIC ns; end 0 while it
    /// lasts.
    spans: Mutex<Vec<(u64, u64)>>,
}

impl Pauses {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Profiling stopped at `now_ns` (its programs are detached).
    fn pause(&self, now_ns: u64) {
        self.spans.lock().expect("not poisoned").push((now_ns, 0));
        self.paused.store(true, Ordering::Release);
    }

    /// Profiling runs again from `now_ns` (its programs are attached).
    fn resume(&self, now_ns: u64) {
        if let Some(last) = self.spans.lock().expect("not poisoned").last_mut() {
            last.1 = now_ns;
        }
        self.paused.store(false, Ordering::Release);
    }

    /// How many pauses, and how long they lasted in all, ns, within
    /// `[start_ns, end_ns)` (one still under way ends at `end_ns`).
    pub fn within(&self, start_ns: u64, end_ns: u64) -> (usize, u64) {
        let spans = self.spans.lock().expect("not poisoned");
        let mut n = 0;
        let mut total = 0;
        for &(a, b) in spans.iter() {
            let b = if b == 0 { end_ns } else { b };
            let overlap = b.min(end_ns).saturating_sub(a.max(start_ns));
            if overlap > 0 {
                n += 1;
                total += overlap;
            }
        }
        (n, total)
    }
}

/// One command read from the control FIFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Disable,
    Enable,
}

fn parse(line: &str) -> Option<Command> {
    match line.trim() {
        "disable" => Some(Command::Disable),
        "enable" => Some(Command::Enable),
        _ => None,
    }
}

/// Checks that `path` is a FIFO, with the fix when it is not.
pub fn check_fifo(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| {
        format!("--profile-control {shown}: cannot read it (create it first: mkfifo {shown})")
    })?;
    if !meta.file_type().is_fifo() {
        anyhow::bail!(
            "--profile-control {shown}: not a FIFO (make one with `mkfifo PATH`, and write \
             `disable` or `enable` lines to it)"
        );
    }
    Ok(())
}

/// The control FIFO, read by the session between its samples.
pub struct ProfileControl {
    fifo: File,
    path: String,
    partial: String,
    pauses: std::sync::Arc<Pauses>,
}

impl ProfileControl {
    /// Opens `path`, which must be a FIFO (`mkfifo PATH`), without waiting
    /// for a writer; writers may come and go.
    pub fn open(path: &Path, pauses: std::sync::Arc<Pauses>) -> anyhow::Result<ProfileControl> {
        use std::os::unix::fs::OpenOptionsExt as _;
        check_fifo(path)?;
        let shown = path.display().to_string();
        // Read and write: the FIFO then never reads as closed between
        // writers (no end-of-file to spin on), and opening does not wait.
        let fifo = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("--profile-control {shown}: cannot open it"))?;
        Ok(ProfileControl { fifo, path: shown, partial: String::new(), pauses })
    }

    /// What the session polls beside the target's pidfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fifo.as_fd()
    }

    /// Carries out the commands written since the last call: detaches or
    /// attaches the profiling programs of `probes`. An unknown line is
    /// warned about and skipped; a failure to attach again is an error
    /// (the profiles would silently stop).
    pub fn serve(&mut self, probes: &mut Probes) -> anyhow::Result<()> {
        let mut buf = [0u8; 512];
        loop {
            match self.fifo.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.partial.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", self.path)),
            }
        }
        let Some(cut) = self.partial.rfind('\n') else { return Ok(()) };
        let lines: String = self.partial.drain(..=cut).collect();
        for line in lines.lines().filter(|l| !l.trim().is_empty()) {
            match parse(line) {
                Some(Command::Disable) if !self.pauses.is_paused() => {
                    probes.pause_profiling(true)?;
                    self.pauses.pause(crate::clock::monotonic_ns());
                }
                Some(Command::Enable) if self.pauses.is_paused() => {
                    probes.pause_profiling(false)?;
                    self.pauses.resume(crate::clock::monotonic_ns());
                }
                Some(_) => {} // already so
                None => eprintln!(
                    "perf-agent: warning: --profile-control {}: unknown command {:?} (the \
                     commands are `disable` and `enable`)",
                    self.path,
                    line.trim()
                ),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_perfs_words() {
        assert_eq!(parse("disable\n"), Some(Command::Disable));
        assert_eq!(parse(" enable "), Some(Command::Enable));
        assert_eq!(parse("pause"), None);
    }

    #[test]
    fn pauses_are_cut_to_the_window() {
        let p = Pauses::default();
        p.pause(10);
        assert!(p.is_paused());
        p.resume(30);
        assert!(!p.is_paused());
        p.pause(50);
        assert_eq!(p.within(0, 100), (2, 20 + 50), "the open one ends at the window's end");
        assert_eq!(p.within(20, 60), (2, 10 + 10));
        assert_eq!(p.within(30, 50), (0, 0));
    }

    #[test]
    fn a_file_that_is_not_a_fifo_is_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("pa-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, "").unwrap();
        let pauses = std::sync::Arc::new(Pauses::default());
        let e = ProfileControl::open(&plain, pauses.clone()).err().unwrap().to_string();
        assert!(e.contains("not a FIFO") && e.contains("mkfifo"), "{e}");
        let e = ProfileControl::open(&dir.join("missing"), pauses).err().unwrap().to_string();
        assert!(e.contains("mkfifo"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
