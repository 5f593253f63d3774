//! Profiling runs and reading profiles back, for `tests/profile.rs`,
//! `tests/profile_images.rs` and `tests/profile_offcpu.rs`: `run
//! --profile-dir` of a command, C fixtures built with `cc`, folded stacks
//! parsed, SVG parsed as XML, pprof decoded by Google's own protobuf
//! (`pprof.rs`).
#![allow(dead_code)]

mod pprof;

#[allow(unused_imports)]
pub use pprof::{Pprof, check_every_pprof};

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::common::{Agent, out_path, read_bmf};

/// How long one profiled run may take to end.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `perf-agent run --profile-dir DIR --profile-hz HZ --duration SECS
/// -- CMD...`; checks every pprof it wrote with the independent decoder;
/// returns the BMF and the agent's stdout.
pub fn profile_run(dir: &Path, hz: &str, secs: &str, cmd: &[&str]) -> (serde_json::Value, String) {
    profile_run_with(dir, hz, secs, &[], cmd)
}

/// [`profile_run`] with more of the agent's options (`agent_args`).
pub fn profile_run_with(
    dir: &Path,
    hz: &str,
    secs: &str,
    agent_args: &[&str],
    cmd: &[&str],
) -> (serde_json::Value, String) {
    let out = out_path(&format!("profile-{}", dir.file_name().unwrap().to_string_lossy()));
    let mut args = vec![
        "run",
        "--profile-dir",
        dir.to_str().unwrap(),
        "--profile-hz",
        hz,
        "--duration",
        secs,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(agent_args);
    args.push("--");
    args.extend_from_slice(cmd);
    let r = Agent::spawn(&args).wait(RUN_TIMEOUT);
    assert_eq!(r.code, 0, "perf-agent failed:\n{}\n{}", r.stdout, r.stderr);
    // Every ring record was read back whole (a sample's length is its head
    // plus the stack pages it says it holds).
    assert!(!r.stdout.contains("records unreadable"), "{}", r.stdout);
    assert!(check_every_pprof(dir) >= 2, "no pprof files in {}", dir.display());
    (read_bmf(&out), r.stdout)
}

/// `cc` builds `sources` into `dir/name` with `flags` (libraries last).
pub fn cc(dir: &Path, name: &str, sources: &[&str], flags: &[&str], libs: &[&str]) -> PathBuf {
    let c_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/c");
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(flags)
        .args(sources.iter().map(|s| c_dir.join(s)))
        .arg("-o")
        .arg(&out)
        .args(libs)
        .status()
        .unwrap_or_else(|e| panic!("running cc (install a C compiler, e.g. gcc): {e}"));
    assert!(status.success(), "cc {flags:?} {sources:?} failed");
    out
}

/// A fresh, empty profile directory.
pub fn profile_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("perf-agent-tests")
        .join(format!("profile-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Folded stacks read back: each line `frames COUNT`, frames outermost first.
pub struct Folded {
    pub stacks: Vec<(Vec<String>, u64)>,
}

impl Folded {
    pub fn read(path: &Path) -> Folded {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let stacks = text
            .lines()
            .map(|line| {
                let (stack, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
                let count: u64 = count.parse().unwrap_or_else(|_| panic!("count in {line:?}"));
                assert!(count > 0 && !stack.is_empty(), "{line:?}");
                (stack.split(';').map(str::to_string).collect(), count)
            })
            .collect();
        Folded { stacks }
    }

    pub fn total(&self) -> u64 {
        self.stacks.iter().map(|s| s.1).sum()
    }

    /// Samples per leaf function.
    pub fn self_counts(&self) -> HashMap<&str, u64> {
        let mut m = HashMap::new();
        for (frames, n) in &self.stacks {
            *m.entry(frames.last().unwrap().as_str()).or_default() += n;
        }
        m
    }

    /// Samples whose stack holds a frame satisfying `f`.
    pub fn with_frame(&self, f: impl Fn(&str) -> bool) -> u64 {
        self.stacks.iter().filter(|(fr, _)| fr.iter().any(|x| f(x))).map(|s| s.1).sum()
    }

    /// The five leaf functions with most samples, user-space only.
    pub fn top_five(&self) -> Vec<String> {
        let mut v: Vec<(u64, String)> =
            self.leaf_user_counts().into_iter().map(|(k, n)| (n, k)).collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.into_iter().take(5).map(|(_, k)| k).collect()
    }

    /// Samples per innermost user-space frame (kernel frames `_[k]` skipped).
    pub fn leaf_user_counts(&self) -> HashMap<String, u64> {
        let mut m = HashMap::new();
        for (frames, n) in &self.stacks {
            if let Some(f) = frames.iter().rev().find(|f| !f.ends_with("_[k]")) {
                *m.entry(f.clone()).or_default() += n;
            }
        }
        m
    }
}

/// The SVG parses as XML to its end and names each of `functions`.
pub fn check_svg(path: &Path, functions: &[&str]) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut elements = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(_) | quick_xml::events::Event::Empty(_)) => {
                elements += 1
            }
            Ok(_) => {}
            Err(e) => panic!("{} is not well-formed XML: {e}", path.display()),
        }
    }
    assert!(elements > 10 && text.contains("<svg"), "{}: {elements} elements", path.display());
    for f in functions {
        assert!(text.contains(f), "{} does not name {f}", path.display());
    }
}

/// The 3:1 fixture's two leaves, `a` and `b` samples: `a`'s share within
/// ±3 points of 75 % (`leaves`: what to show when it is not).
pub fn assert_three_to_one(a: u64, b: u64, leaves: &dyn std::fmt::Debug) {
    let share_a = a as f64 * 100.0 / (a + b) as f64;
    assert!(
        (share_a - 75.0).abs() <= 3.0,
        "leaf_a {share_a:.1} % of the two leaves, expected 75 ± 3 ({a} vs {b}); leaves {leaves:?}"
    );
}
