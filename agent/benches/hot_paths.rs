//! Criterion micro-benchmarks of perf-agent's user-space hot paths: what runs
//! per event (draining an event from the per-CPU event ring into the request
//! log) and what
//! runs per report over a whole run (windows, percentiles, phases, k6 results).
//!
//! `cargo xtask bench` runs them in a quick mode and copies the estimates into
//! `target/bench/bench.json`; `cargo bench -p perf-agent --bench hot_paths`
//! runs them with Criterion's defaults. Inputs are synthetic but shaped like a
//! real run (ordered timestamps, ~25 µs latencies, 100 ms samples) and
//! generated from a fixed seed, so every run measures the same work.

use std::hint::black_box;
use std::io::Write as _;

use std::ptr::NonNull;

use agent_common::{EventRingPos, EventSlot, NetEvent, event_kind};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use perf_agent::event_ring::EventRing;
use perf_agent::k6::results::ClientResults;
use perf_agent::percentile::Percentiles;
use perf_agent::phases::{self, Phase};
use perf_agent::requests::RequestLog;
use perf_agent::timeline::{self, Sample};

const MS: u64 = 1_000_000;
/// Requests in the "whole run" inputs: 100 k, ~10 s at 10 k req/s.
const REQUESTS: usize = 100_000;

/// xorshift64*: deterministic, dependency-free noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Roughly log-normal-ish latency: 10..~200 µs, mostly ~25 µs.
    fn latency_ns(&mut self) -> u64 {
        let base = 10_000 + self.next() % 30_000;
        if self.next().is_multiple_of(100) { base * 5 } else { base }
    }
}

/// `n` request events, one every 100 µs, as the kernel side reports them.
fn events(n: usize) -> Vec<NetEvent> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n as u64)
        .map(|i| {
            let start = 1_000 * MS + i * 100_000;
            let latency = rng.latency_ns();
            NetEvent {
                start_ns: start,
                first_response_ns: start + latency - latency / 10,
                end_ns: start + latency,
                upstream_ns: 0,
                bytes_in: 78,
                bytes_out: 140,
                kind: event_kind::REQUEST,
                status: 200,
                flags: 0,
                seq: i as u32,
            }
        })
        .collect()
}

/// The events committed in one CPU's part of the event ring, laid out as the
/// kernel side writes them (slot `p`, `commit = p + 1`), so draining reads
/// them the way `NetProbe::drain` does.
fn ring_slots(events: &[NetEvent]) -> Vec<EventSlot> {
    let slots = events.len().next_power_of_two();
    let mut ring = vec![EventSlot::default(); slots];
    for (p, e) in events.iter().enumerate() {
        ring[p] = EventSlot { event: *e, commit: p as u64 + 1 };
    }
    ring
}

/// A log as a run leaves it: folded every 100 ms (1 000 events), two ticks back.
fn log_of(n: usize) -> RequestLog {
    let mut log = RequestLog::default();
    for (i, e) in events(n).iter().enumerate() {
        log.push(e);
        if i % 1_000 == 999 {
            log.fold(e.end_ns.saturating_sub(200 * MS));
        }
    }
    log
}

/// A sample every 100 ms over `secs`, with growing counters.
fn samples(secs: u64) -> Vec<Sample> {
    (0..=secs * 10)
        .map(|i| Sample {
            t_ns: 1_000 * MS + i * 100 * MS,
            cpu_ns: i * 30 * MS,
            rss_bytes: 8 << 20,
            peak_rss_bytes: 9 << 20,
            minor_faults: i * 3,
            proc_cpu_ns: i * 30 * MS,
            proc_rss_bytes: 8 << 20,
            proc_hwm_bytes: 9 << 20,
            proc_minor_faults: i * 3,
            ..Default::default()
        })
        .collect()
}

/// `points` requests as k6's `--out json` writes them: the metric
/// definitions once, then per request the points k6 emits (http_reqs, the
/// six timing trends, data sent/received, iterations), with full tags.
fn k6_output(points: usize) -> Vec<u8> {
    let metrics = [
        "http_reqs",
        "http_req_duration",
        "http_req_blocked",
        "http_req_connecting",
        "http_req_tls_handshaking",
        "http_req_sending",
        "http_req_waiting",
        "http_req_receiving",
        "http_req_failed",
        "data_sent",
        "data_received",
        "iteration_duration",
        "iterations",
    ];
    let mut out = Vec::new();
    for m in metrics {
        writeln!(
            out,
            r#"{{"type":"Metric","data":{{"name":"{m}","type":"trend","contains":"time","thresholds":[],"submetrics":null}},"metric":"{m}"}}"#
        )
        .unwrap();
    }
    let mut rng = Rng(42);
    for i in 0..points {
        let secs = 10 + i / 5_000;
        let nanos = (i % 5_000) * 200_000 + (rng.next() % 1_000) as usize;
        let time = format!("2025-06-01T12:00:{secs:02}.{nanos:09}Z");
        let duration_ms = rng.latency_ns() as f64 / 1e6;
        let tags = r#"{"expected_response":"true","group":"","method":"GET","name":"http://127.0.0.1:8080/","proto":"HTTP/1.1","scenario":"steady","status":"200","url":"http://127.0.0.1:8080/"}"#;
        for m in metrics {
            let value = match m {
                "http_reqs" | "iterations" => 1.0,
                "http_req_duration" => duration_ms,
                "http_req_waiting" => duration_ms * 0.9,
                "data_sent" => 78.0,
                "data_received" => 140.0,
                _ => 0.0,
            };
            writeln!(
                out,
                r#"{{"metric":"{m}","type":"Point","data":{{"time":"{time}","value":{value},"tags":{tags}}}}}"#
            )
            .unwrap();
        }
    }
    out
}

