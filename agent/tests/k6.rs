//! Privileged end-to-end tests of k6 phases: a real k6 run against a fixture
//! server, the agent driving it (`--k6`), compared with k6's own JSON output.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;

fn k6_points(path: &std::path::Path) -> Vec<(String, i128, i128)> {
    // (scenario, start ns, end ns) of each http_req_duration point.
    let text = std::fs::read_to_string(path).expect("k6 json output");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "Point" && v["metric"] == "http_req_duration")
        .map(|v| {
            let end = parse_time(v["data"]["time"].as_str().unwrap());
            let dur = (v["data"]["value"].as_f64().unwrap() * 1e6) as i128;
            (v["data"]["tags"]["scenario"].as_str().unwrap_or("").to_string(), end - dur, end)
        })
        .collect()
}

/// k6's UTC timestamps (`2026-11-22T15:10:00.139637468Z`) to Unix ns,
/// independently of the agent's own parser.
fn parse_time(s: &str) -> i128 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    let frac = s[19..].trim_start_matches('.').trim_end_matches('Z');
    let frac_ns: i128 =
        if frac.is_empty() { 0 } else { format!("{frac:0<9}")[..9].parse().unwrap() };
    secs as i128 * 1_000_000_000 + frac_ns
}

#[test]
fn k6_phases_add_up_and_match_the_plan() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &[]);
    let out = out_path("k6");
    let phases_json = out_path("k6-phases");
    let k6_json = out_path("k6-points");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/stages.js");
    let busy_before = perf_agent::procfs::machine_busy_ns().unwrap();
    let r = run_agent(&[
        "attach",
        "--pid",
        &server.pid.to_string(),
        "--k6",
        script,
        "--idle",
        "1",
        "--cooldown",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--phases-json",
        phases_json.to_str().unwrap(),
        &format!("--k6-arg=--out=json={}", k6_json.display()),
        "--",
        "--env",
        &format!("TARGET_URL=http://{}/", server.addr()),
    ]);
    let busy_ns = (perf_agent::procfs::machine_busy_ns().unwrap() - busy_before) as f64;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    eprintln!("{}", r.stdout);
    let bmf = read_bmf(&out);
    let count = |phase: &str| bmf_value(&bmf, &format!("requests/count@{phase}"), "count");

    // Totals: the agent's count is k6's http_reqs, exactly.
    let http_reqs = bmf_value(&bmf, "client/http_reqs", "count");
    assert!(http_reqs > 100.0, "k6 made {http_reqs} requests");
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), http_reqs);
    // idle, the ramp scenario's stages and cooldown partition the run.
    let parts = ["idle", "ramp/ramp-up", "ramp/steady", "ramp/ramp-down", "cooldown"];
    let sum: f64 = parts.iter().map(|p| count(p)).sum();
    assert_eq!(sum, http_reqs, "phases {parts:?} must add up to k6's http_reqs");

    // Phase edges agree with what k6 actually did, within 50 ms.
    let phases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&phases_json).unwrap()).unwrap();
    let edge: HashMap<String, (i128, i128)> = phases["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = |k: &str| p[k].as_i64().unwrap() as i128;
            (p["name"].as_str().unwrap().to_string(), (n("start_unix_ns"), n("end_unix_ns")))
        })
        .collect();
    // k6's own CPU (`client/cpu_percent`): some in each stage of the ramp,
    // and over the phases that tile the run never more than the whole
    // machine was busy (/proc/stat, which counts k6 with the server and the
    // agent, less steal as k6's clock is; 10 ms ticks per CPU, and k6's
    // reading is linear between samples: 5 % and 50 ms of slack).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut k6_cpu_ns = 0.0;
    for phase in parts {
        let percent = bmf_value(&bmf, &format!("client/cpu_percent@{phase}"), "cpu-percent");
        assert!((0.0..=100.0 * cpus).contains(&percent), "k6 cpu {percent} % in {phase}");
        if phase.starts_with("ramp/") {
            assert!(percent > 0.0, "k6 used no CPU in {phase}");
        }
        let (start, end) = edge[phase];
        k6_cpu_ns += percent / 100.0 * (end - start) as f64;
    }
    assert!(
        k6_cpu_ns <= busy_ns * 1.05 + 50e6,
        "k6 {k6_cpu_ns} ns of CPU, the machine was busy {busy_ns} ns"
    );
    let points = k6_points(&k6_json);
    assert_eq!(points.len() as f64, http_reqs);
    const MS50: i128 = 50_000_000;
    // Idle holds no request but those k6 started before idle's end: the
    // edge is anchored where k6's log line reaches the agent, which can
    // trail its first request (below; one CI run had one in idle).
    let early = points.iter().filter(|p| p.1 < edge["idle"].1).count();
    assert!(count("idle") <= early as f64, "{} in idle, k6 started {early} before", count("idle"));
    for (scenario, phase_start, phase_end) in
        [("ramp", "ramp/ramp-up", "ramp/ramp-down"), ("burst", "burst", "burst")]
    {
        // The first request starts at the phase start; the last one starts
        // just before the phase end (it may end later: k6 lets an iteration
        // in flight at the end of a stage finish).
        let first = points.iter().filter(|p| p.0 == scenario).map(|p| p.1).min().unwrap();
        let last = points.iter().filter(|p| p.0 == scenario).map(|p| p.1).max().unwrap();
        let (start, _) = edge[phase_start];
        let (_, end) = edge[phase_end];
        let (lead, tail) = (first - start, last - end);
        eprintln!(
            "{scenario}: first request starts {} µs from its phase start, the last {} µs from its end",
            lead / 1000,
            tail / 1000
        );
        // Within 50 ms either way, as the issue asks. The anchor is the
        // moment k6's log line reaches the agent, which can trail k6's first
        // request by a fraction of a millisecond (seen: 0.24 ms).
        assert!(
            (-MS50..=MS50).contains(&lead),
            "{scenario}: first request starts {lead} ns from the phase start"
        );
        assert!(
            (-MS50..=MS50).contains(&tail),
            "{scenario}: last request starts {tail} ns from the phase end"
        );
    }

    // Server-side steady p50 is at most the client's.
    let server_p50 = bmf_value(&bmf, "latency/p50", "latency");
    let client_p50 = bmf_value(&bmf, "client/latency_p50", "latency");
    assert!(server_p50 <= client_p50, "server p50 {server_p50} > client p50 {client_p50}");
    assert_eq!(server_p50, bmf_value(&bmf, "latency/p50@ramp/steady", "latency"));
    // The canonical names users track.
    for id in
        ["memory/idle_rss", "cpu/idle_percent", "memory/under_load_rss", "cpu/under_load_percent"]
    {
        assert!(bmf.get(id).is_some(), "{id} missing");
    }
    assert!(bmf_value(&bmf, "throughput/rps_3vu", "throughput") > 0.0);
}

