//! The Criterion micro-benchmarks of `agent/benches/hot_paths.rs`, in a
//! quick mode; no root needed.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::results::Results;
use crate::{cargo, describe, run, target_dir};

/// One benchmark's headline estimate, ns.
struct Estimate {
    id: String,
    value: f64,
    low: f64,
    high: f64,
    note: String,
}

/// Quick-mode Criterion run; its estimates (time per iteration, or per
/// element when the bench sets a throughput) become `micro/<group>/<name>`
/// latency rows.
pub fn run_scenario(results: &mut Results) -> Result<()> {
    println!("\n== micro-benchmarks (Criterion, quick mode: 1 s warm-up, 2 s measurement)");
    let since = SystemTime::now();
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "perf-agent", "--bench", "hot_paths", "--"]).args([
        "--warm-up-time",
        "1",
        "--measurement-time",
        "2",
        "--noplot",
    ]);
    println!("$ {}", describe(&cmd));
    run(&mut cmd).context("the Criterion benchmarks failed")?;
    let root = target_dir().join("criterion");
    let mut found = Vec::new();
    collect_estimates(&root, since, &mut found);
    found.sort_by(|a, b| a.id.cmp(&b.id));
    if found.is_empty() {
        bail!("Criterion wrote no estimates under {}", root.display());
    }
    for e in found {
        let row = results.add(format!("micro/{}", e.id), "latency", e.value);
        row.range = Some((e.low, e.high));
        row.note = e.note;
    }
    Ok(())
}

/// Finds `<dir>/new/benchmark.json` + `estimates.json` written since `since`.
fn collect_estimates(dir: &Path, since: SystemTime, out: &mut Vec<Estimate>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            out.extend(read_estimate(&path, since));
        } else {
            collect_estimates(&path, since, out);
        }
    }
}

fn read_estimate(dir: &Path, since: SystemTime) -> Option<Estimate> {
    let est_path = dir.join("estimates.json");
    let fresh = fs::metadata(&est_path).and_then(|m| m.modified()).ok()? >= since;
    if !fresh {
        return None;
    }
    let bench: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("benchmark.json")).ok()?).ok()?;
    let est: Value = serde_json::from_str(&fs::read_to_string(est_path).ok()?).ok()?;
    estimate(&bench, &est)
}

/// The estimate in Criterion's `benchmark.json` and `estimates.json`.
fn estimate(bench: &Value, est: &Value) -> Option<Estimate> {
    let id = bench.get("full_id")?.as_str()?.to_string();
    // Criterion's headline estimate: the slope of a linear sampling, else the mean.
    let e = est.get("slope").filter(|s| !s.is_null()).or_else(|| est.get("mean"))?;
    let value = e.get("point_estimate")?.as_f64()?;
    let ci = e.get("confidence_interval")?;
    let low = ci.get("lower_bound")?.as_f64()?;
    let high = ci.get("upper_bound")?.as_f64()?;
    let elements = bench.pointer("/throughput/Elements").and_then(Value::as_f64);
    Some(match elements {
        Some(n) if n > 0.0 => Estimate {
            id,
            value: value / n,
            low: low / n,
            high: high / n,
            note: format!("per element (batch of {n})"),
        },
        _ => Estimate { id, value, low, high, note: "per call; 95 % CI".into() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimate_per_element_when_the_bench_sets_a_throughput() {
        let ci = json!({ "lower_bound": 900.0, "upper_bound": 1100.0 });
        let est = json!({ "slope": { "point_estimate": 1000.0, "confidence_interval": ci } });
        let bench = json!({ "full_id": "g/n", "throughput": { "Elements": 10 } });
        let e = estimate(&bench, &est).unwrap();
        assert_eq!((e.id.as_str(), e.value, e.low, e.high), ("g/n", 100.0, 90.0, 110.0));
        let est =
            json!({ "slope": null, "mean": { "point_estimate": 5.0, "confidence_interval": ci } });
        let e = estimate(&json!({ "full_id": "g/m" }), &est).unwrap();
        assert_eq!((e.value, e.note.as_str()), (5.0, "per call; 95 % CI"));
    }
}
