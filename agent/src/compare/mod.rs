//! `perf-agent compare BASE NEW`: a release gate that needs no Bencher
//! server. Both sides are BMF files (one run each, or several merged); every
//! metric present on both is judged pass / warn / fail by REQ-OBS-001's
//! thresholds (or a thresholds file), with Welch's t-test deciding
//! significance when each side has at least 3 runs. The exit status says the
//! verdict (0, [`exit::COMPARE_WARN`], [`exit::COMPARE_FAIL`]).
//!
//! Modules, in dependency order: `stats` (Welch's t-test), `samples`
//! (reading and merging BMF runs), `thresholds` (categories, globs, files),
//! `verdict` (judging), `render` (terminal, Markdown, release notes), `html`
//! (`--report`, through `report::html`).

pub mod html;
pub mod render;
pub mod samples;
pub mod stats;
pub mod thresholds;
pub mod verdict;

use std::{fs, path::PathBuf};

use anyhow::{Context as _, bail};

use self::{
    render::Labels,
    samples::RunSet,
    thresholds::Thresholds,
    verdict::{Comparison, Level},
};
use crate::{outcome::exit, output::check_writable};

#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// BMF files or directories of them.
    pub base: Vec<PathBuf>,
    pub new: Vec<PathBuf>,
    pub thresholds: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub release_notes: Option<PathBuf>,
    /// `--report FILE.html`.
    pub report: Option<PathBuf>,
    pub base_label: Option<String>,
    pub new_label: Option<String>,
}

/// Runs the comparison, prints the table, writes the requested files and
/// returns the exit status of the verdict.
pub fn run(opts: &CompareOptions) -> anyhow::Result<u8> {
    let outputs = [
        ("--markdown", &opts.markdown),
        ("--release-notes", &opts.release_notes),
        ("--report", &opts.report),
    ];
    for (flag, path) in outputs {
        if let Some(path) = path {
            check_writable(flag, path)?;
        }
    }
    let thresholds = match &opts.thresholds {
        Some(path) => Thresholds::load(path)?,
        None => Thresholds::default(),
    };
    let base = RunSet::read(&opts.base, "BASE")?;
    let new = RunSet::read(&opts.new, "NEW")?;
    let cmp = Comparison::judge(&base, &new, &thresholds);
    if cmp.rows.is_empty() {
        bail!(
            "BASE ({}) and NEW ({}) have no metric in common: are they BMF files of the same \
             kind of run?",
            describe(&base),
            describe(&new)
        );
    }
    let labels = Labels {
        base: opts.base_label.clone().unwrap_or_else(|| default_label(&opts.base, &base, "BASE")),
        new: opts.new_label.clone().unwrap_or_else(|| default_label(&opts.new, &new, "NEW")),
    };
    print!("{}", render::terminal(&cmp, &labels));
    if let Some(path) = &opts.markdown {
        write(path, &render::markdown(&cmp, &labels))?;
    }
    if let Some(path) = &opts.release_notes {
        write(path, &render::release_notes(&cmp, &labels))?;
    }
    if let Some(path) = &opts.report {
        write(path, &html::render(&cmp, &labels))?;
    }
    Ok(exit_code(cmp.overall()))
}

pub fn exit_code(level: Level) -> u8 {
    match level {
        Level::Fail => exit::COMPARE_FAIL,
        Level::Warn => exit::COMPARE_WARN,
        Level::Pass | Level::NotJudged => exit::OK,
    }
}

/// The file or directory name, with the number of runs when it is not one.
fn default_label(paths: &[PathBuf], set: &RunSet, side: &str) -> String {
    let name = match paths {
        [one] => one.file_name().map(|n| n.to_string_lossy().into_owned()),
        _ => None,
    }
    .unwrap_or_else(|| side.to_string());
    if set.runs() == 1 { name } else { format!("{name} ({} runs)", set.runs()) }
}

fn describe(set: &RunSet) -> String {
    format!("{} runs, {} metrics", set.runs(), set.metrics.len())
}

/// Appends nothing: the file is replaced (GitHub's step summary is a file
/// per step, so `--markdown "$GITHUB_STEP_SUMMARY"` works as is).
fn write(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_do_not_collide_with_the_runs() {
        assert_eq!(exit_code(Level::Pass), 0);
        assert_eq!(exit_code(Level::NotJudged), 0);
        assert_eq!(exit_code(Level::Warn), 10);
        assert_eq!(exit_code(Level::Fail), 11);
        for used in [exit::ERROR, 2, exit::TARGET_EXITED, exit::INTERRUPTED, exit::STARTUP_FAILED] {
            assert!(used != exit::COMPARE_WARN && used != exit::COMPARE_FAIL);
        }
    }

    #[test]
    fn labels_name_the_input() {
        let mut set = RunSet::default();
        set.add_run("a".into(), Default::default());
        assert_eq!(default_label(&["out/v1.2.json".into()], &set, "BASE"), "v1.2.json");
        set.add_run("b".into(), Default::default());
        assert_eq!(default_label(&["runs/".into()], &set, "BASE"), "runs (2 runs)");
        assert_eq!(default_label(&["a".into(), "b".into()], &set, "NEW"), "NEW (2 runs)");
    }

    #[test]
    fn output_paths_are_checked_first() {
        let e = check_writable("--markdown", &std::env::temp_dir()).unwrap_err().to_string();
        assert!(e.contains("--markdown") && e.contains("is a directory"), "{e}");
        let e =
            check_writable("--release-notes", "/nonexistent-dir/notes.md".as_ref()).unwrap_err();
        assert!(e.to_string().contains("cannot write there"), "{e}");
        check_writable("--markdown", "notes.md".as_ref()).unwrap();
    }
}
