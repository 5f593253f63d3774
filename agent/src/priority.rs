//! The agent's own scheduling policy: `SCHED_BATCH`.
//!
//! The agent wakes on its own schedule (a sample every interval, the
//! profile ring's drain, a scrape), and none of that is urgent: a sample
//! is stamped when it is read, and the kernel stamps requests and profile
//! samples itself. A normal thread that wakes may preempt whatever runs on
//! its CPU, often the target or its load generator in the middle of a
//! request; a `SCHED_BATCH` thread never preempts on wake-up (the
//! scheduler runs it at the next tick or when a CPU is idle), while its
//! share of a busy CPU stays that of nice 0, so its rings are still
//! drained at saturation (`SCHED_IDLE` would starve them there).
//!
//! Processes the agent starts (the target under `run`, k6) inherit a
//! thread's policy across fork and exec, so they get `SCHED_OTHER` back
//! ([`restore_in_child`]): they run as they would without the agent.

/// Makes the calling thread, and every thread and process it starts from
/// now on, `SCHED_BATCH`. Call first thing in `main`. A refusal (a seccomp
/// filter, say) only costs the benefit: a warning, and the run goes on.
pub fn run_as_batch() {
    if let Err(e) = set_policy(libc::SCHED_BATCH) {
        eprintln!(
            "perf-agent: warning: cannot switch to SCHED_BATCH ({e}); running as SCHED_OTHER"
        );
    }
}

/// Gives a child of the agent `SCHED_OTHER` back, between fork and exec:
/// one system call, async-signal-safe. The child goes on with the agent's
/// policy if the kernel refuses (it does not, for a lower policy of the
/// same class).
pub fn restore_in_child() -> std::io::Result<()> {
    set_policy(libc::SCHED_OTHER)
}

/// Makes `cmd`'s process start with `SCHED_OTHER` ([`restore_in_child`]).
pub fn restore_for(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure makes one async-signal-safe system call.
    unsafe { cmd.pre_exec(restore_in_child) }
}

fn set_policy(policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on the calling thread with a valid
    // pointer; nothing is allocated (safe between fork and exec).
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the calling thread `SCHED_OTHER` again: a thread whose wake-ups
/// must come on time (the off-CPU ticks: a `SCHED_BATCH` tick runs when a
/// CPU goes idle, i.e. just as target threads block, and saw them blocked
/// more often than they are). A refusal is a warning.
pub fn run_as_other() {
    if let Err(e) = set_policy(libc::SCHED_OTHER) {
        eprintln!("perf-agent: warning: cannot switch the off-CPU ticks to SCHED_OTHER ({e})");
    }
}

/// The calling thread's policy (tests).
pub fn current_policy() -> libc::c_int {
    // SAFETY: a plain system call on the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_inherited_by_threads_and_children_get_other_back() {
        // Each test runs on a thread of its own: switching it affects no other.
        std::thread::spawn(|| {
            run_as_batch();
            assert_eq!(current_policy(), libc::SCHED_BATCH);
            let inherited = std::thread::spawn(current_policy).join().unwrap();
            assert_eq!(inherited, libc::SCHED_BATCH, "threads inherit the policy");
            restore_in_child().unwrap();
            assert_eq!(current_policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
