//! Profiles of targets whose images are unusual: a stripped executable
//! (no symbol table: its frames keep their places as `module+0xADDRESS`,
//! which the unstripped twin's symbols resolve to the fixture's known
//! ratio), the same executable named from its debug file (`--debug-dir`,
//! found by build-id) and a target that execs another program during the
//! run (the functions of both images are named). Shared libraries, `dlopen`
//! and deep recursion: `tests/profile.rs`.

mod common;
mod profile_common;

use std::{collections::HashMap, path::Path, process::Command};

use common::{bmf_value, privileged};
use profile_common::{Folded, assert_three_to_one, cc, profile_dir, profile_run, profile_run_with};

/// Text symbols of `binary` from binutils' `nm`, sorted by address.
fn nm_text_symbols(binary: &Path) -> Vec<(u64, String)> {
    let out = Command::new("nm").arg(binary).output().expect("running nm (binutils)");
    assert!(out.status.success(), "nm {}", binary.display());
    let mut symbols: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            if !matches!(kind, "T" | "t") {
                return None;
            }
            Some((u64::from_str_radix(addr, 16).ok()?, name.into()))
        })
        .collect::<Vec<_>>();
    symbols.sort();
    symbols
}

/// The function of `symbols` holding address `at`.
fn function_at(symbols: &[(u64, String)], at: u64) -> Option<&str> {
    let i = symbols.partition_point(|(a, _)| *a <= at).checked_sub(1)?;
    Some(&symbols[i].1)
}

/// The stripped C fixture (3:1): every frame of its own image is
/// `profile_target_stripped+0xADDRESS`, none dropped; resolved with the
/// unstripped build's symbols (`strip` moves no code), its two leaves keep
/// the 3:1 ratio within ±3 points and ≥ 95 % of the samples pass through
/// `main`, as in `c_without_frame_pointers_three_to_one`.
#[test]
fn a_stripped_binary_keeps_its_frames_as_offsets() {
    let Some(_serial) = privileged() else { return };
    let build = profile_dir("stripped-build");
    let unstripped =
        cc(&build, "profile_target", &["profile_target.c"], &["-O2", "-fomit-frame-pointer"], &[]);
    let stripped = build.join("profile_target_stripped");
    std::fs::copy(&unstripped, &stripped).unwrap();
    let status = Command::new("strip").arg("--strip-all").arg(&stripped).status();
    assert!(status.expect("running strip (binutils)").success());
    let dir = profile_dir("stripped");
    let (bmf, _) = profile_run(&dir, "499", "6", &[stripped.to_str().unwrap(), "3,1"]);
    let folded = Folded::read(&dir.join("run.cpu.folded"));
    let total = folded.total();
    assert_eq!(total as f64, bmf_value(&bmf, "profile/samples", "count"));
    assert!(total >= 1500, "only {total} samples in 6 s at 499 Hz");

    let symbols = nm_text_symbols(&unstripped);
    let prefix = "profile_target_stripped+0x";
    let function = |frame: &str| -> Option<&str> {
        let at = u64::from_str_radix(frame.strip_prefix(prefix)?, 16).ok()?;
        function_at(&symbols, at)
    };
    let mut leaves: HashMap<&str, u64> = HashMap::new();
    let mut through_main = 0;
    for (frames, count) in &folded.stacks {
        assert!(
            !frames.iter().any(|f| f == "main" || f.starts_with("leaf_")),
            "a stripped binary has no names to give: {frames:?}"
        );
        if let Some(leaf) = function(frames.last().unwrap()) {
            *leaves.entry(leaf).or_default() += count;
        }
        if frames.iter().any(|f| function(f) == Some("main")) {
            through_main += count;
        }
    }
    let (a, b) = (leaves.get("leaf_a").copied(), leaves.get("leaf_b").copied());
    assert_three_to_one(a.unwrap_or(0), b.unwrap_or(0), &leaves);
    assert!(
        through_main as f64 >= 0.95 * total as f64,
        "{through_main} of {total} samples unwound to main: {:#?}",
        folded.stacks
    );
}

