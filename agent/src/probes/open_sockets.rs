//! The sockets a process has open, found through its descriptors: each is
//! duplicated into the agent with `pidfd_getfd` (Linux 5.6; needs the right
//! to ptrace the target, which root has), so its socket storage can be read
//! (at the end of a run: connection state lives in socket storage, which
//! has no table to walk) or given (at attach: `adoption`).

use std::collections::HashSet;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use agent_common::ConnState;
use anyhow::Context as _;
use aya::maps::{MapData, SkStorage};

/// Calls `f` with a duplicate of each descriptor `pid` has open (sockets
/// or not; `f` tells). Nothing when the process is gone.
pub fn for_each_descriptor(pid: u32, mut f: impl FnMut(&OwnedFd)) -> anyhow::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Ok(()); // exited: its sockets are closed
    }
    // SAFETY: a descriptor just returned to us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let dir = format!("/proc/{pid}/fd");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {dir}")),
    };
    let mut refused = None;
    let mut duplicated = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags.
        let local = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if local < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                refused = Some(e);
            }
            continue; // closed meanwhile (EBADF), or refused
        }
        // SAFETY: a descriptor just returned to us.
        let local = unsafe { OwnedFd::from_raw_fd(local as i32) };
        duplicated += 1;
        f(&local);
    }
    if let Some(e) = refused
        && duplicated == 0
    {
        return Err(e).with_context(|| {
            format!("duplicating the sockets of PID {pid} (pidfd_getfd needs CAP_SYS_PTRACE)")
        });
    }
    Ok(())
}

/// The tracked state of each socket `pid` has open, once per socket (a
/// socket behind two descriptors counts once). Descriptors that are not
/// sockets, or sockets never tracked, have no state and are skipped. Empty
/// when the process is gone.
pub fn states(pid: u32, conns: &SkStorage<MapData, ConnState>) -> anyhow::Result<Vec<ConnState>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for_each_descriptor(pid, |fd| {
        // A connection adopted at attach and never used since has no
        // address yet (`sk` 0) and nothing under way: not reported.
        if let Ok(c) = conns.get(fd, 0)
            && c.sk != 0
            && seen.insert(c.sk)
        {
            out.push(c);
        }
    })?;
    Ok(out)
}