/// k6's failures are reported clearly and nothing is attached: a missing
/// script, a script that does not load.
#[test]
fn k6_script_errors_are_reported_before_attaching() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &[]);
    let pid = server.pid.to_string();
    let r = run_agent(&["attach", "--pid", &pid, "--k6", "/nonexistent.js"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no such script"), "{}", r.stderr);
    let bad = out_path("bad-script").with_extension("js");
    std::fs::write(&bad, "export default function ( {").unwrap();
    let r = run_agent(&["attach", "--pid", &pid, "--k6", bad.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("k6 cannot load"), "{}", r.stderr);
}

/// Failed thresholds: k6's exit status (99) is the agent's, and the
/// results are still written.
#[test]
fn k6_failed_thresholds_keep_k6_exit_status() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &[]);
    let script = out_path("thresholds").with_extension("js");
    std::fs::write(
        &script,
        "import http from 'k6/http';\n\
         export const options = { vus: 1, duration: '1s', thresholds: { http_req_duration: ['p(50)<0'] } };\n\
         export default function () { http.get(__ENV.TARGET_URL); }\n",
    )
    .unwrap();
    let out = out_path("thresholds-bmf");
    let r = run_agent(&[
        "attach",
        "--pid",
        &server.pid.to_string(),
        "--k6",
        script.to_str().unwrap(),
        "--idle",
        "0.5",
        "--cooldown",
        "0.5",
        "--out",
        out.to_str().unwrap(),
        "--",
        "--env",
        &format!("TARGET_URL=http://{}/", server.addr()),
    ]);
    assert_eq!(r.code, 99, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("thresholds failed"), "{}", r.stderr);
    let bmf = read_bmf(&out);
    assert_eq!(
        bmf_value(&bmf, "requests/count", "count"),
        bmf_value(&bmf, "client/http_reqs", "count")
    );
}

/// Other load tools mark phases by hand: `perf-agent mark NAME` and SIGUSR1.
#[test]
fn manual_marks_cut_phases() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &[]);
    let url = format!("http://{}/", server.addr());
    let marks = out_path("marks").with_extension("txt");
    let marks_env = [("PERF_AGENT_MARKS", marks.to_str().unwrap())];
    let out = out_path("marks-bmf");
    let agent = Agent::spawn_env(
        &["attach", "--pid", &server.pid.to_string(), "--out", out.to_str().unwrap()],
        &marks_env,
    );
    agent.wait_attached();
    http_load(&url, &["--requests", "200", "--connections", "2"]);
    let mark = std::process::Command::new(agent_bin())
        .args(["mark", "steady"])
        .envs(marks_env)
        .output()
        .unwrap();
    assert!(mark.status.success(), "{}", String::from_utf8_lossy(&mark.stderr));
    http_load(&url, &["--requests", "300", "--connections", "2"]);
    agent.signal(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(50));
    http_load(&url, &["--requests", "100", "--connections", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(libc::SIGINT);
    let r = agent.wait(Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let bmf = read_bmf(&out);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), 600.0);
    assert_eq!(bmf_value(&bmf, "requests/count@steady", "count"), 300.0);
    assert_eq!(bmf_value(&bmf, "requests/count@mark-1", "count"), 100.0);
    // A mark named steady stands for "under load".
    assert_eq!(
        bmf_value(&bmf, "latency/p50", "latency"),
        bmf_value(&bmf, "latency/p50@steady", "latency")
    );
    let bad = std::process::Command::new(agent_bin())
        .args(["mark", "has space"])
        .envs(marks_env)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
}

