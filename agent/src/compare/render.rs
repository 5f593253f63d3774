//! A comparison as text: the terminal table, the Markdown report (for
//! `$GITHUB_STEP_SUMMARY` and PR comments) and the release-notes table
//! (metric, value, change against the previous release).

use std::fmt::Write as _;

use super::{
    samples::MetricKey,
    verdict::{Comparison, Level, Row, p_text, pct},
};

/// What the two sides are called in headings ("v1.2.0", "3 runs of main").
#[derive(Clone, Debug)]
pub struct Labels {
    pub base: String,
    pub new: String,
}

/// A value in its measure's unit, as people read it.
pub fn format_value(measure: &str, v: f64) -> String {
    match measure {
        "latency" | "cpu-time" => crate::units::human_ns(v),
        "memory" | "file-size" => bytes(v),
        "throughput" => format!("{v:.1}/s"),
        "cpu-percent" => format!("{v:.1} %"),
        _ if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        _ => format!("{v:.2}"),
    }
}

fn bytes(v: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut x = v;
    let mut unit = 0;
    while x.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{x:.0} B") } else { format!("{x:.2} {}", UNITS[unit]) }
}

/// "39.0 µs" for one run, "39.0 µs ×5" for the mean of five.
fn side(measure: &str, mean: f64, n: usize) -> String {
    let v = format_value(measure, mean);
    if n > 1 { format!("{v} ×{n}") } else { v }
}

pub(crate) fn p_column(row: &Row) -> String {
    row.ttest.map_or_else(|| "-".into(), |t| p_text(t.p))
}

/// Fails and warnings first, then by id.
pub(crate) fn ordered(cmp: &Comparison) -> Vec<&Row> {
    let mut rows: Vec<&Row> = cmp.rows.iter().collect();
    rows.sort_by(|a, b| {
        b.level.max(Level::Pass).cmp(&a.level.max(Level::Pass)).then(a.key.cmp(&b.key))
    });
    rows
}

pub(crate) fn headline(cmp: &Comparison, labels: &Labels) -> String {
    let verdict = match cmp.overall() {
        Level::Fail => "FAIL",
        Level::Warn => "WARN",
        _ => "PASS",
    };
    format!(
        "{verdict}: {} against {} — {} failed, {} warned, {} passed, {} not judged",
        labels.new,
        labels.base,
        cmp.count(Level::Fail),
        cmp.count(Level::Warn),
        cmp.count(Level::Pass),
        cmp.count(Level::NotJudged)
    )
}

fn cells(row: &Row) -> [String; 7] {
    let m = &row.key.measure;
    [
        row.key.id.clone(),
        side(m, row.base.mean, row.base.n),
        side(m, row.new.mean, row.new.n),
        pct(row.change_pct),
        p_column(row),
        row.level.label().to_string(),
        row.reason.clone(),
    ]
}

