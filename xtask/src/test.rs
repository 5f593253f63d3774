//! `cargo xtask test`: the whole test suite, as CI runs it.
//!
//! The integration tests in `agent/tests/` run the real agent against the
//! fixture processes, so they need both built in release first and are told
//! where through the environment (`PERF_AGENT_BIN`, `PERF_AGENT_FIXTURES_DIR`)
//! rather than guessing target directories. They run one at a time: each loads
//! eBPF programs and measures CPU, and parallel tests would disturb each other.

use std::{env, process::Command};

use anyhow::{Result, bail};

use crate::{Profile, agent_bin, bin_dir, build, cargo, is_root, run};

/// Runs `cargo test --release --no-fail-fast [cargo_args] -- --test-threads=1 [test_args]`,
/// where `args` is `cargo_args [-- test_args]`.
pub fn test(args: &[String]) -> Result<()> {
    build(Profile::Release)?;

    if !is_root() && env::var_os("CI").is_none() {
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
    // The fuzz run goes on even when a test failed: both results matter.
    let fuzz = fuzz();
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
    fuzz
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

/// The fuzz targets of `fuzz/` (a cargo-fuzz crate outside the workspace).
const FUZZ_TARGETS: [&str; 5] = ["k6_results", "k6_plan", "procfs", "tracefs_format", "btf"];

/// A short fuzz run of every target: `PERF_AGENT_FUZZ_SECS` seconds each
/// (default 10, so 50 s in all, plus the build), from the committed seeds in
/// `fuzz/corpus/<target>`; new inputs go to `fuzz/target/corpus/<target>`,
/// never into the committed corpus. `PERF_AGENT_FUZZ=0` skips it; without
/// cargo-fuzz it skips with a note (under CI it fails: setup installs it).
fn fuzz() -> Result<()> {
    if env::var("PERF_AGENT_FUZZ").is_ok_and(|v| v == "0") {
        println!("note: PERF_AGENT_FUZZ=0: fuzz run skipped");
        return Ok(());
    }
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        if env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            bail!("CI=true but cargo-fuzz is not installed (cargo xtask setup installs it)");
        }
        println!("note: cargo-fuzz not installed (cargo install cargo-fuzz): fuzz run skipped");
        return Ok(());
    }
    let secs: u64 =
        env::var("PERF_AGENT_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let root = crate::workspace_root();
    for target in FUZZ_TARGETS {
        let scratch = root.join("fuzz/target/corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        println!("fuzzing {target} for {secs} s");
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root.join("fuzz"))
            .args(["+nightly", "fuzz", "run", "-O", target])
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(target))
            .args(["--", &format!("-max_total_time={secs}"), "-timeout=10", "-rss_limit_mb=2048"])
            // The workspace's cargo settings are not the fuzz crate's.
            .env_remove("CARGO_TARGET_DIR");
        if run(&mut cmd).is_err() {
            let artifacts = root.join("fuzz/artifacts").join(target);
            if std::fs::read_dir(&artifacts).is_ok_and(|mut d| d.next().is_some()) {
                bail!("fuzz target {target} failed: the input is in {}", artifacts.display());
            }
            bail!("fuzz target {target} did not build or run (see cargo's output above)");
        }
    }
    Ok(())
}
