//! `--report FILE.html` in a real browser: Debian's `chromium` (installed by
//! `cargo xtask setup` under CI) renders each page headless. The
//! screenshot must hold far more than an empty page; the DOM after the
//! page's script ran (`--dump-dom`) must draw every phase and show the BMF
//! file's numbers, exactly in `data-value` and to the displayed digits in
//! the text. Privileged where the agent runs.

mod common;
mod report_html_common;

use std::{fs, time::Duration};

use common::*;
use report_html_common::{Browser, Tag, check_cells, data_block, tags};

/// `perf-agent run` of the demo server with the k6 stages, a profile and
/// the page: phases, startup, client numbers and links all on one page.
#[test]
fn run_page_draws_every_phase_and_shows_the_bmf_numbers() {
    let Some(_serial) = privileged() else { return };
    let Some(browser) = Browser::find() else { return };
    let dir = Browser::scratch("run");
    let (out, page, profiles) = (dir.join("out.json"), dir.join("report.html"), dir.join("prof"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/stages.js");
    let port = 18_000 + std::process::id() % 1000;
    let r = run_agent(&[
        "run",
        "--k6",
        script,
        "--idle",
        "1",
        "--cooldown",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--report",
        page.to_str().unwrap(),
        "--profile-dir",
        profiles.to_str().unwrap(),
        &format!("--k6-arg=--env=TARGET_URL=http://127.0.0.1:{port}/"),
        "--",
        fixture("demo-server").to_str().unwrap(),
        "--addr",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let bmf = read_bmf(&out);
    browser.screenshot_is_not_blank(&page, &dir);
    let dom = browser.dump_dom(&page);
    assert!(dom.contains(r#"data-rendered="run""#), "the script did not run:\n{dom}");
    assert!(!dom.contains(r#"<p class="partial">PARTIAL: "#), "a complete run is not PARTIAL");

    // Every phase the BMF file has: a band in the phase chart and in each
    // of the 5 timelines, a row of the table.
    let phases: Vec<String> = bmf
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|id| id.strip_prefix("requests/count@").map(String::from))
        .collect();
    for must in ["startup", "ramp/ramp-up", "ramp/steady", "ramp/ramp-down", "burst", "cooldown"] {
        assert!(phases.iter().any(|p| p == must), "no phase {must} in {phases:?}");
    }
    let with_phase = |tag: &str, name: &str| {
        tags(&dom, tag).iter().filter(|t| t.attr("data-phase") == Some(name)).count()
    };
    for p in &phases {
        assert_eq!(with_phase("g", p), 1, "{p} in the phase chart");
        assert_eq!(with_phase("rect", p), 5, "{p} in each timeline");
        assert_eq!(with_phase("tr", p), 1, "{p} in the table");
    }

    // Each number shown is the BMF file's; the table has the server's and
    // k6's numbers of every phase.
    let cells = check_cells(&dom, &bmf);
    for p in &phases {
        for id in ["requests/count", "latency/p50", "latency/p99", "cpu/percent", "client/requests"]
        {
            let id = format!("{id}@{p}");
            if bmf.get(&id).is_some() {
                assert!(cells.iter().any(|c| c.attr("data-metric") == Some(&id)), "{id} not shown");
            }
        }
    }
    assert!(cells.iter().any(|c| c.attr("data-metric") == Some("client/latency_p99@ramp/steady")));

    // The startup waterfall: every milestone, at the BMF's value.
    let milestones = tags(&dom, "rect");
    let milestones: Vec<&Tag> =
        milestones.iter().filter(|t| t.attr("data-milestone").is_some()).collect();
    for id in
        ["startup/to_listen", "startup/to_first_accept", "startup/to_healthy", "startup/to_ready"]
    {
        let bar = milestones.iter().find(|t| t.attr("data-milestone") == Some(id));
        let bar = bar.unwrap_or_else(|| panic!("no bar for {id}"));
        assert_eq!(bar.number("data-value"), bmf_value(&bmf, id, "latency"), "{id}");
    }

    // The timelines: every series drawn; their sums are the run's numbers
    // (requests: k6's own count, the ground truth).
    let paths = tags(&dom, "path");
    for series in ["CPU", "RSS", "req/s", "p50", "p99", "errors"] {
        let drawn = paths.iter().find(|t| t.attr("data-series") == Some(series));
        assert!(
            drawn.and_then(|t| t.attr("d")).is_some_and(|d| d.len() > 20),
            "{series} not drawn"
        );
    }
    let data = data_block(&fs::read_to_string(&page).unwrap());
    let sum = |key: &str, field: &str| -> f64 {
        data[key].as_array().unwrap().iter().map(|v| v[field].as_f64().unwrap()).sum()
    };
    assert_eq!(sum("buckets", "count"), bmf_value(&bmf, "client/http_reqs", "count"));
    assert_eq!(sum("buckets", "count"), bmf_value(&bmf, "requests/count", "count"));
    assert_eq!(sum("intervals", "cpu_ns"), bmf_value(&bmf, "cpu/time", "cpu-time"));
    let last_rss = data["intervals"].as_array().unwrap().last().unwrap()["rss_bytes"].as_f64();
    assert_eq!(last_rss, Some(bmf_value(&bmf, "memory/rss", "memory")));

    // Profile links: relative, and each opens a file that exists.
    let links = tags(&dom, "a");
    let links: Vec<&str> = links.iter().filter_map(|a| a.attr("href")).collect();
    assert!(links.len() >= phases.len() * 3, "{links:?}");
    for href in &links {
        assert!(!href.starts_with('/') && !href.contains("://"), "{href} is not relative");
        let file = dir.join(report_html_common::percent_decode(href));
        assert!(file.is_file(), "{href}: {} does not exist", file.display());
    }
    assert!(links.contains(&"prof/ramp%252Fsteady.cpu.svg"), "{links:?}");

    // Under each phase's links, its top functions and blocking sites: the
    // steady phase's first function has the largest leaf share of its
    // folded file, and is a row of the page.
    let steady = data["profiles"].as_array().unwrap().iter().find(|p| p["phase"] == "ramp/steady");
    let steady = steady.expect("ramp/steady in the page's profiles");
    let folded = fs::read_to_string(profiles.join("ramp%2Fsteady.cpu.folded")).unwrap();
    let mut leaves: std::collections::HashMap<&str, u64> = Default::default();
    for line in folded.lines() {
        let (stack, n) = line.rsplit_once(' ').unwrap();
        *leaves.entry(stack.rsplit(';').next().unwrap()).or_default() += n.parse::<u64>().unwrap();
    }
    let total: u64 = leaves.values().sum();
    let most =
        *leaves.values().max().expect("samples in ramp/steady") as f64 * 100.0 / total as f64;
    let first = &steady["top"][0];
    assert!((first["self"].as_f64().unwrap() - most).abs() < 1e-9, "{first} vs {most} %");
    let rows = tags(&dom, "tr");
    assert!(
        rows.iter().any(|t| t.attr("data-function") == first["name"].as_str()),
        "{first} is not a row of the page"
    );
    let site = steady["blocked"][0]["site"].as_str().expect("a blocking site of ramp/steady");
    assert!(rows.iter().any(|t| t.attr("data-site") == Some(site)), "{site} is not a row");
    fs::remove_dir_all(&dir).unwrap();
}

/// A run that ends partial (the target exits; the agent is interrupted)
/// still writes its page, and the page says so.
#[test]
fn partial_runs_write_their_page_too() {
    let Some(_serial) = privileged() else { return };
    let Some(browser) = Browser::find() else { return };
    let dir = Browser::scratch("partial");
    for (name, end) in [("exit", "target"), ("sigint", "agent")] {
        let server = Target::start("demo-server", &[]);
        let (out, page) = (dir.join(format!("{name}.json")), dir.join(format!("{name}.html")));
        let mut args = vec!["attach", "--pid"];
        let pid = server.pid.to_string();
        args.extend([
            pid.as_str(),
            "--out",
            out.to_str().unwrap(),
            "--report",
            page.to_str().unwrap(),
        ]);
        if end == "agent" {
            args.extend(["--duration", "30"]);
        }
        let agent = Agent::spawn(&args);
        agent.wait_attached();
        http_load(&format!("http://{}/", server.addr()), &["--requests", "50"]);
        std::thread::sleep(Duration::from_millis(600));
        match end {
            "target" => server.process.kill(),
            _ => agent.signal(libc::SIGINT),
        }
        let r = agent.wait(Duration::from_secs(30));
        assert_eq!(r.code, if end == "target" { 3 } else { 4 }, "{}", r.stderr);
        let bmf = read_bmf(&out);
        assert_eq!(bmf_value(&bmf, "agent/partial", "count"), 1.0);
        let data = data_block(&fs::read_to_string(&page).unwrap());
        assert_eq!(data["partial"], true, "{name}");
        let dom = browser.dump_dom(&page);
        assert!(
            dom.contains(r#"<p class="partial">PARTIAL: "#),
            "{name}: the page does not say PARTIAL"
        );
        let cells = check_cells(&dom, &bmf);
        assert!(cells.iter().any(|c| c.attr("data-metric") == Some("requests/count")));
        assert_eq!(bmf_value(&bmf, "requests/count", "count"), 50.0);
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// `run --repeat 2 --report`: the medians' page links each run's page and
/// shows the merged BMF's numbers.
#[test]
fn repeat_page_links_each_run_and_shows_the_medians() {
    let Some(_serial) = privileged() else { return };
    let Some(browser) = Browser::find() else { return };
    let dir = Browser::scratch("repeat");
    let (out, page) = (dir.join("bench.json"), dir.join("bench.html"));
    let r = run_agent(&[
        "run",
        "--repeat",
        "2",
        "--duration",
        "1.5",
        "--idle",
        "0.5",
        "--out",
        out.to_str().unwrap(),
        "--report",
        page.to_str().unwrap(),
        "--",
        fixture("demo-server").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let bmf = read_bmf(&out);
    let dom = browser.dump_dom(&page);
    assert!(dom.contains(r#"data-rendered="repeat""#), "{dom}");
    let runs: Vec<String> =
        tags(&dom, "a").iter().filter_map(|a| a.attr("href").map(String::from)).collect();
    assert_eq!(runs, ["bench.run-1.html", "bench.run-2.html"]);
    for run in &runs {
        let run_dom = browser.dump_dom(&dir.join(run));
        assert!(run_dom.contains(r#"data-rendered="run""#), "{run}");
    }
    let cells = check_cells(&dom, &bmf);
    assert!(cells.iter().any(|c| c.attr("data-metric") == Some("startup/to_listen")), "whole run");
    assert!(cells.iter().any(|c| c.attr("data-metric") == Some("cpu/percent@idle")), "idle row");
    fs::remove_dir_all(&dir).unwrap();
}

/// `compare --report`: both sides' values and each verdict, as the BMF
/// files and the terminal table have them (no eBPF: runs unprivileged).
#[test]
fn compare_page_shows_both_sides_and_the_verdicts() {
    let Some(browser) = Browser::find() else { return };
    let dir = Browser::scratch("compare");
    let write = |name: &str, p99: f64, rss: f64| {
        let doc = serde_json::json!({
            "latency/p99@ramp/steady": {"latency": {"value": p99}},
            "memory/peak_rss": {"memory": {"value": rss}},
        });
        fs::write(dir.join(name), doc.to_string()).unwrap();
        dir.join(name)
    };
    let (base, new) = (write("base.json", 1_000_000.0, 50e6), write("new.json", 1_300_000.0, 51e6));
    let page = dir.join("cmp.html");
    let r = run_agent(&[
        "compare",
        base.to_str().unwrap(),
        new.to_str().unwrap(),
        "--report",
        page.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 11, "+30 % latency fails:\n{}", r.stdout);
    let dom = browser.dump_dom(&page);
    assert!(dom.contains(r#"data-rendered="compare""#), "{dom}");
    let rows = tags(&dom, "tr");
    let level = |id: &str| {
        rows.iter()
            .find(|t| t.attr("data-metric") == Some(id))
            .and_then(|t| t.attr("data-level").map(String::from))
    };
    assert_eq!(level("latency/p99@ramp/steady").as_deref(), Some("FAIL"));
    assert_eq!(level("memory/peak_rss").as_deref(), Some("pass"));
    let sides = tags(&dom, "td");
    let values: Vec<(String, f64)> = sides
        .iter()
        .filter_map(|t| Some((t.attr("data-side")?.to_string(), t.number("data-value"))))
        .collect();
    let expect = [("base", 1e6), ("new", 1.3e6), ("base", 50e6), ("new", 51e6)];
    assert_eq!(
        values,
        expect.map(|(s, v)| (s.to_string(), v)),
        "failures first, each side's value"
    );
    assert!(dom.contains("not the per-interval series"), "the page says why no timeline");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_report_path_is_checked_before_anything_runs() {
    let r = run_agent(&["compare", "a.json", "b.json", "--report", "/nonexistent-dir/r.html"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("--report /nonexistent-dir/r.html"), "{}", r.stderr);
}
