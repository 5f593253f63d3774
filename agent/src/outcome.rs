//! How a run ended, and the exit status that says so (the table in the
//! README and the man page). Pure: every rule is unit-tested here.

use std::process::ExitStatus;

use crate::{launch, signals};

/// Exit codes (documented in the README and the man page).
pub mod exit {
    /// Complete run, results written.
    pub const OK: u8 = 0;
    /// Error: nothing measured (bad input, missing privilege or kernel feature).
    pub const ERROR: u8 = 1;
    // 2: usage error (clap).
    /// Partial: the target exited before the end; results so far written.
    pub const TARGET_EXITED: u8 = 3;
    /// Partial: interrupted before `--duration` elapsed; results so far written.
    pub const INTERRUPTED: u8 = 4;
    /// The target exited during startup (before listening); what was
    /// measured is written.
    pub const STARTUP_FAILED: u8 = 5;
    /// The results could not be written where asked (`--out`,
    /// `--phases-json`): they are in a fallback file named on stderr.
    pub const RESULTS_ELSEWHERE: u8 = 6;
    /// `compare`: at least one metric regressed past its warning threshold
    /// (significantly, with enough runs), none past its failing one.
    pub const COMPARE_WARN: u8 = 10;
    /// `compare`: at least one metric regressed past its failing threshold.
    pub const COMPARE_FAIL: u8 = 11;
}

/// Why the sampling loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// `--duration` elapsed: complete.
    DurationElapsed,
    /// Interrupted with no `--duration` given: the expected end, complete.
    Stopped(i32),
    /// Interrupted before `--duration` elapsed: partial.
    Interrupted(i32),
    /// The target exited: partial.
    TargetExited,
    /// The controller (the k6 driver) finished: complete.
    LoadFinished,
}

impl EndReason {
    pub fn is_partial(self) -> bool {
        matches!(self, EndReason::Interrupted(_) | EndReason::TargetExited)
    }

    pub fn describe(self) -> String {
        match self {
            EndReason::DurationElapsed => "complete (duration elapsed)".into(),
            EndReason::LoadFinished => "complete (load test finished)".into(),
            EndReason::Stopped(s) => format!("complete (stopped by {})", signals::name(s)),
            EndReason::Interrupted(s) => {
                format!("PARTIAL (interrupted by {} before --duration)", signals::name(s))
            }
            EndReason::TargetExited => "PARTIAL (target exited)".into(),
        }
    }
}

/// What k6's exit status means (k6's documented exit codes).
pub fn describe_k6_exit(status: &ExitStatus) -> String {
    match status.code() {
        Some(0) => "k6 finished".into(),
        Some(99) => "k6: thresholds failed (exit 99)".into(),
        Some(97) => "k6: script aborted by test.abort() (exit 97)".into(),
        Some(105) => "k6: interrupted (exit 105)".into(),
        Some(107) => "k6: script exception (exit 107)".into(),
        Some(108) => "k6: invalid config (exit 108)".into(),
        Some(c) => format!("k6 exited with status {c}"),
        None => format!("k6 {status}"),
    }
}

/// Everything that decides the exit status of a measured run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub end: EndReason,
    /// `--duration` was given.
    pub duration_given: bool,
    /// The wait status of the command `run` launched.
    pub child_status: Option<i32>,
    /// Followed from its exec and never listened: the last startup
    /// milestone it reached.
    pub never_listened_after: Option<&'static str>,
    /// `--k6` was given.
    pub with_k6: bool,
    /// k6's exit status when it ran to its end by itself (not stopped by
    /// perf-agent because the run ended first).
    pub k6_status: Option<ExitStatus>,
    /// A result file could not be written where asked and went to a
    /// fallback file instead.
    pub results_elsewhere: bool,
}

/// The exit status, and what perf-agent says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub code: u8,
    pub message: Option<String>,
}

impl Outcome {
    fn target_exited(&self) -> bool {
        self.end == EndReason::TargetExited
    }

    /// A command launched by `run` that exited with status 0 by itself, no
    /// `--duration` asked: the run is complete (a batch job need not listen).
    pub fn finished_cleanly(&self) -> bool {
        self.target_exited()
            && !self.duration_given
            && self.child_status.is_some_and(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0)
    }

    /// The target exited before it ever listened (and did not finish cleanly).
    pub fn exited_in_startup(&self) -> bool {
        self.target_exited() && !self.finished_cleanly() && self.never_listened_after.is_some()
    }

    /// The numbers cover less than was asked.
    pub fn partial(&self) -> bool {
        self.end.is_partial() && !self.finished_cleanly()
    }

