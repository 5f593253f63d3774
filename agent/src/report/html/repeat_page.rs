//! The page of `run --repeat N`: the medians' per-phase table (min–max
//! beside each), the whole-run medians, and a link to each run's own page
//! (timelines, startup, profiles: a median has no timeline).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{href, page, page_dir, read_data, relative};
use crate::bmf::BmfReport;

/// `merged`: the medians' BMF document; `runs`: each run's page, in order;
/// `path`: where this page goes.
pub fn render(merged: &BmfReport, runs: &[PathBuf], path: &Path) -> String {
    let from = page_dir(path);
    let links: Vec<Value> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| json!({ "label": format!("run {}", i + 1), "href": href(&relative(&from, run)) }))
        .collect();
    let data = json!({
        "kind": "repeat",
        "runs": links,
        "phases": phase_names(runs).into_iter().map(|name| json!({ "name": name })).collect::<Vec<_>>(),
        "bmf": serde_json::to_value(merged).expect("BMF serialises"),
    });
    page(&format!("perf-agent: median of {} runs", runs.len()), &data)
}

/// The phases in run order, from the first run page that can be read
/// (the BMF document has their names but not their order).
fn phase_names(runs: &[PathBuf]) -> Vec<String> {
    runs.iter()
        .filter_map(|run| read_data(&std::fs::read_to_string(run).ok()?))
        .find_map(|data| {
            let names = data["phases"]
                .as_array()?
                .iter()
                .filter_map(|p| p["name"].as_str().map(String::from));
            Some(names.collect())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmf::Measure;

    #[test]
    fn phases_come_from_the_first_readable_run_page_in_their_order() {
        let dir =
            std::env::temp_dir().join(format!("perf-agent-repeat-page-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run_page = |name: &str, phases: &[&str]| {
            let phases: Vec<Value> = phases.iter().map(|n| json!({ "name": n })).collect();
            let path = dir.join(name);
            std::fs::write(&path, page("x", &json!({ "kind": "run", "phases": phases }))).unwrap();
            path
        };
        let runs = [
            dir.join("missing.html"),
            run_page("r2.html", &["idle", "ramp/ramp-up", "cooldown"]),
            run_page("r3.html", &["idle"]),
        ];
        let mut merged = BmfReport::default();
        merged.add_bounded("latency/p50@idle", Measure::Latency, 2.0, Some(1.0), Some(3.0));
        let html = render(&merged, &runs, &dir.join("index.html"));
        let data = read_data(&html).unwrap();
        let names: Vec<&str> = data["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["idle", "ramp/ramp-up", "cooldown"]);
        assert_eq!(data["runs"][1], json!({ "label": "run 2", "href": "r2.html" }));
        assert_eq!(data["bmf"]["latency/p50@idle"]["latency"]["upper_value"], 3.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
