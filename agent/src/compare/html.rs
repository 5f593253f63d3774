//! `compare --report FILE.html`: the comparison as a page of the same kind
//! as a run's (`report::html`). BMF files hold one value per metric and
//! run, no per-interval series, so the page shows the judged metrics (each
//! side's value, change, p, verdict, why) and the one-sided ones, and says
//! that the timelines are on each run's own `--report` page.

use serde_json::{Value, json};

use super::{
    render::{Labels, headline, ordered, p_column},
    verdict::{Comparison, pct},
};
use crate::report::html::page;

/// What the page says in place of the timelines.
pub const TIMELINES_NOTE: &str = "BMF files carry one value per metric and run, not the \
     per-interval series: the timelines (CPU, RSS, requests/s, p50/p99, errors by phase) are on \
     each run's own page (perf-agent attach/run --report).";

pub fn render(cmp: &Comparison, labels: &Labels) -> String {
    let rows: Vec<Value> = ordered(cmp)
        .into_iter()
        .map(|r| {
            json!({
                "id": r.key.id, "measure": r.key.measure,
                "base": finite(r.base.mean), "new": finite(r.new.mean),
                "n_base": r.base.n, "n_new": r.new.n,
                "change": pct(r.change_pct), "p": p_column(r),
                "level": r.level.label(), "reason": r.reason,
            })
        })
        .collect();
    let ids = |keys: &[super::samples::MetricKey]| -> Vec<String> {
        keys.iter().map(|k| format!("{} ({})", k.id, k.measure)).collect()
    };
    let data = json!({
        "kind": "compare",
        "base_label": labels.base,
        "new_label": labels.new,
        "headline": headline(cmp, labels),
        "overall": cmp.overall().label(),
        "timelines_note": TIMELINES_NOTE,
        "rows": rows,
        "only_base": ids(&cmp.only_base),
        "only_new": ids(&cmp.only_new),
    });
    page(&format!("perf-agent compare: {} against {}", labels.new, labels.base), &data)
}

fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        compare::{
            samples::{MetricKey, RunSet},
            thresholds::Thresholds,
        },
        report::html::read_data,
    };

    #[test]
    fn rows_carry_both_sides_and_the_verdict_failures_first() {
        let key = |id: &str, m: &str| MetricKey { id: id.into(), measure: m.into() };
        let side = |lat: f64, rss: f64, extra: &str| {
            let mut set = RunSet::default();
            let mut run = BTreeMap::from([
                (key("latency/p99", "latency"), lat),
                (key("memory/rss", "memory"), rss),
            ]);
            run.insert(key(extra, "count"), 1.0);
            set.add_run("x.json".into(), run);
            set
        };
        let cmp = Comparison::judge(
            &side(100.0, 10.0, "a"),
            &side(200.0, 10.0, "b"),
            &Thresholds::default(),
        );
        let labels = Labels { base: "v1 <old>".into(), new: "v2".into() };
        let data = read_data(&render(&cmp, &labels)).unwrap();
        assert_eq!(data["overall"], "FAIL");
        assert_eq!(data["rows"][0]["id"], "latency/p99");
        assert_eq!(
            (data["rows"][0]["base"].as_f64(), data["rows"][0]["new"].as_f64()),
            (Some(100.0), Some(200.0))
        );
        assert_eq!(data["rows"][0]["level"], "FAIL");
        assert_eq!(data["rows"][1]["level"], "pass");
        assert_eq!(data["only_base"], json!(["a (count)"]));
        assert_eq!(data["base_label"], "v1 <old>");
    }
}
