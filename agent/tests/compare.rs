//! `perf-agent compare`: the gate from the command line (exit statuses,
//! Markdown, release notes, bad input) on written BMF files, then end to end
//! on real runs of the demo server whose second version is slower.

mod common;

use std::{fs, path::PathBuf, time::Duration};

use common::*;

/// A scratch directory of its own for one test.
fn dir(test: &str) -> PathBuf {
    let d = scratch_dir().join(format!("compare-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A BMF file with latency/p50 (ns), throughput/rps_10vu and memory/peak_rss.
fn write_run(path: &std::path::Path, p50_ns: f64, rps: f64, rss: f64) {
    let doc = serde_json::json!({
        "latency/p50": {"latency": {"value": p50_ns}},
        "throughput/rps_10vu": {"throughput": {"value": rps}},
        "memory/peak_rss": {"memory": {"value": rss}},
    });
    fs::write(path, doc.to_string()).unwrap();
}

fn compare(args: &[&str]) -> AgentOutput {
    run_agent(&[&["compare"], args].concat())
}

#[test]
fn exit_status_is_the_verdict() {
    let d = dir("exit");
    let (base, same, warn, fail) =
        (d.join("base.json"), d.join("same.json"), d.join("warn.json"), d.join("fail.json"));
    write_run(&base, 1_000_000.0, 7000.0, 50e6);
    write_run(&same, 1_050_000.0, 6900.0, 52e6);
    write_run(&warn, 1_000_000.0, 6000.0, 50e6); // throughput −14 %
    write_run(&fail, 1_000_000.0, 7000.0, 80e6); // memory +60 %
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let out = compare(&[&s(&base), &s(&same)]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("PASS: same.json against base.json"), "{}", out.stdout);
    let out = compare(&[&s(&base), &s(&warn)]);
    assert_eq!(out.code, 10, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.lines().nth(1).unwrap().starts_with("throughput/rps_10vu"),
        "{}",
        out.stdout
    );
    let out = compare(&[&s(&base), &s(&fail)]);
    assert_eq!(out.code, 11, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("memory/peak_rss") && out.stdout.contains("FAIL"));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn several_runs_a_side_use_the_t_test() {
    let d = dir("ttest");
    let (base, new) = (d.join("base"), d.join("new"));
    fs::create_dir_all(&base).unwrap();
    fs::create_dir_all(&new).unwrap();
    // +30 % latency, but one run of NEW is as fast as BASE: p ≈ 0.2.
    for (i, (b, n)) in [(1.00e6, 1.0e6), (1.02e6, 1.45e6), (0.98e6, 1.45e6)].iter().enumerate() {
        write_run(&base.join(format!("run-{i}.json")), *b, 7000.0, 50e6);
        write_run(&new.join(format!("run-{i}.json")), *n, 7000.0, 50e6);
    }
    let md = d.join("summary.md");
    let out = compare(&[
        base.to_str().unwrap(),
        new.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "not significant never fails:\n{}", out.stdout);
    assert!(out.stdout.contains("not significant"), "{}", out.stdout);
    assert!(out.stdout.contains("base (3 runs)"), "{}", out.stdout);
    // The same files listed one by one, `--` between the sides.
    let files = |side: &PathBuf| -> Vec<String> {
        (0..3).map(|i| side.join(format!("run-{i}.json")).to_str().unwrap().to_string()).collect()
    };
    let mut args: Vec<String> = files(&base);
    args.push("--".into());
    args.extend(files(&new));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let listed = compare(&args);
    assert_eq!(listed.code, 0, "{}", listed.stdout);
    let p_of = |s: &str| s.lines().find(|l| l.starts_with("latency/p50")).unwrap().to_string();
    assert_eq!(
        p_of(&out.stdout).split_whitespace().skip(5).collect::<Vec<_>>(),
        p_of(&listed.stdout).split_whitespace().skip(5).collect::<Vec<_>>(),
        "same p-value either way"
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_input_is_named() {
    let d = dir("bad");
    let good = d.join("good.json");
    write_run(&good, 1.0, 1.0, 1.0);
    let not_bmf = d.join("not-bmf.json");
    fs::write(&not_bmf, r#"{"latency/p50": {"latency": 12}}"#).unwrap();
    let other = d.join("other.json");
    fs::write(&other, r#"{"x": {"count": {"value": 1}}}"#).unwrap();
    let th = d.join("th.toml");
    fs::write(&th, "[categories]\nlatency = { warn = 30, fail = 10 }\n").unwrap();
    let g = good.to_str().unwrap();
    for (args, code, needle) in [
        (vec![g], 2, "compare takes BASE NEW (got 1 paths)"),
        (vec![g, not_bmf.to_str().unwrap()], 1, "not-bmf.json is not a BMF file"),
        (vec![g, "/nonexistent/x.json"], 1, "NEW: /nonexistent/x.json does not exist"),
        (vec![g, other.to_str().unwrap()], 1, "no metric in common"),
        (vec![g, g, "--thresholds", th.to_str().unwrap()], 1, "warn (30 %) is above fail"),
        (
            vec![g, g, "--markdown", "/nonexistent/s.md"],
            1,
            "--markdown /nonexistent/s.md: cannot write there",
        ),
    ] {
        let out = compare(&args);
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    let out = run_agent(&["run", "--repeat", "2", "--", "true"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--repeat needs --out FILE"), "{}", out.stderr);
    fs::remove_dir_all(&d).unwrap();
}

/// Attaches to a demo server answering after `delay_ms`, sends it 150
/// requests and returns the BMF file written.
fn measure_demo_server(delay_ms: &str, out: &std::path::Path) {
    let server = Target::start("demo-server", &["--delay-ms", delay_ms]);
    let agent =
        Agent::spawn(&["attach", "--pid", &server.pid.to_string(), "--out", out.to_str().unwrap()]);
    agent.wait_attached();
    let load = http_load(
        &format!("http://{}/", server.addr()),
        &["--requests", "150", "--connections", "2"],
    );
    assert_eq!(load.requests, 150);
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(libc::SIGINT);
    let result = agent.wait(Duration::from_secs(30));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
}

/// Two real runs of the demo server, the second version 3 ms slower per
/// request (2 → 5 ms of service time): `compare` fails on latency and the
/// Markdown says so. Three runs a side make the t-test decide, and BASE
/// against a second set of runs of the same version raises no false alarm.
#[test]
fn a_slower_version_fails_on_latency_end_to_end() {
    let Some(_serial) = privileged() else { return };
    let d = dir("e2e");
    let sides = ["base", "slower", "rerun"].map(|s| d.join(s));
    for (side, delay) in sides.iter().zip(["2", "5", "2"]) {
        fs::create_dir_all(side).unwrap();
        for i in 0..3 {
            measure_demo_server(delay, &side.join(format!("run-{i}.json")));
        }
    }
    let [base, slower, rerun] = sides.map(|p| p.to_str().unwrap().to_string());

    // One run a side: the threshold alone decides.
    let md = d.join("one.md");
    let (b0, s0) = (format!("{base}/run-0.json"), format!("{slower}/run-0.json"));
    let out = compare(&[&b0, &s0, "--markdown", md.to_str().unwrap()]);
    assert_eq!(out.code, 11, "{}", out.stdout);
    let md = fs::read_to_string(&md).unwrap();
    let regressions = md.split("### Regressions").nth(1).expect("a Regressions section");
    let regressions = regressions.split("<details>").next().unwrap();
    assert!(md.contains("❌ **FAIL"), "{md}");
    let p50 = regressions.lines().find(|l| l.starts_with("| latency/p50 |")).expect(&md);
    assert!(p50.contains("| FAIL |") && p50.contains("no t-test"), "{p50}");

    // Three runs a side: significant, fails with a p-value.
    let notes = d.join("notes.md");
    let out = compare(&[&base, &slower, "--release-notes", notes.to_str().unwrap()]);
    eprintln!("{}", out.stdout);
    assert_eq!(out.code, 11, "{}", out.stdout);
    let line = out.stdout.lines().find(|l| l.starts_with("latency/p50 ")).unwrap();
    assert!(line.contains("FAIL") && line.contains("p = "), "{line}");
    let notes = fs::read_to_string(&notes).unwrap();
    assert!(
        notes.lines().any(|l| l.starts_with("| `latency/p50` | ") && l.ends_with(" |")),
        "{notes}"
    );

    // The same version measured again: latency judged alone, it passes.
    let th = d.join("latency-only.toml");
    fs::write(&th, "[categories]\nmemory = {}\nthroughput = {}\n[[metric]]\nid = \"latency/p50\"\nwarn = 10\nfail = 25\n[[metric]]\nid = \"*\"\n").unwrap();
    let out = compare(&[&base, &rerun, "--thresholds", th.to_str().unwrap()]);
    assert_eq!(out.code, 0, "a rerun of the same version must pass:\n{}", out.stdout);
    fs::remove_dir_all(&d).unwrap();
}

/// `run --repeat 3`: the server is started and measured three times in one
/// invocation (a listen delay of 100 ms is each run's ground truth); the
/// runs land in `<out>.runs/` for `compare`, and `--out` holds their median
/// with min and max as the lower and upper values.
#[test]
fn repeated_runs_give_medians_and_per_run_files() {
    let Some(_serial) = privileged() else { return };
    let d = dir("repeat");
    let out = d.join("bench.json");
    let server = fixture("demo-server");
    let result = run_agent(&[
        "run",
        "--repeat",
        "3",
        "--duration",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--",
        server.to_str().unwrap(),
        "--listen-delay-ms",
        "100",
    ]);
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    assert_eq!(result.stdout.matches("ready pid=").count(), 3, "three fresh targets");
    let mut listen: Vec<f64> = (1..=3)
        .map(|i| {
            let run = read_bmf(&d.join(format!("bench.runs/run-{i}.json")));
            bmf_value(&run, "startup/to_listen", "latency")
        })
        .collect();
    for v in &listen {
        assert!((100e6..=160e6).contains(v), "to_listen {v} ns");
    }
    listen.sort_by(f64::total_cmp);
    let merged = read_bmf(&out);
    let m = &merged["startup/to_listen"]["latency"];
    assert_eq!(m["value"].as_f64(), Some(listen[1]), "the median");
    assert_eq!(m["lower_value"].as_f64(), Some(listen[0]));
    assert_eq!(m["upper_value"].as_f64(), Some(listen[2]));
    let runs = d.join("bench.runs");
    let cmp = compare(&[runs.to_str().unwrap(), runs.to_str().unwrap()]);
    assert_eq!(cmp.code, 0, "{}", cmp.stdout);
    assert!(cmp.stdout.contains("bench.runs (3 runs)"), "{}", cmp.stdout);
    fs::remove_dir_all(&d).unwrap();
}
