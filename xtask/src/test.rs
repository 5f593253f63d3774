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
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
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

/// Test counts summed over cargo's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    ok: bool,
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
}
