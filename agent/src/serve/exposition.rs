//! `GET /metrics`: the Prometheus text format 0.0.4, or OpenMetrics 1.0
//! when the scraper asks for it (`Accept: application/openmetrics-text`).
//! Names and units follow Prometheus and OpenTelemetry: base units
//! (seconds, bytes), `_total` counters, `le` buckets. Process metrics are
//! read from `/proc` now, at scrape time.

use std::fmt::Write as _;

use super::registry::{Histogram, Registry, STATUS_CLASSES, Target};
use crate::procfs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: &str) -> Format {
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The agent's own numbers, read by the sampling loop.
#[derive(Clone, Debug, Default)]
pub struct AgentCounters {
    /// Events lost: ring full, connections untracked, failed inserts.
    pub dropped_events: u64,
    /// Execs that matched a selector while `--max-targets` were followed.
    pub targets_refused: u64,
    /// Run time of each kernel program (`kernel.bpf_stats_enabled=1`), ns.
    pub program_ns: Vec<(String, u64)>,
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds as Prometheus writes floats.
fn seconds(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}

struct Writer {
    out: String,
    format: Format,
}

impl Writer {
    /// `# HELP` and `# TYPE` of a family. OpenMetrics names a counter
    /// family without its `_total` suffix.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let name = match (self.format, kind) {
            (Format::OpenMetrics, "counter") => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
    }

    fn histogram(&mut self, name: &str, labels: &str, bounds: &[f64], h: &Histogram) {
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = bounds.get(i).map_or_else(|| "+Inf".to_string(), |b| format!("{b}"));
            self.sample(&format!("{name}_bucket"), &format!("{labels},le=\"{le}\""), cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, seconds(h.sum_ns));
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

fn target_labels(t: &Target) -> String {
    format!(
        "pid=\"{}\",comm=\"{}\",exe=\"{}\",selector=\"{}\"",
        t.pid,
        escape(&t.comm),
        escape(&t.exe),
        escape(&t.selector)
    )
}

/// `/proc` of a live target, if it is still the same process.
struct ProcNow {
    stat: procfs::ProcStat,
    status: procfs::ProcStatus,
}

fn proc_now(t: &Target) -> Option<ProcNow> {
    if t.exited_ns.is_some() {
        return None;
    }
    let stat = procfs::read_stat(t.pid).ok()?;
    if stat.starttime_ticks != t.starttime_ticks || stat.state == 'Z' {
        return None;
    }
    Some(ProcNow { stat, status: procfs::read_status(t.pid).ok()? })
}

/// Boot time, Unix seconds (`btime` of `/proc/stat`).
fn boot_time_s() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok()))
        .unwrap_or(0)
}