/// The GNU build-id of `binary`, hex, from binutils' `readelf -n`.
fn readelf_build_id(binary: &Path) -> String {
    let out = Command::new("readelf").arg("-n").arg(binary).output().expect("running readelf");
    assert!(out.status.success(), "readelf -n {}", binary.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.lines().find_map(|l| l.trim().strip_prefix("Build ID: "));
    id.unwrap_or_else(|| panic!("no build-id in {}:\n{text}", binary.display())).to_string()
}

/// The stripped 3:1 fixture again, with its debug information kept apart
/// the way distributions ship it (`objcopy --only-keep-debug`, installed
/// as `DIR/.build-id/ab/cdef….debug` by the build-id `readelf` reports):
/// with `--debug-dir DIR` every frame of the stripped image is named, the
/// leaves keep 3:1 within ±3 points and ≥ 95 % of the samples reach
/// `main`; without it (the default directory has no such file) none is.
#[test]
fn a_stripped_binary_is_named_from_its_debug_file() {
    let Some(_serial) = privileged() else { return };
    let build = profile_dir("debugfile-build");
    let unstripped = cc(
        &build,
        "profile_target",
        &["profile_target.c"],
        &["-O2", "-g", "-fomit-frame-pointer"],
        &[],
    );
    let id = readelf_build_id(&unstripped);
    let debug_dir = build.join("debug");
    let debug_file = debug_dir.join(".build-id").join(&id[..2]).join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(debug_file.parent().unwrap()).unwrap();
    let status =
        Command::new("objcopy").arg("--only-keep-debug").arg(&unstripped).arg(&debug_file).status();
    assert!(status.expect("running objcopy (binutils)").success());
    let stripped = build.join("profile_target_stripped");
    std::fs::copy(&unstripped, &stripped).unwrap();
    let status = Command::new("strip").arg("--strip-all").arg(&stripped).status();
    assert!(status.expect("running strip (binutils)").success());
    assert_eq!(readelf_build_id(&stripped), id, "strip keeps the build-id note");
    let cmd = [stripped.to_str().unwrap(), "3,1"];

    let dir = profile_dir("debugfile");
    let debug_arg = ["--debug-dir", debug_dir.to_str().unwrap()];
    let (bmf, _) = profile_run_with(&dir, "499", "4", &debug_arg, &cmd);
    let folded = Folded::read(&dir.join("run.cpu.folded"));
    let total = folded.total();
    assert_eq!(total as f64, bmf_value(&bmf, "profile/samples", "count"));
    let leaves = folded.leaf_user_counts();
    let (a, b) = (leaves.get("leaf_a").copied(), leaves.get("leaf_b").copied());
    assert_three_to_one(a.unwrap_or(0), b.unwrap_or(0), &leaves);
    let through_main = folded.with_frame(|f| f == "main");
    assert!(
        through_main as f64 >= 0.95 * total as f64,
        "{through_main} of {total} samples unwound to main: {:#?}",
        folded.stacks
    );
    assert!(
        !folded
            .stacks
            .iter()
            .flat_map(|(f, _)| f)
            .any(|f| f.starts_with("profile_target_stripped+")),
        "a frame of the stripped image left unnamed: {:#?}",
        folded.stacks
    );

    // The control: the default --debug-dir has no file of this build-id.
    let dir = profile_dir("debugfile-none");
    profile_run(&dir, "99", "2", &cmd);
    let folded = Folded::read(&dir.join("run.cpu.folded"));
    assert!(
        !folded.stacks.iter().flat_map(|(f, _)| f).any(|f| f == "main" || f.starts_with("leaf_")),
        "named without its debug file: {:#?}",
        folded.stacks
    );
}

/// A target that burns 1.5 s in `burn_before_exec`, then execs the 3:1
/// fixture (same pid): both images' functions are named, each with about
/// its share of the run (1.5 of 4 s; the rest in the fixture), and almost
/// no sample is left in no known mapping.
#[test]
fn an_exec_during_the_run_is_followed() {
    let Some(_serial) = privileged() else { return };
    let build = profile_dir("exec-build");
    // Both at the same fixed address (not PIE): after the exec the new
    // image's code lies where the old one's was, so only the exec itself
    // (not an unplaced address) can tell the profiler to read the mappings
    // again.
    let before = cc(&build, "exec_after", &["exec_after.c"], &["-O2", "-no-pie"], &[]);
    let after = cc(&build, "profile_target", &["profile_target.c"], &["-O2", "-no-pie"], &[]);
    let dir = profile_dir("exec");
    let cmd = [before.to_str().unwrap(), "1500", after.to_str().unwrap(), "3,1"];
    let (bmf, _) = profile_run(&dir, "99", "4", &cmd);
    let folded = Folded::read(&dir.join("run.cpu.folded"));
    let total = folded.total();
    assert_eq!(total as f64, bmf_value(&bmf, "profile/samples", "count"));
    let leaves = folded.leaf_user_counts();
    let count = |f: &str| leaves.get(f).copied().unwrap_or(0) as f64;
    let (burn, after_exec) = (count("burn_before_exec"), count("leaf_a") + count("leaf_b"));
    let share = burn / (burn + after_exec);
    // 1.5 s of ~4: 0.375, give or take the run's start-up and the exec.
    assert!((0.25..0.5).contains(&share), "before the exec {burn}, after {after_exec}: {leaves:?}");
    let unknown = folded.with_frame(|f| f.starts_with("[unknown]"));
    assert!(unknown * 20 <= total, "{unknown} of {total} samples in no known mapping");
    assert!(
        folded.with_frame(|f| f == "main") as f64 >= 0.9 * total as f64,
        "{:#?}",
        folded.stacks
    );
}
