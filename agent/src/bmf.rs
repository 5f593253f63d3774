//! Bencher Metric Format (BMF) output: `{benchmark: {measure: {value,
//! lower_value?, upper_value?}}}`, for `bencher run --adapter json`.
//!
//! Benchmark names are perf-agent's metric IDs (`cpu/percent`,
//! `memory/peak_rss`, ...). Every measure is one of [`Measure`]: Bencher's
//! built-in `latency` (ns), `throughput` (ops/s) and `file-size` (bytes), or a
//! custom one that users create once with the units given by
//! [`Measure::units`] (`docs/metrics.md` lists the commands).

use std::collections::BTreeMap;

use serde::Serialize;

/// The measures perf-agent emits, with their Bencher slugs and units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Measure {
    /// Built in: nanoseconds. Every duration perf-agent reports.
    Latency,
    /// Built in: operations (requests) per second.
    Throughput,
    /// Built in: bytes, for `binary/size`.
    FileSize,
    /// Custom: bytes of memory (RSS).
    Memory,
    /// Custom: percent of one CPU core (200 = two cores busy).
    CpuPercent,
    /// Custom: nanoseconds of CPU time.
    CpuTime,
    /// Custom: a count of things (faults, requests, errors, dropped events).
    Count,
    /// Custom: a share of a whole, in percent (`cgroup/cpu_throttled_percent`,
    /// `profile/truncated_percent`).
    Percent,
}

impl Measure {
    /// The key written in the BMF file: Bencher matches it as a slug.
    pub fn slug(self) -> &'static str {
        match self {
            Measure::Latency => "latency",
            Measure::Throughput => "throughput",
            Measure::FileSize => "file-size",
            Measure::Memory => "memory",
            Measure::CpuPercent => "cpu-percent",
            Measure::CpuTime => "cpu-time",
            Measure::Count => "count",
            Measure::Percent => "percent",
        }
    }

    /// The measure whose slug this is.
    pub fn from_slug(slug: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.slug() == slug)
    }

    pub fn units(self) -> &'static str {
        match self {
            Measure::Latency | Measure::CpuTime => "nanoseconds (ns)",
            Measure::Throughput => "operations / second (ops/s)",
            Measure::FileSize | Measure::Memory => "bytes (B)",
            Measure::CpuPercent => "percent of one core (%)",
            Measure::Count => "count",
            Measure::Percent => "percent (%)",
        }
    }

    /// Custom measures must be created in Bencher before their first use.
    pub fn is_builtin(self) -> bool {
        matches!(self, Measure::Latency | Measure::Throughput | Measure::FileSize)
    }

    pub const ALL: [Measure; 8] = [
        Measure::Latency,
        Measure::Throughput,
        Measure::FileSize,
        Measure::Memory,
        Measure::CpuPercent,
        Measure::CpuTime,
        Measure::Count,
        Measure::Percent,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MetricValue {
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_value: Option<f64>,
}

/// A BMF document being built. Benchmarks are kept sorted so files diff well.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct BmfReport {
    benchmarks: BTreeMap<String, BTreeMap<&'static str, MetricValue>>,
}

impl BmfReport {
    pub fn add(&mut self, benchmark: impl Into<String>, measure: Measure, value: f64) {
        self.add_bounded(benchmark, measure, value, None, None);
    }

    /// Adds a value with optional bounds. Non-finite values (a rate over an
    /// empty window) are skipped: JSON cannot hold them and Bencher would
    /// reject the file.
    pub fn add_bounded(
        &mut self,
        benchmark: impl Into<String>,
        measure: Measure,
        value: f64,
        lower_value: Option<f64>,
        upper_value: Option<f64>,
    ) {
        if !value.is_finite() {
            return;
        }
        let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
        self.benchmarks.entry(benchmark.into()).or_default().insert(
            measure.slug(),
            MetricValue {
                value,
                lower_value: finite(lower_value),
                upper_value: finite(upper_value),
            },
        );
    }

    /// Drops every benchmark whose name satisfies `pred`.
    pub fn remove_where(&mut self, pred: impl Fn(&str) -> bool) {
        self.benchmarks.retain(|name, _| !pred(name));
    }

    pub fn get(&self, benchmark: &str, measure: Measure) -> Option<f64> {
        self.benchmarks.get(benchmark)?.get(measure.slug()).map(|m| m.value)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("BMF serialises")
    }
}

/// The `bencher measure create` commands for the custom measures, so their
/// units show up right in Bencher (`perf-agent measures`).
pub fn measure_setup_commands(project: &str) -> String {
    let mut out = String::new();
    for m in Measure::ALL.iter().filter(|m| !m.is_builtin()) {
        out.push_str(&format!(
            "bencher measure create {project} --name {0} --slug {0} --units {1:?}\n",
            m.slug(),
            m.units()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_benchmark_measure_value() {
        let mut r = BmfReport::default();
        r.add("cpu/percent", Measure::CpuPercent, 42.5);
        r.add_bounded("latency/p50", Measure::Latency, 1000.0, Some(900.0), None);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["cpu/percent"]["cpu-percent"]["value"], 42.5);
        assert_eq!(v["latency/p50"]["latency"]["lower_value"], 900.0);
        assert!(v["latency/p50"]["latency"].get("upper_value").is_none());
    }

    #[test]
    fn non_finite_values_are_left_out() {
        let mut r = BmfReport::default();
        r.add("throughput/rps", Measure::Throughput, f64::NAN);
        r.add_bounded("x", Measure::Count, 1.0, Some(f64::INFINITY), None);
        assert!(r.get("throughput/rps", Measure::Throughput).is_none());
        assert!(!r.to_json().contains("inf") && !r.to_json().contains("NaN"));
    }

    #[test]
    fn slugs_are_valid_bencher_slugs() {
        for m in Measure::ALL {
            let s = m.slug();
            assert!(s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
    }

    #[test]
    fn slugs_name_their_measure() {
        for m in Measure::ALL {
            assert_eq!(Measure::from_slug(m.slug()), Some(m));
        }
        assert_eq!(Measure::from_slug("ratio"), None);
    }

    #[test]
    fn setup_commands_cover_only_custom_measures() {
        let s = measure_setup_commands("my-project");
        assert!(s.contains("--slug cpu-percent") && s.contains("--slug memory"));
        assert!(!s.contains("--slug latency"), "built in: must not be created");
        assert_eq!(s.lines().count(), 5);
        assert!(s.contains("--slug percent"));
    }
}