    /// In this order: results not where asked (6, so CI that reads them
    /// there never mistakes a missing file for a run), the target exited
    /// during startup (5), k6's own non-zero status, then target exited (3),
    /// interrupted (4), complete (0).
    pub fn verdict(&self) -> Verdict {
        if self.results_elsewhere {
            // The fallback file was named on stderr when it was written.
            return Verdict { code: exit::RESULTS_ELSEWHERE, message: None };
        }
        if self.exited_in_startup() {
            let status = self.child_status.map(launch::describe_status);
            let message = format!(
                "the target exited during startup (last milestone: {}){}",
                self.never_listened_after.unwrap_or("exec"),
                status.map_or(String::new(), |s| format!(", {s}"))
            );
            return Verdict { code: exit::STARTUP_FAILED, message: Some(message) };
        }
        // k6's own failure (thresholds, script error) is the run's verdict.
        if let Some(status) = self.k6_status
            && let Some(code) = status.code().filter(|c| *c != 0)
        {
            let code = u8::try_from(code).unwrap_or(exit::ERROR);
            return Verdict { code, message: Some(describe_k6_exit(&status)) };
        }
        let message =
            (self.with_k6 && self.k6_status.is_none()).then(|| "k6 did not run to the end".into());
        let code = match self.end {
            _ if self.finished_cleanly() => exit::OK,
            EndReason::TargetExited => exit::TARGET_EXITED,
            EndReason::Interrupted(_) => exit::INTERRUPTED,
            _ => exit::OK,
        };
        Verdict { code, message }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    fn ended(end: EndReason) -> Outcome {
        Outcome {
            end,
            duration_given: false,
            child_status: None,
            never_listened_after: None,
            with_k6: false,
            k6_status: None,
            results_elsewhere: false,
        }
    }

    fn exited_with(code: i32) -> i32 {
        code << 8
    }

    #[test]
    fn complete_partial_and_interrupted_runs() {
        for end in
            [EndReason::DurationElapsed, EndReason::Stopped(libc::SIGTERM), EndReason::LoadFinished]
        {
            assert_eq!(ended(end).verdict(), Verdict { code: exit::OK, message: None }, "{end:?}");
            assert!(!ended(end).partial());
        }
        let gone = ended(EndReason::TargetExited);
        assert_eq!(gone.verdict().code, exit::TARGET_EXITED);
        assert!(gone.partial());
        let interrupted = ended(EndReason::Interrupted(libc::SIGINT));
        assert_eq!(interrupted.verdict().code, exit::INTERRUPTED);
        assert!(interrupted.partial());
    }

    #[test]
    fn a_launched_command_that_exits_0_by_itself_is_complete() {
        let batch = Outcome {
            child_status: Some(exited_with(0)),
            never_listened_after: Some("exec"),
            ..ended(EndReason::TargetExited)
        };
        assert!(batch.finished_cleanly() && !batch.partial());
        assert_eq!(batch.verdict().code, exit::OK, "a batch job need not listen");
        // With --duration it stopped too early: it never listened, so startup failed.
        let early = Outcome { duration_given: true, ..batch.clone() };
        assert_eq!(early.verdict().code, exit::STARTUP_FAILED);
        // Listened, then exited 0 before --duration: partial.
        let listened = Outcome { never_listened_after: None, ..early };
        assert_eq!(listened.verdict().code, exit::TARGET_EXITED);
    }

    #[test]
    fn exiting_during_startup_says_how_far_it_got_and_beats_k6() {
        let o = Outcome {
            child_status: Some(exited_with(3)),
            never_listened_after: Some("exec"),
            with_k6: true,
            k6_status: Some(ExitStatus::from_raw(exited_with(99))),
            ..ended(EndReason::TargetExited)
        };
        let v = o.verdict();
        assert_eq!(v.code, exit::STARTUP_FAILED);
        let message = v.message.unwrap();
        assert!(message.contains("last milestone: exec"), "{message}");
        assert!(message.contains("exited with status 3"), "{message}");
    }

    #[test]
    fn k6_failure_is_the_run_s_status() {
        let o = Outcome {
            with_k6: true,
            k6_status: Some(ExitStatus::from_raw(exited_with(99))),
            ..ended(EndReason::LoadFinished)
        };
        let v = o.verdict();
        assert_eq!(v.code, 99);
        assert!(v.message.unwrap().contains("thresholds failed"));
        let finished = Outcome { k6_status: Some(ExitStatus::from_raw(0)), ..o };
        assert_eq!(finished.verdict(), Verdict { code: exit::OK, message: None });
    }

    #[test]
    fn k6_that_did_not_finish_is_said_and_the_end_decides() {
        let o = Outcome { with_k6: true, ..ended(EndReason::Interrupted(libc::SIGINT)) };
        let v = o.verdict();
        assert_eq!(v.code, exit::INTERRUPTED);
        assert_eq!(v.message.as_deref(), Some("k6 did not run to the end"));
    }

    /// Results in a fallback file beat every other status, even a startup
    /// failure and k6's own.
    #[test]
    fn results_elsewhere_is_checked_first() {
        let failed = Outcome {
            child_status: Some(exited_with(3)),
            never_listened_after: Some("exec"),
            with_k6: true,
            k6_status: Some(ExitStatus::from_raw(exited_with(99))),
            ..ended(EndReason::TargetExited)
        };
        assert_eq!(failed.verdict().code, exit::STARTUP_FAILED);
        let elsewhere = Outcome { results_elsewhere: true, ..failed };
        assert_eq!(elsewhere.verdict(), Verdict { code: exit::RESULTS_ELSEWHERE, message: None });
        let complete = Outcome { results_elsewhere: true, ..ended(EndReason::DurationElapsed) };
        assert_eq!(complete.verdict().code, exit::RESULTS_ELSEWHERE);
    }

    #[test]
    fn k6_exit_codes_read_well() {
        assert!(describe_k6_exit(&ExitStatus::from_raw(99 << 8)).contains("thresholds failed"));
        assert_eq!(describe_k6_exit(&ExitStatus::from_raw(0)), "k6 finished");
    }

    #[test]
    fn end_reasons_read_well() {
        let s = EndReason::Interrupted(libc::SIGINT).describe();
        assert!(s.contains("PARTIAL") && s.contains("SIGINT"), "{s}");
        assert!(EndReason::Stopped(libc::SIGTERM).describe().starts_with("complete"));
    }
}
