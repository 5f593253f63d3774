//! Bad command lines and bad input: usage errors exit 2 and need no root
//! (clap refuses them before anything else); input errors exit 1 before
//! anything is attached, each with a message naming the problem and the fix.

mod common;

use std::time::Duration;

use common::*;

/// Usage errors (exit 2): clap, and `attach … -- ARGS` without `--k6`.
/// Nothing here needs a privilege.
#[test]
fn usage_errors_exit_2_without_root() {
    let usage: &[(&[&str], &str)] = &[
        (&["attach", "--pid", "-1"], "--pid"),
        (&["attach", "--pid", "abc"], "--pid"),
        (&["attach", "--pid", "99999999999"], "--pid"),
        (&["attach", "--pid", "1", "--duration", "-1"], "positive"),
        (&["attach", "--pid", "1", "--duration", "0"], "positive"),
        (&["attach", "--pid", "1", "--duration", "nan"], "positive"),
        (&["attach", "--pid", "1", "--duration", "inf"], "positive"),
        (&["attach", "--pid", "1", "--duration", "abc"], "not a number"),
        (&["attach", "--pid", "1", "--duration", "1e12"], "longer than a year"),
        (&["attach", "--pid", "1", "--interval", "0"], "interval"),
        (&["attach", "--pid", "1", "--interval", "9"], "interval"),
        (&["attach", "--pid", "1", "--interval", "60001"], "interval"),
        (&["attach", "--pid", "1", "--idle", "-2"], "-2"),
        (&["attach", "--pid", "1", "--cooldown", "x"], "not a number"),
        (&["attach"], "--pid"),
        (&["attach", "--pid", "1", "--wait-exec", "x"], "cannot be used"),
        (&["attach", "--pid", "1", "--", "extra"], "--k6"),
        (&["run"], "CMD"),
        (&["attach", "--pid", "1", "--off-cpu-hz", "5"], "--profile-dir"),
        (&["attach", "--pid", "1", "--runq-waits"], "--profile-dir"),
        (
            &["attach", "--pid", "1", "--profile-dir", "/tmp", "--off-cpu-hz", "5", "--no-off-cpu"],
            "cannot be used",
        ),
        (&["attach", "--pid", "1", "--profile-dir", "/tmp", "--off-cpu-hz", "x"], "--off-cpu-hz"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, expected) in usage {
        let r = Agent::spawn(args).wait(Duration::from_secs(10));
        assert_eq!(r.code, 2, "usage errors exit 2: {args:?}: {}", r.stderr);
        assert!(r.stderr.contains(expected), "{args:?}: expected {expected:?} in {}", r.stderr);
    }
}

/// Bad input (exit 1): the target, the output paths, the command, the
/// request paths, the k6 inputs; nothing is attached and nothing panics.
#[test]
fn bad_input_fails_before_attaching_with_a_clear_error() {
    let Some(_serial) = privileged() else { return };
    let dir = std::env::temp_dir();
    let dir = dir.to_str().unwrap();
    let input: &[(&[&str], &str)] = &[
        (&["attach", "--pid", "4194305"], "no process with PID 4194305"),
        (&["attach", "--pid", "2"], "kernel thread"),
        (&["attach", "--pid", "1"], "--force"),
        (&["attach", "--pid", "0"], "not a process"),
        (&["attach", "--pid", "1", "--force", "--out", "/tmp"], "is a directory"),
        (&["attach", "--pid", "1", "--force", "--out", "/nonexistent/x.json"], "cannot write"),
        // procfs: /proc/version opens for writing as root, but the temporary
        // file the results go through cannot be created beside it.
        (&["attach", "--pid", "1", "--force", "--out", "/proc/version"], "temporary file"),
        (&["attach", "--pid", "1", "--force", "--phases-json", "/proc/version"], "temporary file"),
        (&["run", "--", "/nonexistent/server"], "no such executable"),
        (&["run", "--", "no-such-command-perf-agent"], "command not found"),
        (&["attach", "--wait-exec", ""], "1 to 255 bytes"),
        (&["attach", "--pid", "1", "--force", "--health-path", "health"], "--health-path"),
        (&["attach", "--pid", "1", "--force", "--k6-results", dir], "is a directory"),
        (&["attach", "--pid", "1", "--force", "--phases-json", dir], "is a directory"),
        (&["attach", "--pid", "1", "--force", "--k6", "/nonexistent/script.js"], "no such script"),
        (
            &["attach", "--pid", "1", "--force", "--profile-dir", dir, "--off-cpu-hz", "0"],
            "--off-cpu-hz 0",
        ),
    ];
    for (args, expected) in input {
        let r = Agent::spawn(args).wait(Duration::from_secs(20));
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("error") && r.stderr.contains(expected),
            "{args:?}: expected {expected:?} in {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
    }
}
