//! The page of one run: timelines with the phases as bands, the startup
//! waterfall, the per-phase table (server beside k6), the CPU profiles
//! (links to each phase's files, its top functions and where it blocked),
//! and the BMF document the tables read their numbers from.

use std::path::Path;

use serde_json::{Value, json};

use super::{href, page, page_dir, relative, series::Series};
use crate::{
    bmf::BmfReport,
    profile::{PhaseProfile, ProfileReport, output::file_safe},
    report::RunReport,
};

/// Top functions and blocking sites shown per phase (the summary prints
/// the canonical phase's; the page, every phase's, folded under its links).
const TOP_FUNCTIONS: usize = 8;
const TOP_BLOCKING_SITES: usize = 4;

/// What one run's page is made of.
pub struct RunPage<'a> {
    pub report: &'a RunReport<'a>,
    pub series: &'a Series,
    /// The document written to `--out` (with the cgroup's and profile's rows).
    pub doc: &'a BmfReport,
    /// The profiles, when they were written (`--profile-dir`, or where
    /// they went instead).
    pub profile: Option<&'a ProfileReport>,
    /// Where the page goes (its links are relative to its directory).
    pub path: &'a Path,
}

/// Seconds from the run's first sample; NaN and infinities are null in JSON.
fn secs(series: &Series, t_ns: u64) -> f64 {
    t_ns.saturating_sub(series.t0_ns) as f64 / 1e9
}

fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

impl RunPage<'_> {
    pub fn render(&self) -> String {
        let r = self.report;
        page(&format!("perf-agent: {} (pid {})", r.comm, r.pid), &self.data())
    }

    /// The JSON the page's script draws.
    pub fn data(&self) -> Value {
        let (r, s) = (self.report, self.series);
        let intervals: Vec<Value> = s
            .intervals
            .iter()
            .map(|i| json!({ "t": secs(s, i.t_ns), "cpu_percent": finite(i.cpu_percent), "rss_bytes": i.rss_bytes, "cpu_ns": i.cpu_ns }))
            .collect();
        let buckets: Vec<Value> = s
            .buckets
            .iter()
            .map(|b| {
                json!({
                    "t0": secs(s, b.t0_ns), "t1": secs(s, b.t1_ns), "count": b.count,
                    "rps": finite(b.rps), "p50_ns": finite(b.p50_ns), "p99_ns": finite(b.p99_ns),
                    "errors": b.errors,
                })
            })
            .collect();
        let phases: Vec<Value> = r
            .phases
            .iter()
            .map(|p| {
                json!({
                    "name": p.phase.name,
                    "start": secs(s, p.phase.start_ns),
                    "end": secs(s, p.phase.end_ns.min(s.t1_ns)),
                    "truncated": p.truncated,
                })
            })
            .collect();
        let startup: Vec<Value> = r.startup.as_ref().map_or_else(Vec::new, |st| {
            st.durations()
                .into_iter()
                .map(|(id, ns)| json!({ "id": id, "label": milestone_label(id), "ns": ns }))
                .collect()
        });
        json!({
            "kind": "run",
            "pid": r.pid,
            "comm": r.comm,
            "end": r.end.describe(),
            "partial": r.partial,
            "target_status": r.target_status,
            "canonical": r.canonical.as_ref().map(|c| &c.0),
            "notes": r.notes,
            "window_s": secs(s, s.t1_ns),
            "interval_ms": s.interval.as_millis() as u64,
            "bucket_s": s.bucket_ns / 1_000_000_000,
            "intervals": intervals,
            "buckets": buckets,
            "phases": phases,
            "startup": startup,
            "profiles": self.profile_links(),
            "bmf": serde_json::to_value(self.doc).expect("BMF serialises"),
        })
    }

    /// Per phase (and `run`, the whole run), the profile files that exist,
    /// as links relative to the page, and the phase's top functions and
    /// blocking sites.
    fn profile_links(&self) -> Vec<Value> {
        let Some(profile) = self.profile else { return Vec::new() };
        let dir = profile.dir.as_path();
        let from = page_dir(self.path);
        let names =
            std::iter::once("run").chain(self.report.phases.iter().map(|p| p.phase.name.as_str()));
        names
            .filter_map(|name| {
                let (top, blocked) = std::iter::once(&profile.run)
                    .chain(&profile.phases)
                    .find(|p| p.name == name)
                    .map(top_of)
                    .unzip();
                let links: Vec<Value> = ["cpu", "offcpu"]
                    .iter()
                    .flat_map(|kind| ["svg", "folded", "pb.gz"].map(|ext| format!("{kind}.{ext}")))
                    .filter_map(|suffix| {
                        let file = dir.join(format!("{}.{suffix}", file_safe(name)));
                        file.is_file().then(
                            || json!({ "label": suffix, "href": href(&relative(&from, &file)) }),
                        )
                    })
                    .collect();
                (!links.is_empty()).then(|| {
                    json!({
                        "phase": name,
                        "links": links,
                        "top": top,
                        "blocked": blocked,
                    })
                })
            })
            .collect()
    }
}

