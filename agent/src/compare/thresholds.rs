//! What counts as a regression: per category (from the BMF measure) and per
//! metric-id glob, the worsening in percent that warns and that fails, and
//! the p-values that make a change significant.
//!
//! Defaults are REQ-OBS-001's: latency +10 % / +25 %, memory +15 % / +50 %,
//! throughput −10 % / −25 %, binary size +5 % / +10 %, p < 0.05 to warn and
//! p < 0.01 to fail. CPU and counts have no default: they are listed, not
//! judged, until a thresholds file gives them limits; neither are `agent/*`
//! (the agent's own bookkeeping: the run's length, its programs' cost),
//! a built-in rule after the file's. A file (TOML or JSON):
//!
//! ```toml
//! [significance]          # optional
//! warn_p = 0.05
//! fail_p = 0.01
//! min_samples = 3         # per side, for the t-test
//!
//! [categories]            # each one given replaces its default; {} = not judged
//! cpu = { warn = 20, fail = 50 }
//!
//! [[metric]]              # first matching glob wins, before the categories
//! id = "startup/*"        # `*` any characters (`/` included), `?` one
//! warn = 20
//! fail = 40
//! direction = "higher-is-worse"   # optional: or "lower-is-worse"
//! ```

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// A family of metrics, from its BMF measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Latency,
    Memory,
    Throughput,
    BinarySize,
    Cpu,
    Count,
    /// A measure perf-agent does not write.
    Other,
}

impl Category {
    pub fn of_measure(slug: &str) -> Category {
        match slug {
            "latency" => Category::Latency,
            "memory" => Category::Memory,
            "throughput" => Category::Throughput,
            "file-size" => Category::BinarySize,
            "cpu-percent" | "cpu-time" => Category::Cpu,
            "count" => Category::Count,
            _ => Category::Other,
        }
    }

    /// Throughput regresses downwards; everything else upwards.
    pub fn direction(self) -> Direction {
        match self {
            Category::Throughput => Direction::LowerIsWorse,
            _ => Direction::HigherIsWorse,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    HigherIsWorse,
    LowerIsWorse,
}

impl Direction {
    /// +1 when a rise is worse, −1 when a fall is.
    pub fn sign(self) -> f64 {
        match self {
            Direction::HigherIsWorse => 1.0,
            Direction::LowerIsWorse => -1.0,
        }
    }
}

/// Worsening, in percent of the base value, that warns and that fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub warn: Option<f64>,
    pub fail: Option<f64>,
}

impl Limits {
    const fn new(warn: f64, fail: f64) -> Limits {
        Limits { warn: Some(warn), fail: Some(fail) }
    }

    pub fn judged(&self) -> bool {
        self.warn.is_some() || self.fail.is_some()
    }
}

/// A per-metric rule of a thresholds file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Glob on the metric id (`latency/*`, `*@steady`).
    pub id: String,
    #[serde(flatten)]
    pub limits: Limits,
    pub direction: Option<Direction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Significance {
    pub warn_p: f64,
    pub fail_p: f64,
    /// Samples needed on each side before the t-test is used.
    pub min_samples: usize,
}

impl Default for Significance {
    fn default() -> Self {
        Significance { warn_p: 0.05, fail_p: 0.01, min_samples: 3 }
    }
}

/// The thresholds in force: the file's, over the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub significance: Significance,
    pub categories: BTreeMap<Category, Limits>,
    pub rules: Vec<Rule>,
}

/// How one metric is judged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub limits: Limits,
    pub direction: Direction,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            significance: Significance::default(),
            categories: BTreeMap::from([
                (Category::Latency, Limits::new(10.0, 25.0)),
                (Category::Memory, Limits::new(15.0, 50.0)),
                (Category::Throughput, Limits::new(10.0, 25.0)),
                (Category::BinarySize, Limits::new(5.0, 10.0)),
            ]),
            rules: vec![Rule { id: "agent/*".into(), limits: Limits::default(), direction: None }],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdsFile {
    #[serde(default)]
    significance: Significance,
    #[serde(default)]
    categories: BTreeMap<Category, Limits>,
    #[serde(default)]
    metric: Vec<Rule>,
}

