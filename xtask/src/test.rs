//! `cargo xtask test`: the whole test suite, as CI runs it.
//!
//! The integration tests in `agent/tests/` run the real agent against the
//! fixture processes, so they need both built in release first and are told
//! where through the environment (`PERF_AGENT_BIN`, `PERF_AGENT_FIXTURES_DIR`)
//! rather than guessing target directories. They run one at a time: each loads
//! eBPF programs and measures CPU, and parallel tests would disturb each other.
//!
//! Before them run the style gates ([`crate::gates`]: fmt and clippy), after
//! them a short fuzz run ([`crate::fuzz`]). Every step runs even when an
//! earlier one failed (each result matters on its own); the command fails if
//! any did.

use std::{env, process::Command};

use anyhow::{Result, bail};

use crate::{Profile, agent_bin, bin_dir, build, cargo, in_ci, is_root};

/// Runs `cargo test --release --no-fail-fast [cargo_args] -- --test-threads=1 [test_args]`,
/// where `args` is `cargo_args [-- test_args]`.
pub fn test(args: &[String]) -> Result<()> {
    let gates = run_gates();
    build(Profile::Release)?;

    if !is_root() && !in_ci() {
        println!("note: not running as root: privileged tests will skip");
    }

    let (cargo_args, test_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut cmd = cargo();
    // --no-fail-fast: one failing test binary must not hide the others'
    // results. No --workspace: the default-members are everything that builds
    // for the host (agent-ebpf only builds for the BPF target).
    cmd.args(["test", "--release", "--no-fail-fast"])
        .args(cargo_args)
        .args(["--", "--test-threads=1"])
        .args(test_args)
        .env("PERF_AGENT_BIN", agent_bin(Profile::Release))
        .env("PERF_AGENT_FIXTURES_DIR", bin_dir(Profile::Release));
    let tests = run_counting(&mut cmd);
    let fuzz = crate::fuzz::fuzz();
    // One closing line over every test binary, printed last so that CI's log
    // ends on the whole count rather than on the last (maybe empty) binary.
    let totals = tests?;
    // CI shows the end of the log: the failures are repeated there, each with
    // its panic message, so that nobody has to dig for them above the fuzz run.
    if !totals.failures.is_empty() {
        println!("failed tests ({}):", totals.failures.len());
        for failure in &totals.failures {
            println!("{failure}");
        }
    }
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !totals.ok && totals.failures.is_empty() {
        bail!("a test binary did not finish (killed, or it crashed): see cargo's error above");
    }
    if !totals.ok {
        bail!("tests failed (see cargo test's output above)");
    }
    fuzz?;
    gates
}

/// The style gates, unless `PERF_AGENT_GATES=0` (for quick partial runs;
/// refused under CI, where the gates are the point).
fn run_gates() -> Result<()> {
    if env::var("PERF_AGENT_GATES").is_ok_and(|v| v == "0") {
        if in_ci() {
            bail!("PERF_AGENT_GATES=0 under CI: the fmt and clippy gates cannot be skipped there");
        }
        println!("note: PERF_AGENT_GATES=0: fmt and clippy gates skipped");
        return Ok(());
    }
    let result = crate::gates::gates();
    if let Err(e) = &result {
        // Said now and again at the end: the tests' output comes between.
        println!(
            "{e:#}
(the tests run anyway; the command will fail at the end)"
        );
    }
    result
}

/// Test counts summed over cargo's `test result:` lines, and the failures.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    ok: bool,
    failures: Vec<Failure>,
    /// The failure whose `---- name stdout ----` block is being read.
    reading: Option<usize>,
}

/// One failed test: its name and the lines of its panic message.
#[derive(Debug, PartialEq, Eq)]
struct Failure {
    name: String,
    panic: Vec<String>,
}

/// At most this many lines of a panic message are kept: enough for an
/// assertion's left and right values, not a whole captured stdout.
const PANIC_LINES: usize = 12;

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "  {}", self.name)?;
        for line in &self.panic {
            write!(f, "\n      {line}")?;
        }
        Ok(())
    }
}

/// Follows the libtest output that names failures: `test NAME ... FAILED`,
/// then at the end of the binary `---- NAME stdout ----` and the test's
/// captured output, whose panic message starts at `panicked at`.
fn add_failure_line(totals: &mut Totals, line: &str) {
    if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
        totals.failures.push(Failure { name: name.to_owned(), panic: Vec::new() });
        return;
    }
    if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
        totals.reading = totals.failures.iter().rposition(|f| f.name == name);
        return;
    }
    if line == "failures:" || line.starts_with("test result: ") {
        totals.reading = None;
        return;
    }
    let Some(failure) = totals.reading.and_then(|i| totals.failures.get_mut(i)) else { return };
    if line == "stack backtrace:" {
        // The message is over; the frames are in the log above.
        totals.reading = None;
        return;
    }
    let started = !failure.panic.is_empty();
    if (started || line.contains("panicked at"))
        && failure.panic.len() < PANIC_LINES
        && !line.is_empty()
        && !line.starts_with("note: run with `RUST_BACKTRACE")
    {
        failure.panic.push(line.to_owned());
    }
}

/// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
fn add_result_line(totals: &mut Totals, line: &str) {
    let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(label), Some(n)) = (words.next(), words.next()) else { continue };
        let Ok(n) = n.parse::<u64>() else { continue };
        match label {
            "passed" => totals.passed += n,
            "failed" => totals.failed += n,
            "ignored" => totals.ignored += n,
            _ => {}
        }
    }
}

/// Runs cargo test, passing its output through as it comes, and sums the
/// results of every test binary.
fn run_counting(cmd: &mut Command) -> Result<Totals> {
    use std::io::{BufRead as _, BufReader};
    println!("$ {}", crate::describe(cmd));
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        add_result_line(&mut totals, &line);
        add_failure_line(&mut totals, &line);
    }
    totals.ok = child.wait()?.success() && totals.failed == 0;
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cargo_result_lines() {
        let mut t = Totals::default();
        add_result_line(
            &mut t,
            "test result: ok. 73 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.16s",
        );
        add_result_line(
            &mut t,
            "test result: FAILED. 4 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out",
        );
        add_result_line(&mut t, "running 5 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (77, 1, 1));
    }

    #[test]
    fn names_each_failure_with_its_panic_message() {
        let log = "running 3 tests
test serve::a_passing_test ... ok
test fds_do_not_leak ... FAILED
test other_failure ... FAILED

failures:

---- fds_do_not_leak stdout ----
agent started
thread 'fds_do_not_leak' panicked at agent/tests/serve.rs:10:5:
assertion `left == right` failed
  left: 47
 right: 46
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace

---- other_failure stdout ----
thread 'other_failure' panicked at agent/tests/x.rs:1:1:
boom
stack backtrace:
   0: __rustc::rust_begin_unwind

failures:
    fds_do_not_leak
    other_failure

test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        let mut t = Totals::default();
        for line in log.lines() {
            add_result_line(&mut t, line);
            add_failure_line(&mut t, line);
        }
        assert_eq!(t.failed, 2);
        let shown: Vec<String> = t.failures.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "  fds_do_not_leak\n      thread 'fds_do_not_leak' panicked at agent/tests/serve.rs:10:5:\n      assertion `left == right` failed\n        left: 47\n       right: 46",
                "  other_failure\n      thread 'other_failure' panicked at agent/tests/x.rs:1:1:\n      boom",
            ]
        );
    }
}
