//! `run --repeat N`: the whole measurement (start the target, startup,
//! idle, the load, stop it) N times in one invocation. Each run's BMF goes to
//! `<out>.runs/run-<i>.json` (what `compare` wants for its t-test); `--out`
//! gets one BMF whose `value` is the median of the runs and whose
//! `lower_value`/`upper_value` are their min and max (Bencher draws them as a
//! band).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::{
    bmf::{BmfReport, Measure},
    cgroup,
    compare::samples::RunSet,
    measure::{self, MeasureOptions},
    outcome::exit,
    output,
    report::html::repeat_page,
    signals,
};

/// `<dir>/<stem>.runs` for `--out <dir>/<stem>.json`.
pub fn runs_dir(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!("{stem}.runs"))
}

/// Runs `run` `n` times; returns the first non-zero exit status of a run
/// (0 when all were complete). Stops early on SIGINT/SIGTERM.
pub fn run_repeated(
    argv: &[String],
    opts: &MeasureOptions,
    limits: &cgroup::Limits,
    n: u32,
) -> anyhow::Result<u8> {
    let Some(out) = &opts.out else {
        bail!("--repeat {n} needs --out FILE (the medians go there, each run beside it)")
    };
    output::check_writable("--out", out)?;
    if let Some(report) = &opts.report {
        output::check_writable("--report", report)?;
    }
    let dir = runs_dir(out);
    prepare_dir(&dir)?;
    let mut code = exit::OK;
    let mut files = Vec::new();
    let mut pages = Vec::new();
    for i in 1..=n {
        eprintln!("perf-agent: run {i} of {n}");
        let file = dir.join(format!("run-{i}.json"));
        let run_opts = MeasureOptions {
            out: Some(file.clone()),
            phases_json: opts.phases_json.as_deref().map(|p| numbered(p, i)),
            report: opts.report.as_deref().map(|p| numbered(p, i)),
            // Each run's profiles in a directory of their own.
            profile: opts.profile.as_ref().map(|p| crate::profile::ProfileOptions {
                dir: p.dir.join(format!("run-{i}")),
                ..p.clone()
            }),
            ..opts.clone()
        };
        let c = measure::run(argv, &run_opts, limits)?;
        if file.is_file() {
            files.push(file);
        }
        pages.extend(run_opts.report.filter(|p| p.is_file()));
        if code == exit::OK {
            code = c;
        }
        if signals::received().is_some() {
            eprintln!("perf-agent: interrupted: {i} of {n} runs done");
            break;
        }
    }
    if files.is_empty() {
        bail!("no run wrote results: nothing to merge into {}", out.display());
    }
    let set = RunSet::read(&files, "runs")?;
    let merged = merge(&set);
    let json = merged.to_json() + "\n";
    if output::write_results(out, &json, &output::fallback_dirs())? != output::Written::AtPath {
        return Ok(exit::RESULTS_ELSEWHERE); // named on stderr; the runs are in their files
    }
    if let Some(path) = &opts.report {
        let page = repeat_page::render(&merged, &pages, path);
        if output::write_results(path, &page, &output::fallback_dirs())? != output::Written::AtPath
        {
            return Ok(exit::RESULTS_ELSEWHERE);
        }
        eprintln!("perf-agent: wrote {} (each run's page beside it)", path.display());
    }
    eprintln!(
        "perf-agent: wrote {} (median of {} runs, min and max as lower/upper values) and {}/",
        out.display(),
        set.runs(),
        dir.display()
    );
    Ok(code)
}

/// Creates the runs directory, emptied of an earlier invocation's
/// `run-*.json` (a longer earlier series must not leak into this one).
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_file() {
        bail!("{} is a file; --repeat writes each run in a directory of that name", dir.display());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("run-") && name.ends_with(".json") {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// `phases.json` → `phases.run-3.json`.
fn numbered(path: &Path, i: u32) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}.run-{i}{ext}"))
}

/// Per metric: the median of the runs that have it, with min and max.
pub fn merge(set: &RunSet) -> BmfReport {
    let mut b = BmfReport::default();
    for (key, values) in &set.metrics {
        let Some(measure) = Measure::from_slug(&key.measure) else { continue };
        let (min, max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        b.add_bounded(key.id.clone(), measure, median(values), Some(min), Some(max));
    }
    b
}

/// The middle value; the mean of the two middle ones for an even count.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::compare::samples::MetricKey;

    fn key(id: &str, m: &str) -> MetricKey {
        MetricKey { id: id.into(), measure: m.into() }
    }

    #[test]
    fn medians_with_min_and_max() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        let mut set = RunSet::default();
        for (i, (lat, rss)) in [(30.0, 5.0), (10.0, 7.0), (20.0, 6.0)].iter().enumerate() {
            let mut run = BTreeMap::from([
                (key("startup/to_listen", "latency"), *lat),
                (key("memory/rss", "memory"), *rss),
            ]);
            if i == 0 {
                run.insert(key("only/first", "count"), 1.0);
            }
            set.add_run(format!("run-{i}.json").into(), run);
        }
        let doc: serde_json::Value = serde_json::from_str(&merge(&set).to_json()).unwrap();
        let l = &doc["startup/to_listen"]["latency"];
        assert_eq!(
            (l["value"].as_f64(), l["lower_value"].as_f64(), l["upper_value"].as_f64()),
            (Some(20.0), Some(10.0), Some(30.0))
        );
        assert_eq!(doc["memory/rss"]["memory"]["value"], 6.0);
        assert_eq!(doc["only/first"]["count"]["value"], 1.0, "a metric of some runs: theirs");
    }

    #[test]
    fn per_run_paths() {
        assert_eq!(runs_dir(Path::new("out/bench.json")), Path::new("out/bench.runs"));
        assert_eq!(runs_dir(Path::new("bench")), Path::new("bench.runs"));
        assert_eq!(numbered(Path::new("x/phases.json"), 3), Path::new("x/phases.run-3.json"));
    }
}