impl Thresholds {
    /// Reads a thresholds file: `.toml` or `.json` by its extension (any
    /// other name: JSON if it parses as JSON, else TOML).
    pub fn load(path: &Path) -> anyhow::Result<Thresholds> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--thresholds {}: cannot read", path.display()))?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        Thresholds::parse(&text, ext).with_context(|| format!("--thresholds {}", path.display()))
    }

    /// `format`: "toml", "json", or anything else to guess.
    pub fn parse(text: &str, format: &str) -> anyhow::Result<Thresholds> {
        let file: ThresholdsFile = match format {
            "toml" => toml::from_str(text).context("invalid TOML thresholds")?,
            "json" => serde_json::from_str(text).context("invalid JSON thresholds")?,
            _ => match serde_json::from_str(text) {
                Ok(f) => f,
                Err(_) => toml::from_str(text).context("neither JSON nor TOML thresholds")?,
            },
        };
        let defaults = Thresholds::default();
        let mut categories = defaults.categories;
        categories.extend(file.categories);
        let th = Thresholds {
            significance: file.significance,
            categories,
            // The file's rules first: they can judge what the defaults do not.
            rules: file.metric.into_iter().chain(defaults.rules).collect(),
        };
        th.validate()?;
        Ok(th)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let s = &self.significance;
        for (name, p) in [("warn_p", s.warn_p), ("fail_p", s.fail_p)] {
            if !(p > 0.0 && p < 1.0) {
                bail!("significance.{name} = {p}: must be between 0 and 1 (e.g. 0.05)");
            }
        }
        if s.fail_p > s.warn_p {
            bail!(
                "significance.fail_p ({}) is above warn_p ({}): failing must need the stronger evidence",
                s.fail_p,
                s.warn_p
            );
        }
        if s.min_samples < 2 {
            bail!(
                "significance.min_samples = {}: a t-test needs at least 2 samples per side",
                s.min_samples
            );
        }
        let named = self.categories.iter().map(|(c, l)| (format!("categories.{c:?}"), l));
        let ruled = self.rules.iter().map(|r| (format!("metric `{}`", r.id), &r.limits));
        for (what, limits) in named.chain(ruled) {
            for v in [limits.warn, limits.fail].into_iter().flatten() {
                if !(v.is_finite() && v >= 0.0) {
                    bail!(
                        "{what}: {v} is not a percentage ≥ 0 (limits are the worsening in %, e.g. warn = 10)"
                    );
                }
            }
            if let (Some(w), Some(f)) = (limits.warn, limits.fail)
                && w > f
            {
                bail!("{what}: warn ({w} %) is above fail ({f} %)");
            }
        }
        if let Some(r) = self.rules.iter().find(|r| r.id.is_empty()) {
            bail!("a [[metric]] rule has an empty id: give a glob such as \"latency/*\" ({r:?})");
        }
        Ok(())
    }

    /// The policy for a metric: the first rule whose glob matches its id,
    /// else its measure's category.
    pub fn policy(&self, id: &str, measure: &str) -> Policy {
        let category = Category::of_measure(measure);
        let direction = category.direction();
        if let Some(rule) = self.rules.iter().find(|r| glob_match(&r.id, id)) {
            return Policy { limits: rule.limits, direction: rule.direction.unwrap_or(direction) };
        }
        let limits = self.categories.get(&category).copied().unwrap_or_default();
        Policy { limits, direction }
    }
}

