//! Each metric present on both sides judged: its change, how much worse
//! that is in its direction, and pass / warn / fail by the thresholds,
//! gated by Welch's t-test when both sides have enough runs.

use super::{
    samples::{MetricKey, RunSet},
    stats::{self, Moments, TTest},
    thresholds::{Policy, Thresholds},
};

/// Ordered by severity: the overall verdict is the maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No thresholds apply: listed only.
    NotJudged,
    Pass,
    Warn,
    Fail,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::NotJudged => "-",
            Level::Pass => "pass",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One metric on both sides.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: MetricKey,
    pub base: Moments,
    pub new: Moments,
    /// (new − base) / |base| in percent; ±∞ from a zero base.
    pub change_pct: f64,
    /// `change_pct` signed so that positive is worse.
    pub worse_pct: f64,
    pub policy: Policy,
    /// With at least `min_samples` runs on each side.
    pub ttest: Option<TTest>,
    pub level: Level,
    /// Why, in a few words ("31.0 % worse ≥ fail 25 %, p = 0.0020").
    pub reason: String,
}

/// A whole comparison.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    pub rows: Vec<Row>,
    /// Metrics only BASE has (dropped) and only NEW has (added): not judged.
    pub only_base: Vec<MetricKey>,
    pub only_new: Vec<MetricKey>,
}

impl Comparison {
    pub fn judge(base: &RunSet, new: &RunSet, th: &Thresholds) -> Comparison {
        let mut cmp = Comparison::default();
        for (key, base_values) in &base.metrics {
            match new.metrics.get(key) {
                Some(new_values) => cmp.rows.push(judge_one(key, base_values, new_values, th)),
                None => cmp.only_base.push(key.clone()),
            }
        }
        cmp.only_new =
            new.metrics.keys().filter(|k| !base.metrics.contains_key(*k)).cloned().collect();
        cmp
    }

    /// The worst level of any row (pass when nothing was judged).
    pub fn overall(&self) -> Level {
        self.rows.iter().map(|r| r.level).max().unwrap_or(Level::Pass).max(Level::Pass)
    }

    pub fn count(&self, level: Level) -> usize {
        self.rows.iter().filter(|r| r.level == level).count()
    }
}

fn judge_one(key: &MetricKey, base: &[f64], new: &[f64], th: &Thresholds) -> Row {
    let policy = th.policy(&key.id, &key.measure);
    let (b, n) = (Moments::of(base), Moments::of(new));
    let change_pct = relative_change_pct(b.mean, n.mean);
    let worse_pct = change_pct * policy.direction.sign();
    let sig = &th.significance;
    let ttest = if b.n >= sig.min_samples && n.n >= sig.min_samples {
        stats::welch(base, new)
    } else {
        None
    };
    let mut row = Row {
        key: key.clone(),
        base: b,
        new: n,
        change_pct,
        worse_pct,
        policy,
        ttest,
        level: Level::NotJudged,
        reason: String::new(),
    };
    if !policy.limits.judged() {
        return row;
    }
    let over = |limit: Option<f64>| limit.is_some_and(|l| worse_pct >= l && worse_pct > 0.0);
    let (by_threshold, limit) = if over(policy.limits.fail) {
        (Level::Fail, policy.limits.fail)
    } else if over(policy.limits.warn) {
        (Level::Warn, policy.limits.warn)
    } else {
        (Level::Pass, None)
    };
    let Some(limit) = limit else {
        row.level = Level::Pass;
        return row;
    };
    let crossed = format!(
        "{} % worse ≥ {} {limit} %",
        worse_text(worse_pct),
        if by_threshold == Level::Fail { "fail" } else { "warn" },
    );
    // Not significant never fails; not significant at the warning level
    // never warns either.
    let (level, reason) = match ttest {
        None => (by_threshold, format!("{crossed} (n < {}: no t-test)", sig.min_samples)),
        Some(t) if t.p < sig.fail_p => (by_threshold, format!("{crossed}, p = {}", p_text(t.p))),
        Some(t) if t.p < sig.warn_p => {
            let note = if by_threshold == Level::Fail { ": warn only" } else { "" };
            (Level::Warn, format!("{crossed}, p = {} ≥ {}{note}", p_text(t.p), sig.fail_p))
        }
        Some(t) => (
            Level::Pass,
            format!("{crossed} but p = {} ≥ {}: not significant", p_text(t.p), sig.warn_p),
        ),
    };
    row.level = level;
    row.reason = reason;
    row
}

/// (new − base) / |base| × 100; 0 when both are 0, ±∞ from a zero base.
pub fn relative_change_pct(base: f64, new: f64) -> f64 {
    if base == 0.0 {
        return if new == 0.0 { 0.0 } else { new.signum() * f64::INFINITY };
    }
    (new - base) / base.abs() * 100.0
}

/// "+12.3 %", "−4.0 %", "+∞ %".
pub fn pct(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+∞ %".into() } else { "−∞ %".into() };
    }
    let s = format!("{v:+.1} %");
    s.replacen('-', "−", 1)
}

fn worse_text(v: f64) -> String {
    if v.is_infinite() { "∞".into() } else { format!("{v:.1}") }
}