fn request_log(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_log");
    let evs = events(10_000);
    let mut slots = ring_slots(&evs);
    g.throughput(Throughput::Elements(evs.len() as u64));
    // What NetProbe::drain does per event: the commit check and volatile
    // copy out of the mapped ring, then RequestLog::push (validation +
    // conversion + Vec push).
    g.bench_function("drain_push", |b| {
        b.iter_batched_ref(
            || {
                let pos = Box::new(EventRingPos { head: evs.len() as u64, ..Default::default() });
                let log = RequestLog::default();
                (pos, log)
            },
            |(pos, log)| {
                // SAFETY: one CPU of `slots.len()` slots (a power of two) and
                // its positions, both alive for the whole drain.
                let mut ring = unsafe {
                    EventRing::new(
                        NonNull::new(slots.as_mut_ptr()).unwrap(),
                        NonNull::from(&mut **pos),
                        1,
                        slots.len() as u64,
                    )
                };
                let n = ring.drain(false, |e| log.push(black_box(e)));
                assert_eq!(n, evs.len() as u64);
            },
            BatchSize::LargeInput,
        )
    });
    // push alone into a growing log (reallocations included, as in a real run).
    g.bench_function("push", |b| {
        b.iter_batched_ref(
            RequestLog::default,
            |log| {
                for e in &evs {
                    log.push(black_box(e));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("request_log");
    g.sample_size(20);
    let log = log_of(REQUESTS);
    let ends: Vec<u64> = events(REQUESTS).iter().map(|e| e.end_ns).collect();
    let (first, last) = (ends.iter().min().copied().unwrap(), ends.iter().max().copied().unwrap());
    g.bench_function("window_100k", |b| {
        b.iter(|| log.window(black_box(first - 1), black_box(last)))
    });
    g.finish();
}

fn percentiles(c: &mut Criterion) {
    let mut g = c.benchmark_group("percentile");
    g.sample_size(20);
    let mut rng = Rng(7);
    let values: Vec<u64> = (0..REQUESTS).map(|_| rng.latency_ns()).collect();
    g.bench_function("of_100k", |b| {
        b.iter_batched_ref(|| values.clone(), |v| Percentiles::of(v), BatchSize::LargeInput)
    });
    g.finish();
}

fn phase_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("phases");
    g.sample_size(20);
    // A 10-minute run sampled every 100 ms, 100 k requests, five k6 phases.
    let samples = samples(600);
    let log = log_of(REQUESTS);
    let t0 = samples[0].t_ns;
    let edges = [0, 30, 90, 450, 510, 600].map(|s| t0 + s * 1_000 * MS);
    let phases: Vec<Phase> = ["idle", "ramp-up", "steady", "ramp-down", "cooldown"]
        .iter()
        .enumerate()
        .map(|(i, name)| Phase::new(*name, edges[i], edges[i + 1]))
        .collect();
    g.bench_function("measure_5_phases_100k", |b| {
        b.iter(|| phases::measure(black_box(&phases), &samples, &log))
    });
    g.finish();

    let mut g = c.benchmark_group("timeline");
    let start = t0 + 90_050 * MS;
    let end = t0 + 450_050 * MS;
    g.bench_function("window_between_6000_samples", |b| {
        b.iter(|| timeline::window_between(black_box(&samples), black_box(start), black_box(end)))
    });
    g.finish();
}

fn k6_results(c: &mut Criterion) {
    let mut g = c.benchmark_group("k6");
    g.sample_size(20);
    // 300 requests × 13 points + 13 metric lines: 3 913 lines.
    let text = k6_output(300);
    let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
    g.throughput(Throughput::Elements(lines));
    g.bench_function("results_parse_lines", |b| {
        b.iter(|| ClientResults::parse(black_box(&text[..])))
    });
    g.finish();
}

criterion_group!(benches, request_log, percentiles, phase_lookup, k6_results);
criterion_main!(benches);