/// `*` matches any run of characters (`/` and `@` included), `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and the text position it is trying to cover.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_specs() {
        let th = Thresholds::default();
        let p = th.policy("latency/p99", "latency");
        assert_eq!((p.limits, p.direction), (Limits::new(10.0, 25.0), Direction::HigherIsWorse));
        assert_eq!(th.policy("memory/peak_rss", "memory").limits, Limits::new(15.0, 50.0));
        let p = th.policy("throughput/rps_10vu", "throughput");
        assert_eq!((p.limits, p.direction), (Limits::new(10.0, 25.0), Direction::LowerIsWorse));
        assert_eq!(th.policy("binary/size", "file-size").limits, Limits::new(5.0, 10.0));
        assert!(!th.policy("cpu/percent", "cpu-percent").limits.judged(), "no spec default");
        assert!(!th.policy("http/errors", "count").limits.judged());
        assert!(!th.policy("agent/window", "latency").limits.judged(), "the run's length");
        assert!(!th.policy("agent/prog_ns/cpu", "latency").limits.judged());
        assert_eq!(th.significance, Significance { warn_p: 0.05, fail_p: 0.01, min_samples: 3 });
    }

    #[test]
    fn toml_file_rules_come_first_and_categories_replace_defaults() {
        let th = Thresholds::parse(
            r#"
            [significance]
            warn_p = 0.1
            [categories]
            cpu = { warn = 20, fail = 50 }
            latency = {}
            [[metric]]
            id = "startup/*"
            warn = 30
            [[metric]]
            id = "client/http_reqs*"
            warn = 5
            fail = 20
            direction = "lower-is-worse"
            "#,
            "toml",
        )
        .unwrap();
        assert_eq!(th.significance.warn_p, 0.1);
        assert_eq!(th.significance.fail_p, 0.01, "unset keys keep their default");
        assert_eq!(th.policy("cpu/percent", "cpu-percent").limits, Limits::new(20.0, 50.0));
        assert!(!th.policy("latency/p99", "latency").limits.judged(), "{{}} turns it off");
        assert_eq!(th.policy("memory/rss", "memory").limits, Limits::new(15.0, 50.0));
        let s = th.policy("startup/to_ready", "latency");
        assert_eq!(s.limits, Limits { warn: Some(30.0), fail: None });
        let r = th.policy("client/http_reqs@steady", "count");
        assert_eq!(r.direction, Direction::LowerIsWorse);
        let agent = Thresholds::parse("[[metric]]\nid = \"agent/prog_ns/*\"\nfail = 50", "toml");
        let agent = agent.unwrap();
        assert_eq!(agent.policy("agent/prog_ns/cpu", "latency").limits.fail, Some(50.0));
        assert!(!agent.policy("agent/window", "latency").limits.judged(), "built-in rule kept");
    }

    #[test]
    fn json_file_has_the_same_shape() {
        let th = Thresholds::parse(
            r#"{"categories": {"binary-size": {"warn": 1, "fail": 2}},
                "metric": [{"id": "startup/*"}]}"#,
            "json",
        )
        .unwrap();
        assert_eq!(th.policy("binary/size", "file-size").limits, Limits::new(1.0, 2.0));
        assert!(!th.policy("startup/to_ready", "latency").limits.judged());
        assert!(Thresholds::parse(r#"{"metric": []}"#, "").is_ok(), "guessed JSON");
        assert!(Thresholds::parse("[significance]\nwarn_p = 0.2", "").is_ok(), "guessed TOML");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, needle) in [
            ("[categories]\nlatncy = { warn = 1 }", "latncy"),
            ("[[metric]]\nid = \"x\"\nwarm = 3", "warm"),
            ("[categories]\nlatency = { warn = 30, fail = 20 }", "warn (30 %) is above fail"),
            ("[categories]\nmemory = { warn = -5 }", "not a percentage"),
            ("[significance]\nwarn_p = 5", "between 0 and 1"),
            ("[significance]\nfail_p = 0.1", "above warn_p"),
            ("[significance]\nmin_samples = 1", "at least 2"),
            ("[[metric]]\nid = \"\"", "empty id"),
            ("[[metric]]\nid = \"x\"\ndirection = \"up\"", "up"),
        ] {
            let e = format!("{:#}", Thresholds::parse(text, "toml").unwrap_err());
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("latency/*", "latency/p99"));
        assert!(glob_match("latency/*", "latency/p99@ramp-up"));
        assert!(glob_match("*@steady", "memory/rss@steady"));
        assert!(!glob_match("*@steady", "memory/rss@steady-2"));
        assert!(glob_match("latency/p9?", "latency/p95"));
        assert!(!glob_match("latency/p9?", "latency/p9"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "a-x-b-y-b-c"));
        assert!(!glob_match("a*b*c", "a-x-c-b"));
        assert!(glob_match("binary/size", "binary/size"));
    }
}
