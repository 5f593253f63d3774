//! One side of a comparison: BMF files read and merged, one value per run
//! for each (benchmark, measure).
//!
//! A side is a list of files, or of directories whose `*.json` files are
//! read (not recursively, in name order). Each file is one run; a value that
//! `run --repeat` wrote as the median of several runs still counts as one
//! sample (compare the per-run files it writes beside it for the t-test).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// A metric as BMF names it: the benchmark (perf-agent's metric id, with
/// `@phase`) and the measure slug.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricKey {
    pub id: String,
    pub measure: String,
}

/// Every run of one side, merged.
#[derive(Clone, Debug, Default)]
pub struct RunSet {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// One value per run that had the metric, in file order.
    pub metrics: BTreeMap<MetricKey, Vec<f64>>,
}

impl RunSet {
    /// Reads every file of `paths` (directories expanded); `side` names the
    /// side in errors ("BASE", "NEW").
    pub fn read(paths: &[PathBuf], side: &str) -> anyhow::Result<RunSet> {
        if paths.is_empty() {
            bail!("{side}: no BMF file given");
        }
        let mut set = RunSet::default();
        for path in paths {
            for file in expand(path, side)? {
                let text = fs::read_to_string(&file)
                    .with_context(|| format!("{side}: cannot read {}", file.display()))?;
                let run = parse_bmf(&text)
                    .with_context(|| format!("{side}: {} is not a BMF file", file.display()))?;
                set.add_run(file, run);
            }
        }
        Ok(set)
    }

    /// Adds one run's values.
    pub fn add_run(&mut self, file: PathBuf, run: BTreeMap<MetricKey, f64>) {
        self.files.push(file);
        for (key, value) in run {
            self.metrics.entry(key).or_default().push(value);
        }
    }

    pub fn runs(&self) -> usize {
        self.files.len()
    }
}

/// A file as itself; a directory as its `*.json` files in name order.
fn expand(path: &Path, side: &str) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        if !path.exists() {
            bail!("{side}: {} does not exist", path.display());
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)
        .with_context(|| format!("{side}: cannot list {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{side}: directory {} holds no *.json file", path.display());
    }
    Ok(files)
}

/// `{ "<benchmark>": { "<measure>": { "value": n, ... } } }` → values.
/// `lower_value`/`upper_value` are not samples and are ignored.
pub fn parse_bmf(text: &str) -> anyhow::Result<BTreeMap<MetricKey, f64>> {
    const SHAPE: &str = r#"expected {"<benchmark>": {"<measure>": {"value": <number>}}}"#;
    let doc: serde_json::Value = serde_json::from_str(text).context("invalid JSON")?;
    let Some(benchmarks) = doc.as_object() else {
        bail!("the top level is not an object ({SHAPE})")
    };
    let mut out = BTreeMap::new();
    for (id, measures) in benchmarks {
        let Some(measures) = measures.as_object() else {
            bail!("benchmark `{id}` is not an object of measures ({SHAPE})")
        };
        for (measure, metric) in measures {
            let value = metric.get("value").and_then(serde_json::Value::as_f64);
            let Some(value) = value.filter(|v| v.is_finite()) else {
                bail!("benchmark `{id}`, measure `{measure}` has no numeric `value` ({SHAPE})")
            };
            out.insert(MetricKey { id: id.clone(), measure: measure.clone() }, value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, measure: &str) -> MetricKey {
        MetricKey { id: id.into(), measure: measure.into() }
    }

    #[test]
    fn parses_values_and_ignores_bounds() {
        let run = parse_bmf(
            r#"{"latency/p50": {"latency": {"value": 1000.5, "lower_value": 900, "upper_value": 1100}},
                "memory/peak_rss": {"memory": {"value": 2621440}}}"#,
        )
        .unwrap();
        assert_eq!(run[&key("latency/p50", "latency")], 1000.5);
        assert_eq!(run[&key("memory/peak_rss", "memory")], 2_621_440.0);
        assert_eq!(run.len(), 2);
    }

    #[test]
    fn bad_shapes_are_named() {
        for (text, needle) in [
            ("[1, 2]", "top level is not an object"),
            (r#"{"a": 3}"#, "benchmark `a` is not an object"),
            (r#"{"a": {"latency": {"lower_value": 1}}}"#, "measure `latency` has no numeric"),
            (r#"{"a": {"latency": {"value": "fast"}}}"#, "no numeric `value`"),
            ("{", "invalid JSON"),
        ] {
            let e = format!("{:#}", parse_bmf(text).unwrap_err());
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn runs_merge_per_metric_in_file_order() {
        let mut set = RunSet::default();
        set.add_run("a.json".into(), BTreeMap::from([(key("x", "latency"), 1.0)]));
        set.add_run(
            "b.json".into(),
            BTreeMap::from([(key("x", "latency"), 2.0), (key("y", "count"), 7.0)]),
        );
        assert_eq!(set.runs(), 2);
        assert_eq!(set.metrics[&key("x", "latency")], vec![1.0, 2.0]);
        assert_eq!(set.metrics[&key("y", "count")], vec![7.0], "present in one run only");
    }

    #[test]
    fn directories_expand_to_their_json_files_in_order() {
        let dir = std::env::temp_dir().join(format!("perf-agent-samples-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for (name, v) in [("run-2.json", 2.0), ("run-1.json", 1.0), ("notes.txt", 9.0)] {
            fs::write(dir.join(name), format!(r#"{{"x": {{"count": {{"value": {v}}}}}}}"#))
                .unwrap();
        }
        let set = RunSet::read(std::slice::from_ref(&dir), "BASE").unwrap();
        assert_eq!(set.metrics[&key("x", "count")], vec![1.0, 2.0]);
        let empty = dir.join("empty");
        fs::create_dir_all(&empty).unwrap();
        let e = RunSet::read(&[empty], "NEW").unwrap_err().to_string();
        assert!(e.contains("NEW") && e.contains("no *.json"), "{e}");
        let e = RunSet::read(&[dir.join("missing.json")], "BASE").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