/// Runs the agent with `--k6 script` (idle and cooldown 0.5 s) against a
/// fresh demo server, with `env` in its environment and `k6_args` for k6;
/// returns its output, the BMF and the phases as name → (start, end,
/// truncated).
fn run_k6_plan_case(
    name: &str,
    script_text: &str,
    env: &[(&str, &str)],
    k6_args: &[&str],
) -> (AgentOutput, serde_json::Value, HashMap<String, (i128, i128, bool)>) {
    let server = Target::start("demo-server", &[]);
    let script = out_path(name).with_extension("js");
    std::fs::write(&script, script_text).unwrap();
    let out = out_path(&format!("{name}-bmf"));
    let phases_json = out_path(&format!("{name}-phases"));
    let target_env = format!("--env=TARGET_URL=http://{}/", server.addr());
    let pid = server.pid.to_string();
    let mut args = vec![
        "attach",
        "--pid",
        &pid,
        "--k6",
        script.to_str().unwrap(),
        "--idle",
        "0.5",
        "--cooldown",
        "0.5",
        "--out",
        out.to_str().unwrap(),
        "--phases-json",
        phases_json.to_str().unwrap(),
        "--",
        &target_env,
    ];
    args.extend_from_slice(k6_args);
    let r = Agent::spawn_env(&args, env).wait(Duration::from_secs(60));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let bmf = read_bmf(&out);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&phases_json).unwrap()).unwrap();
    let phases = doc["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = |k: &str| p[k].as_i64().unwrap() as i128;
            let truncated = p["truncated"].as_bool().unwrap();
            (
                p["name"].as_str().unwrap().to_string(),
                (n("start_unix_ns"), n("end_unix_ns"), truncated),
            )
        })
        .collect();
    (r, bmf, phases)
}

/// The plan is the plan k6 ran: a 2 s scenario (not the script's 10 s
/// fallback) with its cooldown, no warning, and idle + scenario + cooldown
/// add up to k6's requests.
fn assert_two_second_plan(
    r: &AgentOutput,
    bmf: &serde_json::Value,
    phases: &HashMap<String, (i128, i128, bool)>,
) {
    assert!(!r.stderr.contains("warning"), "the plan disagreed with k6:\n{}", r.stderr);
    let (start, end, truncated) = phases["default"];
    let len_ms = (end - start) / 1_000_000;
    assert!((1990..=2010).contains(&len_ms), "scenario phase {len_ms} ms, k6 ran 2 s");
    assert!(!truncated);
    let (c_start, c_end, c_truncated) = phases["cooldown"];
    assert_eq!(c_start, end, "cooldown follows the scenario");
    assert!(c_end - c_start >= 400_000_000, "cooldown {} ms", (c_end - c_start) / 1_000_000);
    assert!(!c_truncated);
    let http_reqs = bmf_value(bmf, "client/http_reqs", "count");
    assert!(http_reqs > 10.0, "k6 made {http_reqs} requests");
    let count = |p: &str| bmf_value(bmf, &format!("requests/count@{p}"), "count");
    assert_eq!(count("idle") + count("default") + count("cooldown"), http_reqs);
}

const DURATION_FROM_ENV: &str = "import http from 'k6/http';\n\
    export const options = { vus: 1, duration: __ENV.DURATION || '10s' };\n\
    export default function () { http.get(__ENV.TARGET_URL); }\n";

/// `k6 run` passes the process environment to `__ENV`: so must the plan.
#[test]
fn k6_plan_takes_a_duration_from_the_process_environment() {
    let Some(_serial) = privileged() else { return };
    let (r, bmf, phases) =
        run_k6_plan_case("plan-env", DURATION_FROM_ENV, &[("DURATION", "2s")], &[]);
    assert_two_second_plan(&r, &bmf, &phases);
}

/// `--duration` on k6's command line overrides the script's 10 s.
#[test]
fn k6_plan_takes_a_cli_duration_over_the_scripts() {
    let Some(_serial) = privileged() else { return };
    let script = "import http from 'k6/http';\n\
        export const options = { vus: 1, duration: '10s' };\n\
        export default function () { http.get(__ENV.TARGET_URL); }\n";
    let (r, bmf, phases) = run_k6_plan_case("plan-cli", script, &[], &["--duration", "2s"]);
    assert_two_second_plan(&r, &bmf, &phases);
}
