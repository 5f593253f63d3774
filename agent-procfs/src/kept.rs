//! A process's `/proc` files kept open between samples and read again from
//! their start with `pread`. Opening `/proc/PID/net/netstat` and
//! reading it to the end cost ~119 µs here against ~51 µs for `pread`s of
//! the open file (the kernel renders its 4 KiB twice on a fresh file: the
//! first pass overflows the `seq_file`'s page and is redone into two);
//! `stat` and `status` ~7 µs less each. Ten samples a second, the agent
//! attached to an idle process went from 0.45 to 0.33 % of a core (8
//! interleaved 10 s runs each), 0.30 % with the memory probe's page
//! faults read from a kept `stat` too (`docs/performance.md`, fifteenth
//! session).
//! An open file also stays with the process it was opened for: a reused
//! pid is never read by mistake.

use std::{
    fs::{self, File},
    io,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::Path,
};

use crate::{ProcStat, ProcStatus, invalid, parse_listen_overflows, parse_stat, parse_status};

/// A `/proc` file read whole from its start each time.
pub struct ProcFile {
    file: File,
    buf: Vec<u8>,
}

impl ProcFile {
    pub fn open(path: impl AsRef<Path>) -> io::Result<ProcFile> {
        Ok(ProcFile { file: File::open(path)?, buf: vec![0; 4096] })
    }

    /// The file as the kernel renders it now: read from offset 0 until a
    /// read returns nothing (a `seq_file` hands out at most its own buffer
    /// per read; reading on from where the last read ended costs the
    /// kernel no new rendering, and a read at 0 starts a fresh one).
    pub fn read(&mut self) -> io::Result<&str> {
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize(len * 2, 0);
            }
            let n = self.file.read_at(&mut self.buf[len..], len as u64)?;
            if n == 0 {
                break;
            }
            len += n;
        }
        std::str::from_utf8(&self.buf[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// `/proc/PID/stat`, `status` and `net/netstat` of one process, opened
/// once. Every read is an error once the process is gone (reaped), as a
/// fresh open would be.
pub struct ProcessFiles {
    pid: u32,
    stat: io::Result<ProcFile>,
    status: io::Result<ProcFile>,
    /// The network namespace's inode it was opened in, and the file.
    netstat: Option<(u64, ProcFile)>,
    /// Reads of `netstat` since its namespace was last checked.
    netstat_reads: u32,
}

/// Reads of `netstat` from one check of the process's namespace to the
/// next (a second at the default interval): a check costs a fifth of the
/// read it guards, and a process moves at most once, near its start.
const NETNS_CHECK_EVERY: u32 = 10;

impl ProcessFiles {
    /// Opens `pid`'s files; one that cannot be opened makes its reads errors.
    pub fn open(pid: u32) -> ProcessFiles {
        ProcessFiles {
            pid,
            stat: ProcFile::open(format!("/proc/{pid}/stat")),
            status: ProcFile::open(format!("/proc/{pid}/status")),
            netstat: None,
            netstat_reads: 0,
        }
    }

    /// The process these files are of.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stat(&mut self) -> io::Result<ProcStat> {
        let file = self.stat.as_mut().map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
        parse_stat(file.read()?).map_err(invalid)
    }

    pub fn status(&mut self) -> io::Result<ProcStatus> {
        let file = self.status.as_mut().map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
        parse_status(file.read()?).map_err(invalid)
    }

    /// `ListenOverflows` of the network namespace the process is in (see
    /// [`parse_listen_overflows`]): the file is opened again when the
    /// process has moved to another namespace (`ip netns exec`,
    /// `unshare`), told by the inode of `/proc/PID/ns/net` (~9 µs to read,
    /// so checked every [`NETNS_CHECK_EVERY`] reads).
    pub fn listen_overflows(&mut self) -> io::Result<u64> {
        self.netstat_reads += 1;
        if self.netstat.is_none() || self.netstat_reads >= NETNS_CHECK_EVERY {
            self.netstat_reads = 0;
            // Gone: every read is an error from here on, as it was for a
            // fresh open (the caller keeps the last value).
            let ns = match fs::metadata(format!("/proc/{}/ns/net", self.pid)) {
                Ok(m) => m.ino(),
                Err(e) => {
                    self.netstat = None;
                    return Err(e);
                }
            };
            if self.netstat.as_ref().is_none_or(|(at, _)| *at != ns) {
                let file = ProcFile::open(format!("/proc/{}/net/netstat", self.pid))?;
                self.netstat = Some((ns, file));
            }
        }
        let Some((_, file)) = &mut self.netstat else { unreachable!("opened above") };
        parse_listen_overflows(file.read()?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no TcpExt ListenOverflows"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_file_reads_whole_and_fresh_each_time() {
        let pid = std::process::id();
        let mut files = ProcessFiles::open(pid);
        let a = files.stat().unwrap();
        assert_eq!(a.comm, crate::read_stat(pid).unwrap().comm);
        // Burn some CPU: the second read of the same open file sees it.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let b = files.stat().unwrap();
        assert!(b.utime_ticks + b.stime_ticks > a.utime_ticks + a.stime_ticks, "{a:?} {b:?}");
        assert!(files.status().unwrap().vm_rss > 0);
        assert!(files.listen_overflows().is_ok());
    }

    #[test]
    fn a_reaped_process_reads_as_errors_not_as_another() {
        // A child that lives until killed: one that exits on its own may
        // already be a zombie at the first read, and a zombie has no
        // network namespace to read (CI saw `true` go that fast).
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let mut files = ProcessFiles::open(child.id());
        assert!(files.listen_overflows().is_ok());
        child.kill().unwrap();
        child.wait().unwrap(); // reaped: its pid may be anyone's from now on
        assert!(files.stat().is_err());
        assert!(files.status().is_err());
        for _ in 0..=NETNS_CHECK_EVERY {
            let _ = files.listen_overflows();
        }
        assert!(files.listen_overflows().is_err(), "the check saw it gone");
    }

    #[test]
    fn a_file_larger_than_the_buffer_is_read_whole() {
        // /proc/self/smaps: many records, tens of KiB (its numbers move,
        // its records, one per mapping, do not).
        let mut f = ProcFile::open("/proc/self/smaps").unwrap();
        let kept = f.read().unwrap().to_string();
        let fresh = fs::read_to_string("/proc/self/smaps").unwrap();
        let records = |t: &str| t.lines().filter(|l| l.starts_with("VmFlags:")).count();
        assert!(kept.len() > 8192, "{}", kept.len());
        assert_eq!(records(&kept), records(&fresh));
        assert_eq!(records(f.read().unwrap()), records(&fresh), "read again from the start");
    }
}
