//! k6's `--out json` results: newline-delimited JSON, one `Metric` line per
//! metric, then `Point` lines. Only the request metrics are kept
//! (`http_reqs`, `http_req_duration`, `http_req_waiting`), each point with
//! its time (when the response ended), value and scenario. Malformed and
//! truncated lines (k6 killed mid-write) are counted, never fatal. Pure.

use std::io::BufRead;

use serde::Deserialize;

use super::time::parse_rfc3339_ns;
use crate::percentile::Percentiles;

/// One request as k6 saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientRequest {
    /// When the response ended, ns since the Unix epoch.
    pub t_epoch_ns: i128,
    /// `http_req_duration`, ns.
    pub duration_ns: u64,
    /// `http_req_waiting` (time to first byte), ns.
    pub waiting_ns: u64,
    /// Index into [`ClientResults::scenarios`].
    pub scenario: u16,
}

#[derive(Clone, Debug, Default)]
pub struct ClientResults {
    /// `http_req_duration` points, joined with the `http_req_waiting` point of
    /// the same request (k6 writes them together, with the same time and tags).
    pub requests: Vec<ClientRequest>,
    /// `http_reqs` points: the count k6 reports.
    pub http_reqs: u64,
    pub scenarios: Vec<String>,
    /// Lines that were not valid JSON or not a known shape.
    pub malformed: u64,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    metric: &'a str,
    data: Option<PointData<'a>>,
}

#[derive(Deserialize)]
struct PointData<'a> {
    #[serde(borrow)]
    time: Option<std::borrow::Cow<'a, str>>,
    value: Option<f64>,
    #[serde(default, borrow)]
    tags: Option<Tags<'a>>,
}

#[derive(Deserialize)]
struct Tags<'a> {
    #[serde(default, borrow)]
    scenario: Option<std::borrow::Cow<'a, str>>,
}

fn ms_to_ns(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 { (ms * 1e6).round() as u64 } else { 0 }
}

impl ClientResults {
    /// Parses a whole results stream.
    pub fn parse(reader: impl BufRead) -> ClientResults {
        let mut r = ClientResults::default();
        for line in reader.split(b'\n') {
            match line {
                Ok(bytes) => r.push_line(&bytes),
                Err(_) => r.malformed += 1,
            }
        }
        r
    }

    fn scenario_index(&mut self, name: &str) -> u16 {
        match self.scenarios.iter().position(|s| s == name) {
            Some(i) => i as u16,
            None => {
                self.scenarios.push(name.to_string());
                (self.scenarios.len() - 1) as u16
            }
        }
    }

    pub fn push_line(&mut self, bytes: &[u8]) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let Ok(line) = serde_json::from_slice::<Line>(bytes) else {
            self.malformed += 1;
            return;
        };
        if line.kind != "Point" {
            return; // Metric definitions
        }
        let Some(data) = line.data else {
            self.malformed += 1;
            return;
        };
        let (Some(time), Some(value)) =
            (data.time.as_deref().and_then(parse_rfc3339_ns), data.value)
        else {
            self.malformed += 1;
            return;
        };
        let scenario = data.tags.and_then(|t| t.scenario).unwrap_or_default();
        match line.metric {
            "http_reqs" => self.http_reqs += 1,
            "http_req_duration" => {
                let scenario = self.scenario_index(&scenario);
                self.requests.push(ClientRequest {
                    t_epoch_ns: time,
                    duration_ns: ms_to_ns(value),
                    waiting_ns: 0,
                    scenario,
                });
            }
            "http_req_waiting" => {
                // Join with the duration point of the same request, written
                // just before it with the same timestamp.
                if let Some(last) = self
                    .requests
                    .iter_mut()
                    .rev()
                    .take(8)
                    .find(|r| r.t_epoch_ns == time && r.waiting_ns == 0)
                {
                    last.waiting_ns = ms_to_ns(value);
                }
            }
            _ => {}
        }
    }

    /// The requests that ended in `(start, end]` (epoch ns).
    pub fn window(&self, start_epoch_ns: i128, end_epoch_ns: i128) -> ClientStats {
        let in_window: Vec<&ClientRequest> = self
            .requests
            .iter()
            .filter(|r| r.t_epoch_ns > start_epoch_ns && r.t_epoch_ns <= end_epoch_ns)
            .collect();
        let mut duration: Vec<u64> = in_window.iter().map(|r| r.duration_ns).collect();
        let mut waiting: Vec<u64> = in_window.iter().map(|r| r.waiting_ns).collect();
        ClientStats {
            count: in_window.len() as u64,
            duration: Percentiles::of(&mut duration),
            waiting: Percentiles::of(&mut waiting),
            cpu_percent: None,
        }
    }

    /// First and last request time of each scenario (epoch ns), for results
    /// from a k6 run the agent did not start (no plan, no start markers).
    pub fn scenario_spans(&self) -> Vec<(String, i128, i128)> {
        self.scenarios
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let times =
                    self.requests.iter().filter(|r| r.scenario as usize == i).map(|r| r.t_epoch_ns);
                let (lo, hi) =
                    times.fold((i128::MAX, i128::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
                (lo <= hi).then(|| (name.clone(), lo, hi))
            })
            .collect()
    }
}

