//! Manual phase markers, for load tools other than k6: `perf-agent mark
//! NAME` appends `<CLOCK_MONOTONIC ns> <NAME>` to a marks file that every
//! running agent follows; each mark starts a phase named NAME that lasts
//! until the next mark or the end of the run (`load::phases_from_marks`). (SIGUSR1 to an agent does the
//! same with the names `mark-1`, `mark-2`, ... — see `signals.rs`.)
//!
//! The command stamps the time itself, so the phase starts when `mark` ran,
//! not when the agent next looked. One `write` of a short line with
//! O_APPEND is atomic, so concurrent marks never interleave.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::PathBuf,
};

use anyhow::{Context as _, bail};

/// `$PERF_AGENT_MARKS`, else `/run/perf-agent/marks`.
pub fn marks_path() -> PathBuf {
    std::env::var_os("PERF_AGENT_MARKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/perf-agent/marks"))
}

/// A phase name as it may appear in a metric ID (`latency/p50@NAME`).
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if !ok {
        bail!("phase name {name:?}: use 1 to 64 of [A-Za-z0-9-_./]");
    }
    Ok(())
}

/// `perf-agent mark NAME`.
pub fn append_mark(name: &str, now_ns: u64) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let path = marks_path();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(format!("{now_ns} {name}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Parses marks lines; bad lines are skipped.
pub fn parse_marks(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let (t, name) = line.split_once(' ')?;
            check_name(name).ok()?;
            Some((name.to_string(), t.parse().ok()?))
        })
        .collect()
}

/// Follows the marks file from where it ended when the run started.
pub struct MarkReader {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl MarkReader {
    pub fn new() -> MarkReader {
        let path = marks_path();
        let offset = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        MarkReader { path, offset, partial: String::new() }
    }

    /// Marks appended since the last call.
    pub fn read_new(&mut self) -> Vec<(String, u64)> {
        let Ok(mut f) = fs::File::open(&self.path) else { return Vec::new() };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut text = std::mem::take(&mut self.partial);
        let Ok(n) = f.read_to_string(&mut text) else { return Vec::new() };
        self.offset += n as u64;
        // Keep an unfinished last line for next time.
        if !text.ends_with('\n') {
            let cut = text.rfind('\n').map_or(0, |i| i + 1);
            self.partial = text.split_off(cut);
        }
        parse_marks(&text)
    }
}

impl Default for MarkReader {
    fn default() -> Self {
        MarkReader::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_metric_ids() {
        check_name("steady").unwrap();
        check_name("scenario-2/ramp_up.1").unwrap();
        for bad in ["", "has space", "a@b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parse_skips_bad_lines() {
        let m = parse_marks("100 warmup\ngarbage\n200 steady\nx bad\n300 has space\n");
        assert_eq!(m, [("warmup".into(), 100), ("steady".into(), 200)]);
    }

    #[test]
    fn reader_follows_appends_and_waits_for_whole_lines() {
        let path = std::env::temp_dir().join(format!("perf-agent-marks-{}", std::process::id()));
        fs::write(&path, "1 before\n").unwrap();
        let mut r = MarkReader { path: path.clone(), offset: 9, partial: String::new() };
        assert!(r.read_new().is_empty(), "marks from before the run are not ours");
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"5 steady\n7 ramp").unwrap();
        assert_eq!(r.read_new(), [("steady".into(), 5)]);
        f.write_all(b"-down\n").unwrap();
        assert_eq!(r.read_new(), [("ramp-down".into(), 7)]);
        let _ = fs::remove_file(&path);
    }
}