/// The whole exposition.
pub fn render(reg: &Registry, agent: &AgentCounters, format: Format) -> String {
    let mut w = Writer { out: String::with_capacity(16 << 10), format };
    let targets: Vec<(&Target, String)> =
        reg.targets.values().map(|t| (t, target_labels(t))).collect();
    requests(&mut w, reg, &targets);
    process(&mut w, &targets);
    own(&mut w, reg, agent);
    if format == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

/// Which histogram of a target a family shows.
type HistogramOf = fn(&Target) -> &Histogram;

/// The last families of [`requests`]' histograms, queue, drain and
/// delivered, are measured only with `--delivery`.
const DELIVERY_FAMILIES: usize = 3;

fn requests(w: &mut Writer, reg: &Registry, targets: &[(&Target, String)]) {
    w.family(
        "http_server_requests_total",
        "counter",
        "Requests served, seen at the socket (HTTP/1 status class; reset: reset before a response).",
    );
    for (t, labels) in targets {
        for (class, n) in STATUS_CLASSES.iter().zip(t.requests) {
            w.sample(
                "http_server_requests_total",
                &format!("{labels},status_class=\"{class}\""),
                n,
            );
        }
    }
    let histograms: [(&str, &str, HistogramOf); 7] = [
        (
            "http_server_request_duration_seconds",
            "Time from a request's first byte read to its response's last byte written.",
            |t| &t.duration,
        ),
        (
            "http_server_time_to_first_byte_seconds",
            "Time from a request's first byte read to its response's first byte written.",
            |t| &t.ttfb,
        ),
        (
            "http_client_request_duration_seconds",
            "Upstream calls made by the target: first byte sent to last byte received.",
            |t| &t.upstream,
        ),
        (
            "perf_agent_proxy_overhead_seconds",
            "Requests that waited on upstream calls: their duration minus that wait.",
            |t| &t.overhead,
        ),
        (
            "perf_agent_request_queue_seconds",
            "Acknowledged responses: their request's first byte readable to its first read.",
            |t| &t.queue,
        ),
        (
            "perf_agent_response_drain_seconds",
            "Acknowledged responses: last byte written to the peer's acknowledgement of it.",
            |t| &t.drain,
        ),
        (
            "perf_agent_request_delivered_seconds",
            "Acknowledged responses: request's first byte readable to the response acknowledged.",
            |t| &t.delivered,
        ),
    ];
    // The delivery families only with --delivery: without its hooks they
    // would be empty histograms that look like "nothing waited".
    let shown = if reg.delivery { histograms.len() } else { histograms.len() - DELIVERY_FAMILIES };
    for (name, help, of) in histograms.into_iter().take(shown) {
        w.family(name, "histogram", help);
        for (t, labels) in targets {
            w.histogram(name, labels, &reg.buckets, of(t));
        }
    }
    w.family(
        "perf_agent_startup_first_response_seconds",
        "gauge",
        "From the target's exec to the end of its first response (targets seen at their exec).",
    );
    for (t, labels) in targets {
        if t.exec_ns != 0 && t.first_response_ns > t.exec_ns {
            w.sample(
                "perf_agent_startup_first_response_seconds",
                labels,
                seconds(t.first_response_ns - t.exec_ns),
            );
        }
    }
}

fn process(w: &mut Writer, targets: &[(&Target, String)]) {
    let ticks = procfs::clock_ticks_per_sec();
    let boot = boot_time_s();
    let live: Vec<(ProcNow, &String)> =
        targets.iter().filter_map(|(t, l)| Some((proc_now(t)?, l))).collect();
    w.family("process_cpu_seconds_total", "counter", "User and system CPU time (/proc/PID/stat).");
    for (p, l) in &live {
        w.sample("process_cpu_seconds_total", l, seconds(p.stat.cpu_time_ns(ticks)));
    }
    w.family("process_resident_memory_bytes", "gauge", "Resident set size (VmRSS).");
    for (p, l) in &live {
        w.sample("process_resident_memory_bytes", l, p.status.vm_rss);
    }
    w.family(
        "process_page_faults_total",
        "counter",
        "Page faults (/proc/PID/stat), minor and major.",
    );
    for (p, l) in &live {
        w.sample("process_page_faults_total", &format!("{l},type=\"minor\""), p.stat.minflt);
        w.sample("process_page_faults_total", &format!("{l},type=\"major\""), p.stat.majflt);
    }
    w.family("process_start_time_seconds", "gauge", "Start time, Unix seconds.");
    for (p, l) in &live {
        let start = boot as f64 + p.stat.starttime_ticks as f64 / ticks as f64;
        w.sample("process_start_time_seconds", l, start);
    }
}

fn own(w: &mut Writer, reg: &Registry, agent: &AgentCounters) {
    w.family("perf_agent_targets", "gauge", "Processes followed now.");
    let _ = writeln!(w.out, "perf_agent_targets {}", reg.live_count());
    let counters = [
        (
            "perf_agent_dropped_events_total",
            "Requests lost in the kernel (ring full, untracked connections, failed inserts).",
            agent.dropped_events,
        ),
        (
            "perf_agent_targets_refused_total",
            "Processes that matched a selector while --max-targets were followed.",
            agent.targets_refused,
        ),
        (
            "perf_agent_unattributed_events_total",
            "Requests of connections whose owner is no longer followed.",
            reg.unattributed,
        ),
    ];
    for (name, help, value) in counters {
        w.family(name, "counter", help);
        let _ = writeln!(w.out, "{name} {value}");
    }
    w.family(
        "perf_agent_bpf_seconds_total",
        "counter",
        "Run time of each kernel program (counted while kernel.bpf_stats_enabled=1).",
    );
    for (program, ns) in &agent.program_ns {
        w.sample(
            "perf_agent_bpf_seconds_total",
            &format!("program=\"{}\"", escape(program)),
            seconds(*ns),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::registry::DEFAULT_BUCKETS;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    fn registry() -> Registry {
        let mut r = Registry::new(DEFAULT_BUCKETS.to_vec());
        r.add((7, 1), "comm=we\"ird".into(), 0, "we\"ird".into(), "/srv/a b".into());
        r
    }

    #[test]
    fn text_format_has_help_type_and_cumulative_buckets() {
        let text = render(&registry(), &AgentCounters::default(), Format::Text);
        assert!(text.contains("# TYPE http_server_requests_total counter\n"));
        assert!(text.contains(
            "http_server_requests_total{pid=\"7\",comm=\"we\\\"ird\",exe=\"/srv/a b\",selector=\"comm=we\\\"ird\",status_class=\"2xx\"} 0\n"
        ));
        assert!(text.contains("le=\"0.005\"} 0\n") && text.contains("le=\"+Inf\"} 0\n"));
        assert!(text.contains("perf_agent_targets 1\n"));
        assert!(!text.contains("# EOF"));
        // Every sample line belongs to a family declared before it.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.iter().any(|f| name.starts_with(f.as_str())), "{line}");
            }
        }
    }

    #[test]
    fn delivery_families_only_with_delivery() {
        let families = [
            "perf_agent_request_queue_seconds",
            "perf_agent_response_drain_seconds",
            "perf_agent_request_delivered_seconds",
        ];
        let off = render(&registry(), &AgentCounters::default(), Format::Text);
        for f in families {
            assert!(!off.contains(f), "{f} exported without --delivery");
        }
        assert!(off.contains("# TYPE perf_agent_proxy_overhead_seconds histogram\n"));
        let mut on = registry();
        on.delivery = true;
        let on = render(&on, &AgentCounters::default(), Format::Text);
        for f in families {
            assert!(on.contains(&format!("# TYPE {f} histogram\n")), "{f} missing with --delivery");
        }
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = render(&registry(), &AgentCounters::default(), Format::OpenMetrics);
        assert!(text.contains("# TYPE http_server_requests counter\n"));
        assert!(text.contains("http_server_requests_total{"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(
            Format::from_accept("application/openmetrics-text;version=1.0.0"),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), Format::Text);
    }
}