/// The terminal table: every metric on both sides, then the one-sided ones.
pub fn terminal(cmp: &Comparison, labels: &Labels) -> String {
    let header =
        ["metric", labels.base.as_str(), labels.new.as_str(), "change", "p", "verdict", ""]
            .map(String::from);
    let mut table: Vec<[String; 7]> = vec![header];
    table.extend(ordered(cmp).into_iter().map(cells));
    let mut widths = [0usize; 7];
    for r in &table {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &table {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            // Numbers right-aligned, text left-aligned.
            if (1..=4).contains(&i) {
                let _ = write!(line, "{}{c}  ", " ".repeat(pad));
            } else {
                let _ = write!(line, "{c}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    one_sided(&mut out, cmp, labels, |k| format!("  {} ({})\n", k.id, k.measure));
    let _ = writeln!(out, "\n{}", headline(cmp, labels));
    out
}

fn one_sided(
    out: &mut String,
    cmp: &Comparison,
    labels: &Labels,
    item: impl Fn(&MetricKey) -> String,
) {
    for (keys, who) in [(&cmp.only_base, &labels.base), (&cmp.only_new, &labels.new)] {
        if !keys.is_empty() {
            let _ = writeln!(out, "\nOnly in {who} (not judged):");
            keys.iter().for_each(|k| out.push_str(&item(k)));
        }
    }
}

/// Markdown cell text: `|` would end the cell.
fn md(s: &str) -> String {
    s.replace('|', "\\|")
}

fn md_row(out: &mut String, cells: &[String]) {
    let cells: Vec<String> = cells.iter().map(|c| md(c)).collect();
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// The Markdown report: the verdict, the regressions, every metric folded.
pub fn markdown(cmp: &Comparison, labels: &Labels) -> String {
    let mut out = String::new();
    let icon = match cmp.overall() {
        Level::Fail => "❌",
        Level::Warn => "⚠️",
        _ => "✅",
    };
    let _ = writeln!(out, "## perf-agent compare\n\n{icon} **{}**\n", md(&headline(cmp, labels)));
    let header = ["metric", &labels.base, &labels.new, "change", "p", "verdict", "why"]
        .map(|s| s.to_string());
    let regressions: Vec<&Row> =
        ordered(cmp).into_iter().filter(|r| r.level >= Level::Warn).collect();
    if !regressions.is_empty() {
        let _ = writeln!(out, "### Regressions\n");
        md_row(&mut out, &header);
        let _ = writeln!(out, "|---|--:|--:|--:|--:|---|---|");
        for r in regressions {
            md_row(&mut out, &cells(r));
        }
        out.push('\n');
    }
    let _ = writeln!(out, "<details><summary>All {} metrics</summary>\n", cmp.rows.len());
    md_row(&mut out, &header);
    let _ = writeln!(out, "|---|--:|--:|--:|--:|---|---|");
    for r in ordered(cmp) {
        md_row(&mut out, &cells(r));
    }
    let _ = writeln!(out, "\n</details>");
    one_sided(&mut out, cmp, labels, |k| format!("- `{}` ({})\n", k.id, k.measure));
    out
}

/// The release-notes table: every whole-run metric of NEW (no `@phase`, no
/// `agent/*`), its value and its change against BASE (the previous release).
pub fn release_notes(cmp: &Comparison, labels: &Labels) -> String {
    let mut rows: Vec<(MetricKey, String, String)> = cmp
        .rows
        .iter()
        .map(|r| (r.key.clone(), side_value(&r.key, r.new.mean), pct(r.change_pct)))
        .chain(cmp.only_new.iter().map(|k| (k.clone(), String::new(), "new".into())))
        // Whole-run numbers only; `agent/*` is the agent's own bookkeeping.
        .filter(|(k, ..)| !k.id.contains('@') && !k.id.starts_with("agent/"))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    let _ = writeln!(out, "| metric | {} | change vs {} |", md(&labels.new), md(&labels.base));
    let _ = writeln!(out, "|---|--:|--:|");
    for (key, value, change) in rows {
        let value = if value.is_empty() { "(new metric)".into() } else { value };
        let _ = writeln!(out, "| `{}` | {} | {} |", md(&key.id), md(&value), change);
    }
    out
}

fn side_value(key: &MetricKey, v: f64) -> String {
    format_value(&key.measure, v)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::compare::{samples::RunSet, thresholds::Thresholds};

    fn cmp() -> Comparison {
        let k = |id: &str, m: &str| MetricKey { id: id.into(), measure: m.into() };
        let mut base = RunSet::default();
        base.add_run(
            "base.json".into(),
            BTreeMap::from([
                (k("latency/p99", "latency"), 40_000.0),
                (k("latency/p99@steady", "latency"), 41_000.0),
                (k("memory/peak_rss", "memory"), 2_621_440.0),
                (k("throughput/rps_10vu", "throughput"), 7000.0),
                (k("old/metric", "count"), 3.0),
                (k("agent/window", "latency"), 3e9),
            ]),
        );
        let mut new = RunSet::default();
        new.add_run(
            "new.json".into(),
            BTreeMap::from([
                (k("latency/p99", "latency"), 60_000.0),
                (k("latency/p99@steady", "latency"), 62_000.0),
                (k("memory/peak_rss", "memory"), 2_700_000.0),
                (k("throughput/rps_10vu", "throughput"), 6950.0),
                (k("new/metric", "count"), 1.0),
                (k("agent/window", "latency"), 3e9),
            ]),
        );
        Comparison::judge(&base, &new, &Thresholds::default())
    }

    fn labels() -> Labels {
        Labels { base: "v1.0".into(), new: "v1.1".into() }
    }

    #[test]
    fn terminal_table_lists_failures_first_and_one_sided_metrics() {
        let t = terminal(&cmp(), &labels());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("metric") && lines[0].contains("v1.0"), "{t}");
        assert!(lines[1].starts_with("latency/p99 ") && lines[1].contains("FAIL"), "{t}");
        assert!(
            lines[1].contains("40.0 µs")
                && lines[1].contains("60.0 µs")
                && lines[1].contains("+50.0 %"),
            "{t}"
        );
        assert!(t.contains("Only in v1.0 (not judged):\n  old/metric (count)"), "{t}");
        assert!(t.contains("Only in v1.1 (not judged):\n  new/metric (count)"), "{t}");
        assert!(
            t.trim_end()
                .ends_with("FAIL: v1.1 against v1.0 — 2 failed, 0 warned, 2 passed, 1 not judged"),
            "{t}"
        );
    }

    #[test]
    fn markdown_names_the_regression() {
        let m = markdown(&cmp(), &labels());
        assert!(m.contains("❌ **FAIL"), "{m}");
        let regressions =
            m.split("### Regressions").nth(1).unwrap().split("<details>").next().unwrap();
        assert!(
            regressions.contains("| latency/p99 | 40.0 µs | 60.0 µs | +50.0 % | - | FAIL |"),
            "{m}"
        );
        assert!(!regressions.contains("memory/peak_rss"), "a pass is not a regression");
        assert!(m.contains("All 5 metrics"));
    }

    #[test]
    fn release_notes_show_whole_run_metrics_of_the_new_release() {
        let r = release_notes(&cmp(), &labels());
        assert!(r.starts_with("| metric | v1.1 | change vs v1.0 |\n|---|--:|--:|\n"), "{r}");
        assert!(r.contains("| `throughput/rps_10vu` | 6950.0/s | −0.7 % |"), "{r}");
        assert!(r.contains("| `memory/peak_rss` | 2.57 MiB | +3.0 % |"), "{r}");
        assert!(r.contains("| `new/metric` | (new metric) | new |"), "{r}");
        assert!(!r.contains("@steady") && !r.contains("old/metric"), "{r}");
        assert!(!r.contains("agent/window"), "{r}");
    }

    #[test]
    fn values_in_their_units() {
        assert_eq!(format_value("latency", 1500.0), "1.5 µs");
        assert_eq!(format_value("memory", 512.0), "512 B");
        assert_eq!(format_value("file-size", 5.5 * 1024.0 * 1024.0), "5.50 MiB");
        assert_eq!(format_value("cpu-percent", 12.34), "12.3 %");
        assert_eq!(format_value("count", 7.0), "7");
        assert_eq!(format_value("count", 7.5), "7.50");
        assert_eq!(md("a|b"), "a\\|b");
    }
}
