//! Pausing profiling (`--profile-control FIFO`): what the session, which
//! detaches and attaches the programs, shares with the draining thread,
//! which stops its off-CPU ticks meanwhile, and with the summary, which
//! says how long the profiles were paused. A pause costs nothing: the
//! programs are detached (`probes::profile::ProfileLinks`), and no tick
//! runs.
//!
//! The control's words are perf's (`perf record --control
//! fifo:CTL[,ACK]`): `disable` pauses, `enable` resumes; one per line.
//! With an ACK FIFO, `ack` is written to it once each command is carried
//! out: with `--runq-waits` resuming can take seconds under load (the
//! kernel attaches `sched_switch` only after an RCU grace period, and a
//! saturated host delays those: 0.1 ms idle, up to 12.7 s measured beside
//! the saturated demo-server), and a script timing what profiling costs
//! must know when it is in effect.

use std::{
    fs::File,
    io::Read as _,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
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

/// `--profile-control CTL[,ACK]`: the FIFO commands come in by, and the
/// one `ack` lines go out by, as perf's `--control fifo:CTL[,ACK]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPaths {
    pub ctl: PathBuf,
    pub ack: Option<PathBuf>,
}

impl std::str::FromStr for ControlPaths {
    type Err = String;

    /// `CTL` or `CTL,ACK` (a comma splits, as in perf).
    fn from_str(s: &str) -> Result<ControlPaths, String> {
        let (ctl, ack) = match s.split_once(',') {
            Some((ctl, ack)) => (ctl, Some(ack)),
            None => (s, None),
        };
        if ctl.is_empty() || ack.is_some_and(|a| a.is_empty() || a.contains(',')) {
            return Err(format!(
                "{s:?}: give CTL or CTL,ACK: the FIFO to read `disable`/`enable` from and, \
                 optionally, the FIFO to write `ack` to once each is done (both made with mkfifo)"
            ));
        }
        Ok(ControlPaths { ctl: ctl.into(), ack: ack.map(PathBuf::from) })
    }
}

impl ControlPaths {
    /// Checks that both are FIFOs, with the fix when one is not.
    pub fn check(&self) -> anyhow::Result<()> {
        check_fifo(&self.ctl)?;
        self.ack.as_deref().map_or(Ok(()), check_fifo)
    }
}

/// Checks that `path` is a FIFO, with the fix when it is not.
fn check_fifo(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| {
        format!("--profile-control {shown}: cannot read it (create it first: mkfifo {shown})")
    })?;
    if !meta.file_type().is_fifo() {
        anyhow::bail!(
            "--profile-control {shown}: not a FIFO (make one with `mkfifo PATH`; write \
             `disable` or `enable` lines to the first, read `ack` lines from the second)"
        );
    }
    Ok(())
}

/// Opens FIFO `path` read and write, without waiting: it then never reads
/// as closed between writers (no end-of-file to spin on), and never waits
/// for a reader.
fn open_fifo(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("--profile-control {}: cannot open it", path.display()))
}

/// The control FIFO, read by the session between its samples, and the
/// FIFO it acknowledges commands on.
pub struct ProfileControl {
    fifo: File,
    path: String,
    partial: String,
    /// With whether an `ack` was ever dropped (nobody reading it: the
    /// FIFO's buffer full), to warn once.
    ack: Option<(File, bool)>,
    pauses: std::sync::Arc<Pauses>,
}

impl ProfileControl {
    /// Opens `paths`, which must be FIFOs (`mkfifo PATH`), without waiting
    /// for a writer or reader; both may come and go.
    pub fn open(
        paths: &ControlPaths,
        pauses: std::sync::Arc<Pauses>,
    ) -> anyhow::Result<ProfileControl> {
        paths.check()?;
        let fifo = open_fifo(&paths.ctl)?;
        let ack = paths.ack.as_deref().map(open_fifo).transpose()?.map(|f| (f, false));
        let path = paths.ctl.display().to_string();
        Ok(ProfileControl { fifo, path, partial: String::new(), ack, pauses })
    }

    /// Writes `ack` for a command carried out. Never waits: when nobody
    /// reads the FIFO and its buffer is full, the line is dropped (warned
    /// once).
    fn acknowledge(&mut self) {
        use std::io::Write as _;
        let Some((file, dropped)) = self.ack.as_mut() else { return };
        if let Err(e) = file.write_all(b"ack\n")
            && !std::mem::replace(dropped, true)
        {
            eprintln!(
                "perf-agent: warning: --profile-control: cannot write `ack` ({e}); read the ACK \
                 FIFO to get them"
            );
        }
    }

    /// What the session polls beside the target's pidfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fifo.as_fd()
    }

    /// Carries out the commands written since the last call: detaches or
    /// attaches the profiling programs of `probes`, then acknowledges each.
    /// An unknown line is warned about and skipped (no `ack`); a failure to
    /// attach again is an error (the profiles would silently stop).
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
                    self.acknowledge();
                }
                Some(Command::Enable) if self.pauses.is_paused() => {
                    probes.pause_profiling(false)?;
                    self.pauses.resume(crate::clock::monotonic_ns());
                    self.acknowledge();
                }
                Some(_) => self.acknowledge(), // already so
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
        let paths = |ctl: &Path, ack: Option<&Path>| ControlPaths {
            ctl: ctl.into(),
            ack: ack.map(Path::to_path_buf),
        };
        let open = |p: ControlPaths| ProfileControl::open(&p, pauses.clone()).err().unwrap();
        let e = open(paths(&plain, None)).to_string();
        assert!(e.contains("not a FIFO") && e.contains("mkfifo"), "{e}");
        let e = open(paths(&dir.join("missing"), None)).to_string();
        assert!(e.contains("mkfifo"), "{e}");
        let fifo = dir.join("ctl");
        make_fifo(&fifo);
        let e = open(paths(&fifo, Some(&plain))).to_string();
        assert!(e.contains("plain") && e.contains("not a FIFO"), "the ACK one is checked: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn make_fifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn control_paths_are_perfs_ctl_comma_ack() {
        let p: ControlPaths = "/tmp/ctl".parse().unwrap();
        assert_eq!(p, ControlPaths { ctl: "/tmp/ctl".into(), ack: None });
        let p: ControlPaths = "/tmp/ctl,/tmp/ack".parse().unwrap();
        assert_eq!(p.ack.as_deref(), Some(Path::new("/tmp/ack")));
        for bad in ["", ",/tmp/ack", "/tmp/ctl,", "/a,/b,/c"] {
            let e = bad.parse::<ControlPaths>().unwrap_err();
            assert!(e.contains("CTL,ACK"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_full_ack_fifo_drops_acks_without_waiting() {
        let dir = std::env::temp_dir().join(format!("pa-ack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ctl, ack) = (dir.join("ctl"), dir.join("ack"));
        make_fifo(&ctl);
        make_fifo(&ack);
        let paths = ControlPaths { ctl, ack: Some(ack.clone()) };
        let mut c = ProfileControl::open(&paths, std::sync::Arc::default()).unwrap();
        // A pipe holds 64 KiB: 16,384 acks; nobody reads them.
        for _ in 0..20_000 {
            c.acknowledge();
        }
        assert!(c.ack.as_ref().unwrap().1, "the drop was noticed");
        // What was written reads back as `ack` lines.
        let mut reader = open_fifo(&ack).unwrap();
        let mut buf = [0u8; 8];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ack\nack\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