/// k6's client-side numbers for one window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientStats {
    pub count: u64,
    pub duration: Percentiles,
    pub waiting: Percentiles,
    /// k6's own CPU over the window, % of one core (`k6::cpu`); `None`
    /// when the agent did not run k6 (`--k6-results`).
    pub cpu_percent: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from `k6 run --out json` (k6 v1.1.0), one request.
    const SAMPLE: &str = r#"{"type":"Metric","data":{"name":"http_reqs","type":"counter","contains":"default","thresholds":[],"submetrics":null},"metric":"http_reqs"}
{"metric":"http_reqs","type":"Point","data":{"time":"2026-11-22T15:10:00.139637468Z","value":1,"tags":{"expected_response":"true","group":"","method":"GET","name":"http://127.0.0.1:18099/","proto":"HTTP/1.1","scenario":"ramp","status":"200","url":"http://127.0.0.1:18099/"}}}
{"metric":"http_req_duration","type":"Point","data":{"time":"2026-11-22T15:10:00.139637468Z","value":0.123456,"tags":{"scenario":"ramp","status":"200"}}}
{"metric":"http_req_waiting","type":"Point","data":{"time":"2026-11-22T15:10:00.139637468Z","value":0.1,"tags":{"scenario":"ramp","status":"200"}}}
{"metric":"vus","type":"Point","data":{"time":"2026-11-22T15:10:00.937875928Z","value":4,"tags":{}}}
"#;

    #[test]
    fn parses_recorded_points() {
        let r = ClientResults::parse(SAMPLE.as_bytes());
        assert_eq!(r.http_reqs, 1);
        assert_eq!(r.requests.len(), 1);
        assert_eq!(r.requests[0].duration_ns, 123_456);
        assert_eq!(r.requests[0].waiting_ns, 100_000);
        assert_eq!(r.scenarios, ["ramp"]);
        assert_eq!(r.malformed, 0);
        let w = r.window(0, i128::MAX);
        assert_eq!(w.count, 1);
        assert_eq!(w.duration.p50, 123_456.0);
    }

    #[test]
    fn malformed_and_truncated_lines_are_counted() {
        let mut text = String::from(SAMPLE);
        text.push_str("not json at all\n");
        text.push_str("{\"metric\":\"http_reqs\",\"type\":\"Point\",\"data\":{\"time\":\"bad\",\"value\":1}}\n");
        text.push_str("{\"metric\":\"http_reqs\",\"type\":\"Point\",\"data\":{\"time\":\"2026-11-22T15:10:00Z\"}}\n");
        text.push_str("{\"metric\":\"http_reqs\",\"type\":\"Point\",\"da"); // k6 killed mid-line
        let r = ClientResults::parse(text.as_bytes());
        assert_eq!(r.http_reqs, 1);
        assert_eq!(r.malformed, 4);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let len = (seed % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    const ALPHABET: &[u8] = b"{}[]\":,.0123456789aeinrtuyPTZ-\n ";
                    ALPHABET[(seed % ALPHABET.len() as u64) as usize]
                })
                .collect();
            let _ = ClientResults::parse(bytes.as_slice());
        }
    }

    #[test]
    fn scenario_spans_from_points() {
        let r = ClientResults::parse(SAMPLE.as_bytes());
        let spans = r.scenario_spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].1, spans[0].2);
    }
}
