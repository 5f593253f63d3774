//! `cargo xtask test`: the whole test suite, as CI runs it.
//!
//! The integration tests in `agent/tests/` run the real agent against the
//! fixture processes, so they need both built in release first and are told
//! where through the environment (`PERF_AGENT_BIN`, `PERF_AGENT_FIXTURES_DIR`)
//! rather than guessing target directories. They run one at a time: each loads
//! eBPF programs and measures CPU, and parallel tests would disturb each other.

use std::env;

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
    if run(&mut cmd).is_err() {
        bail!("tests failed (see cargo test's output above)");
    }
    Ok(())
}
