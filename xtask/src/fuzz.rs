//! The short fuzz run of `cargo xtask test`: every cargo-fuzz target of
//! `fuzz/` (a crate outside the workspace: it needs nightly and sanitizer
//! flags the rest must not see).

use std::{env, fs, process::Command};

use anyhow::{Context, Result, bail};

use crate::{ebpf_toolchain::Pin, in_ci, run, workspace_root};

/// A short fuzz run of every target: `PERF_AGENT_FUZZ_SECS` seconds each
/// (default 10; five targets today, plus the build), from the committed seeds in
/// `fuzz/corpus/<target>`; new inputs go to `fuzz/target/corpus/<target>`,
/// never into the committed corpus. `PERF_AGENT_FUZZ=0` skips it; without
/// cargo-fuzz it skips with a note (under CI it fails: setup installs it).
pub fn fuzz() -> Result<()> {
    if env::var("PERF_AGENT_FUZZ").is_ok_and(|v| v == "0") {
        println!("note: PERF_AGENT_FUZZ=0: fuzz run skipped");
        return Ok(());
    }
    // cargo-fuzz needs a nightly: the one pinned for the eBPF build.
    let pin = Pin::read(workspace_root()).map_err(anyhow::Error::msg)?;
    let nightly = format!("+{}", pin.require_installed().map_err(anyhow::Error::msg)?);
    let has_fuzz = Command::new("cargo")
        .args([nightly.as_str(), "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        if in_ci() {
            bail!("CI=true but cargo-fuzz is not installed (cargo xtask setup installs it)");
        }
        println!("note: cargo-fuzz not installed (cargo install cargo-fuzz): fuzz run skipped");
        return Ok(());
    }
    let secs: u64 =
        env::var("PERF_AGENT_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let root = workspace_root();
    for target in targets()? {
        let target = target.as_str();
        let scratch = root.join("fuzz/target/corpus").join(target);
        fs::create_dir_all(&scratch)?;
        println!("fuzzing {target} for {secs} s");
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root.join("fuzz"))
            .args([nightly.as_str(), "fuzz", "run", "-O", target])
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(target))
            // -verbosity=0: no line per new input (thousands, which buried
            // the test results in CI's log); a crash is reported all the same.
            .args(["--", &format!("-max_total_time={secs}"), "-timeout=10", "-rss_limit_mb=2048"])
            .arg("-verbosity=0")
            // The workspace's cargo settings are not the fuzz crate's.
            .env_remove("CARGO_TARGET_DIR");
        if run(&mut cmd).is_err() {
            let artifacts = root.join("fuzz/artifacts").join(target);
            if fs::read_dir(&artifacts).is_ok_and(|mut d| d.next().is_some()) {
                bail!("fuzz target {target} failed: the input is in {}", artifacts.display());
            }
            bail!("fuzz target {target} did not build or run (see cargo's output above)");
        }
    }
    Ok(())
}

/// The fuzz targets: the `[[bin]]` names of `fuzz/Cargo.toml`.
fn targets() -> Result<Vec<String>> {
    let path = workspace_root().join("fuzz/Cargo.toml");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let names = bin_names(&text);
    if names.is_empty() {
        bail!("{} declares no `[[bin]]` fuzz target", path.display());
    }
    Ok(names)
}

/// The `name = "…"` of every `[[bin]]` table of a Cargo.toml.
fn bin_names(manifest: &str) -> Vec<String> {
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            names.push(value.trim().trim_matches('"').to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_names_of_a_manifest() {
        let manifest = "[package]\nname = \"perf-agent-fuzz\"\n\n[[bin]]\nname = \"k6_plan\"\n\
                        path = \"fuzz_targets/k6_plan.rs\"\n\n[dependencies]\nname = \"x\"\n\
                        [[bin]]\npath = \"b.rs\"\nname=\"btf\"\n";
        assert_eq!(bin_names(manifest), ["k6_plan", "btf"]);
    }

    #[test]
    fn the_committed_manifest_names_every_target_file() {
        let dir = workspace_root().join("fuzz/fuzz_targets");
        let mut files: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| Some(e.ok()?.path().file_stem()?.to_str()?.to_string()))
            .collect();
        files.sort();
        let mut names = targets().unwrap();
        names.sort();
        assert_eq!(names, files);
    }
}