/// A phase's top functions (self and total %) and blocking sites (%).
fn top_of(p: &PhaseProfile) -> (Vec<Value>, Vec<Value>) {
    let top: Vec<Value> = p
        .top
        .iter()
        .take(TOP_FUNCTIONS)
        .map(|f| json!({ "name": f.name, "self": f.self_percent, "total": f.total_percent }))
        .collect();
    let blocked: Vec<Value> = p
        .off_cpu_sites
        .iter()
        .take(TOP_BLOCKING_SITES)
        .map(|b| json!({ "site": b.site, "percent": b.percent }))
        .collect();
    (top, blocked)
}

/// `startup/to_first_accept` → `accept`.
fn milestone_label(id: &str) -> &str {
    match id.trim_start_matches("startup/to_") {
        "first_accept" => "accept",
        "first_response" => "first response",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bmf::Measure,
        outcome::EndReason,
        phases::{Phase, PhaseReport},
        profile::output::{BlockingSite, FunctionShare},
        report::test_report,
        requests::RequestLog,
        startup::Startup,
        timeline::{Sample, WindowStats},
    };

    const S: u64 = 1_000_000_000;

    #[test]
    fn data_has_phases_startup_series_and_links() {
        let mut r = test_report(EndReason::Interrupted(libc::SIGINT));
        r.phases = vec![PhaseReport {
            phase: Phase::new("ramp/<steady>", 11 * S, 20 * S),
            system: WindowStats::default(),
            requests: RequestLog::default().window(0, 1),
            truncated: true,
            client: None,
        }];
        r.startup = Some(Startup {
            exec_ns: 10 * S,
            listen_ns: Some(10 * S + 5_000_000),
            ..Default::default()
        });
        let samples: Vec<Sample> = (10..=13)
            .map(|t| Sample { t_ns: t * S, cpu_ns: t * S / 10, ..Default::default() })
            .collect();
        let series =
            Series::of(&samples, &RequestLog::default(), std::time::Duration::from_millis(100));
        let mut doc = BmfReport::default();
        doc.add("latency/p50@ramp/<steady>", Measure::Latency, 1234.5);
        let dir = std::env::temp_dir().join(format!("perf-agent-run-page-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("prof")).unwrap();
        std::fs::write(dir.join("prof").join("ramp%2F%3Csteady%3E.cpu.svg"), "<svg/>").unwrap();
        let path = dir.join("report.html");
        let steady = PhaseProfile {
            name: "ramp/<steady>".into(),
            top: vec![FunctionShare {
                name: "hot".into(),
                self_percent: 60.0,
                total_percent: 70.0,
            }],
            off_cpu_sites: vec![BlockingSite {
                site: "read ← serve ← main".into(), percent: 90.0
            }],
            ..Default::default()
        };
        let profile =
            ProfileReport { dir: dir.join("prof"), phases: vec![steady], ..Default::default() };
        let page = RunPage {
            report: &r,
            series: &series,
            doc: &doc,
            profile: Some(&profile),
            path: &path,
        };
        let d = page.data();
        assert_eq!(d["phases"][0]["name"], "ramp/<steady>");
        assert_eq!(
            (d["phases"][0]["start"].as_f64(), d["phases"][0]["end"].as_f64()),
            (Some(1.0), Some(3.0))
        );
        assert_eq!(d["partial"], true);
        assert_eq!(
            d["startup"][0],
            json!({ "id": "startup/to_listen", "label": "listen", "ns": 5_000_000 })
        );
        assert_eq!(d["intervals"].as_array().unwrap().len(), 3);
        assert_eq!(d["intervals"][0]["cpu_percent"], 10.0);
        assert_eq!(d["bmf"]["latency/p50@ramp/<steady>"]["latency"]["value"], 1234.5);
        let links = &d["profiles"][0];
        assert_eq!(links["phase"], "ramp/<steady>", "run has no file, so is left out");
        assert_eq!(links["links"][0]["href"], "prof/ramp%252F%253Csteady%253E.cpu.svg");
        assert_eq!(links["top"][0], json!({ "name": "hot", "self": 60.0, "total": 70.0 }));
        assert_eq!(links["blocked"][0], json!({ "site": "read ← serve ← main", "percent": 90.0 }));
        let html = page.render();
        assert!(!html.contains("<steady>") && html.contains("ramp/\\u003csteady\\u003e"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
