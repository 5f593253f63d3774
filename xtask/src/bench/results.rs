//! The bench's results: rows with an optional goal, written as Bencher
//! Metric Format, a text table and a Markdown table.

use std::fmt::Write as _;

use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq)]
pub enum Goal {
    None,
    AtMost(f64),
    AtLeast(f64),
    Equal(f64),
}

impl Goal {
    fn verdict(self, v: f64) -> &'static str {
        let ok = match self {
            Goal::None => return "",
            Goal::AtMost(g) => v <= g,
            Goal::AtLeast(g) => v >= g,
            Goal::Equal(g) => v == g,
        };
        if ok { "PASS" } else { "FAIL" }
    }
    fn describe(self, measure: &str) -> String {
        let f = |g: f64| format_value(measure, g);
        match self {
            Goal::None => String::new(),
            Goal::AtMost(g) => format!("≤ {}", f(g)),
            Goal::AtLeast(g) => format!("≥ {}", f(g)),
            Goal::Equal(g) => format!("= {}", f(g)),
        }
    }
}

pub struct Row {
    pub benchmark: String,
    pub measure: &'static str,
    pub value: f64,
    pub range: Option<(f64, f64)>,
    pub goal: Goal,
    pub note: String,
}

#[derive(Default)]
pub struct Results {
    pub rows: Vec<Row>,
    /// Messages about skipped parts, shown under the table.
    pub notes: Vec<String>,
}

