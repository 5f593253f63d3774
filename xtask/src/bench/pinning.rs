//! CPU affinity for a bench scenario's processes: this thread's affinity
//! is set for a scope, and the processes it starts meanwhile inherit it.
//! On a two-vCPU VM shared by a server, its load generator and the agent,
//! where each lands decides more of a run's result than the agent does
//! (the node tax's pair moved by up to 25 % between runs of one mode,
//! unpinned); pinned, the spread shrinks to a few percent.

use anyhow::{Context, Result, bail};

/// This thread's affinity for as long as the value lives; the previous one
/// is restored when it is dropped.
pub struct Pinned {
    before: libc::cpu_set_t,
}

/// The CPUs this thread may run on now.
fn current() -> Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; the call gets a valid pointer and
    // its size, and its result is checked.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

fn cpus(set: &libc::cpu_set_t) -> Vec<usize> {
    // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, set) }).collect()
}

impl Pinned {
    fn to(keep: impl Fn(usize, usize) -> bool) -> Result<Pinned> {
        let before = current()?;
        let all = cpus(&before);
        let last = *all.last().context("no CPU in this process's affinity")?;
        // SAFETY: as in `current`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in all.iter().filter(|&&c| keep(c, last)) {
                libc::CPU_SET(c, &mut set);
            }
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
            }
        }
        Ok(Pinned { before })
    }

    /// The last CPU of this process's affinity only.
    pub fn to_last_cpu() -> Result<Pinned> {
        Pinned::to(|c, last| c == last)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: as in `current`.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.before) };
    }
}