pub fn p_text(p: f64) -> String {
    if p < 1e-4 { format!("{p:.1e}") } else { format!("{p:.4}") }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn key(id: &str, measure: &str) -> MetricKey {
        MetricKey { id: id.into(), measure: measure.into() }
    }

    fn sides(metric: (&str, &str), base: &[f64], new: &[f64]) -> (RunSet, RunSet) {
        let set = |values: &[f64]| {
            let mut s = RunSet::default();
            for (i, v) in values.iter().enumerate() {
                s.add_run(
                    format!("{i}.json").into(),
                    BTreeMap::from([(key(metric.0, metric.1), *v)]),
                );
            }
            s
        };
        (set(base), set(new))
    }

    fn one(metric: (&str, &str), base: &[f64], new: &[f64]) -> Row {
        let (b, n) = sides(metric, base, new);
        Comparison::judge(&b, &n, &Thresholds::default()).rows.remove(0)
    }

    #[test]
    fn single_runs_are_judged_by_threshold_alone() {
        let lat = ("latency/p99", "latency");
        assert_eq!(one(lat, &[100.0], &[109.0]).level, Level::Pass);
        assert_eq!(one(lat, &[100.0], &[110.0]).level, Level::Warn, "+10 % warns");
        let r = one(lat, &[100.0], &[130.0]);
        assert_eq!(r.level, Level::Fail);
        assert!(r.reason.contains("no t-test"), "{}", r.reason);
        assert_eq!(one(lat, &[100.0], &[50.0]).level, Level::Pass, "faster is fine");
    }

    #[test]
    fn directions_follow_the_measure() {
        let rps = ("throughput/rps_10vu", "throughput");
        assert_eq!(one(rps, &[1000.0], &[880.0]).level, Level::Warn, "−12 %");
        assert_eq!(one(rps, &[1000.0], &[700.0]).level, Level::Fail, "−30 %");
        assert_eq!(one(rps, &[1000.0], &[2000.0]).level, Level::Pass, "faster");
        let mem = ("memory/peak_rss", "memory");
        assert_eq!(one(mem, &[100.0], &[120.0]).level, Level::Warn);
        assert_eq!(one(mem, &[100.0], &[150.0]).level, Level::Fail);
        let size = ("binary/size", "file-size");
        assert_eq!(one(size, &[100.0], &[106.0]).level, Level::Warn);
        assert_eq!(one(size, &[100.0], &[110.0]).level, Level::Fail);
        let cpu = one(("cpu/percent", "cpu-percent"), &[10.0], &[90.0]);
        assert_eq!(cpu.level, Level::NotJudged, "no default for CPU");
        assert_eq!(cpu.change_pct, 800.0);
    }

    #[test]
    fn significance_gates_the_verdict() {
        let lat = ("latency/p99", "latency");
        // +30 % with tiny spread: significant, fails.
        let r = one(lat, &[100.0, 101.0, 99.0], &[130.0, 131.0, 129.0]);
        assert_eq!(r.level, Level::Fail, "{}", r.reason);
        assert!(r.ttest.unwrap().p < 0.01);
        // +30 % on average but noise swamps it: never fails.
        let r = one(lat, &[100.0, 60.0, 140.0], &[130.0, 60.0, 200.0]);
        assert!(r.ttest.unwrap().p > 0.05);
        assert_eq!(r.level, Level::Pass, "{}", r.reason);
        assert!(r.reason.contains("not significant"));
        // Significant at 0.05 but not at 0.01: capped at warn.
        let r = one(lat, &[100.0, 102.0, 98.0], &[130.0, 120.0, 140.0]);
        let p = r.ttest.unwrap().p;
        assert!((0.01..0.05).contains(&p), "p = {p}");
        assert_eq!(r.level, Level::Warn, "{}", r.reason);
        assert!(r.reason.contains("warn only"));
    }

    #[test]
    fn one_sided_metrics_are_listed_not_judged() {
        let mut base = RunSet::default();
        base.add_run(
            "b".into(),
            BTreeMap::from([(key("a", "count"), 1.0), (key("gone", "latency"), 1.0)]),
        );
        let mut new = RunSet::default();
        new.add_run(
            "n".into(),
            BTreeMap::from([(key("a", "count"), 1.0), (key("added", "memory"), 1.0)]),
        );
        let cmp = Comparison::judge(&base, &new, &Thresholds::default());
        assert_eq!(cmp.rows.len(), 1);
        assert_eq!(cmp.only_base, vec![key("gone", "latency")]);
        assert_eq!(cmp.only_new, vec![key("added", "memory")]);
        assert_eq!(cmp.overall(), Level::Pass);
    }

    #[test]
    fn zero_bases_and_formatting() {
        assert_eq!(relative_change_pct(0.0, 0.0), 0.0);
        assert_eq!(relative_change_pct(0.0, 3.0), f64::INFINITY);
        assert_eq!(relative_change_pct(-10.0, -5.0), 50.0);
        assert_eq!(pct(12.345), "+12.3 %");
        assert_eq!(pct(-4.0), "−4.0 %");
        assert_eq!(pct(f64::INFINITY), "+∞ %");
        assert_eq!(one(("latency/p50", "latency"), &[0.0], &[5.0]).level, Level::Fail);
    }
}