impl Results {
    pub fn add(
        &mut self,
        benchmark: impl Into<String>,
        measure: &'static str,
        value: f64,
    ) -> &mut Row {
        self.rows.push(Row {
            benchmark: benchmark.into(),
            measure,
            value,
            range: None,
            goal: Goal::None,
            note: String::new(),
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// Adds the median of `values` with their min / max as the range.
    pub fn add_spread(
        &mut self,
        benchmark: impl Into<String>,
        measure: &'static str,
        values: &[f64],
    ) -> &mut Row {
        let row = self.add(benchmark, measure, median(values));
        if values.len() > 1 {
            row.range = Some((min(values), max(values)));
        }
        row
    }

    pub fn bmf(&self) -> Value {
        let mut out = serde_json::Map::new();
        for r in self.rows.iter().filter(|r| r.value.is_finite()) {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), json!(r.value));
            if let Some((lo, hi)) = r.range {
                m.insert("lower_value".into(), json!(lo));
                m.insert("upper_value".into(), json!(hi));
            }
            out.entry(r.benchmark.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("an object")
                .insert(r.measure.to_string(), Value::Object(m));
        }
        Value::Object(out)
    }

    fn cells(&self) -> Vec<[String; 6]> {
        self.rows
            .iter()
            .map(|r| {
                [
                    r.benchmark.clone(),
                    format_value(r.measure, r.value),
                    r.range
                        .map(|(lo, hi)| {
                            format!(
                                "{} … {}",
                                format_value(r.measure, lo),
                                format_value(r.measure, hi)
                            )
                        })
                        .unwrap_or_default(),
                    r.goal.describe(r.measure),
                    if r.value.is_finite() {
                        r.goal.verdict(r.value).to_string()
                    } else {
                        "n/a".into()
                    },
                    r.note.clone(),
                ]
            })
            .collect()
    }

    pub fn text_table(&self) -> String {
        let header = ["benchmark", "value", "min … max", "goal", "", "note"].map(String::from);
        let cells = self.cells();
        let mut widths = [0usize; 6];
        for row in std::iter::once(&header).chain(&cells) {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&cells) {
            let mut line = String::new();
            for (i, (w, c)) in widths.iter().zip(row).enumerate() {
                let pad = w - c.chars().count();
                if i == 1 || i == 2 {
                    let _ = write!(line, "{}{c}  ", " ".repeat(pad));
                } else {
                    let _ = write!(line, "{c}{}  ", " ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let (pass, fail) = self.goal_counts();
        let _ = writeln!(out, "goals: {pass} passed, {fail} failed (goals never fail the command)");
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    pub fn markdown_table(&self) -> String {
        let mut out = String::from(
            "| benchmark | value | min … max | goal | | note |\n|---|--:|--:|---|---|---|\n",
        );
        for c in self.cells() {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} |",
                c[0], c[1], c[2], c[3], c[4], c[5]
            );
        }
        out
    }

    pub fn goal_counts(&self) -> (usize, usize) {
        let v: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| r.value.is_finite())
            .map(|r| r.goal.verdict(r.value))
            .collect();
        (v.iter().filter(|&&s| s == "PASS").count(), v.iter().filter(|&&s| s == "FAIL").count())
    }
}

pub fn format_value(measure: &str, v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match measure {
        "latency" => {
            if v >= 1e6 {
                format!("{:.2} ms", v / 1e6)
            } else if v >= 1e3 {
                format!("{:.2} µs", v / 1e3)
            } else {
                format!("{v:.1} ns")
            }
        }
        "throughput" => format!("{v:.0}/s"),
        "ratio" => format!("{v:.3}"),
        "cpu-percent" => format!("{v:.2} %"),
        "memory" => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
        "count" => format!("{v:.0}"),
        _ => format!("{v}"),
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// A distribution-free 95 % confidence interval of the median of `v`:
/// the order statistics `x(k)` and `x(n+1-k)` with the largest `k` such
/// that fewer than k of n values fall below the median with probability
/// ≤ 2.5 % (binomial, p = ½). `None` below 6 values (no such k).
pub fn median_ci95(v: &[f64]) -> Option<(f64, f64)> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    // P(Bin(n, ½) ≤ j), j = 0, 1, ...: the largest k with P(≤ k-1) ≤ 2.5 %.
    let (mut k, mut cdf, mut pmf) = (0, 0.0, 0.5f64.powi(n as i32));
    for j in 0..n {
        cdf += pmf;
        if cdf > 0.025 {
            break;
        }
        k = j + 1;
        pmf *= (n - j) as f64 / (j + 1) as f64;
    }
    (k >= 1).then(|| (s[k - 1], s[n - k]))
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().filter(|x| x.is_finite()).fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().filter(|x| x.is_finite()).fold(f64::NEG_INFINITY, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_confidence_interval_from_order_statistics() {
        let v: Vec<f64> = (1..=15).map(f64::from).collect();
        // n = 15: P(Bin ≤ 3) = 1.8 %, P(≤ 4) = 5.9 %: k = 4.
        assert_eq!(median_ci95(&v), Some((4.0, 12.0)));
        // n = 6: P(≤ 0) = 1.6 %: k = 1, the extremes.
        assert_eq!(median_ci95(&[6.0, 1.0, 2.0, 3.0, 4.0, 5.0]), Some((1.0, 6.0)));
        assert_eq!(median_ci95(&[1.0, 2.0, 3.0, 4.0, 5.0]), None);
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!((min(&[2.0, f64::NAN, 1.0]), max(&[2.0, f64::NAN, 1.0])), (1.0, 2.0));
    }

    #[test]
    fn bmf_shape() {
        let mut r = Results::default();
        r.add_spread("overhead/throughput_ratio", "ratio", &[0.9, 1.0, 0.95]);
        r.add("skipped", "ratio", f64::NAN);
        let v = r.bmf();
        assert_eq!(v["overhead/throughput_ratio"]["ratio"]["value"], json!(0.95));
        assert_eq!(v["overhead/throughput_ratio"]["ratio"]["lower_value"], json!(0.9));
        assert_eq!(v["overhead/throughput_ratio"]["ratio"]["upper_value"], json!(1.0));
        assert!(v.get("skipped").is_none(), "a value that could not be measured is left out");
    }

    #[test]
    fn goals_count_and_show() {
        let mut r = Results::default();
        r.add("a", "ratio", 0.98).goal = Goal::AtLeast(0.97);
        r.add("b", "latency", 250.0).goal = Goal::AtMost(200.0);
        r.add("c", "count", 0.0).goal = Goal::Equal(0.0);
        assert_eq!(r.goal_counts(), (2, 1));
        let table = r.text_table();
        assert!(table.contains("≤ 200.0 ns") && table.contains("FAIL"), "{table}");
    }
}
