//! Privileged end-to-end tests of node mode (`perf-agent serve`): a real
//! Prometheus scrapes the agent every second; the numbers it stores are
//! compared with the load generator's exact counts, with `perf-agent
//! attach` run over the same window, and with `/proc`.

mod common;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{prometheus::*, *};

/// Buckets fine enough that a 2 ms service time spreads over several.
const BUCKETS: &str =
    "0.0005,0.001,0.0015,0.002,0.0021,0.0022,0.0023,0.0025,0.003,0.004,0.005,0.01,0.1";

/// `perf-agent serve` with these selector arguments on a free port, up.
fn serve(selectors: &[&str]) -> (Agent, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["serve", "--listen", &addr, "--interval", "200", "--buckets", BUCKETS];
    args.extend_from_slice(selectors);
    let agent = Agent::spawn(&args);
    agent.expect_stderr("serving http://");
    (agent, addr)
}

/// SIGTERM: exit 0, and every program, link and map it held is gone.
fn stop_and_check_detached(agent: Agent) {
    let objects = common::bpf::bpf_objects(agent.pid);
    assert!(!objects.progs.is_empty() && !objects.links.is_empty(), "{objects:?}");
    agent.signal(libc::SIGTERM);
    let out = agent.wait(Duration::from_secs(20));
    assert_eq!(out.code, 0, "{}", out.stderr);
    use common::bpf::*;
    let gone = wait_until(Duration::from_secs(5), || {
        objects.progs.iter().all(|&id| !bpf_id_exists(BPF_PROG_GET_FD_BY_ID, id))
            && objects.links.iter().all(|&id| !bpf_id_exists(BPF_LINK_GET_FD_BY_ID, id))
            && objects.maps.iter().all(|&id| !bpf_id_exists(BPF_MAP_GET_FD_BY_ID, id))
    });
    assert!(gone, "BPF objects left after SIGTERM: {objects:?}");
}

/// The Prometheus bucket (its upper bound's index in BUCKETS, or the +Inf
/// one) a value in seconds falls in.
fn bucket_of(seconds: f64) -> usize {
    let bounds: Vec<f64> = BUCKETS.split(',').map(|b| b.parse().unwrap()).collect();
    bounds.iter().position(|&b| seconds <= b).unwrap_or(bounds.len())
}

/// Requests counted, Prometheus's p99 and RSS against the load generator,
/// an attach run over the same window and `/proc`.
#[test]
fn prometheus_sees_exact_counts_the_agents_p99_bucket_and_vmrss() {
    let Some(_serial) = privileged() else { return };
    let Some(prom_bin) = binary() else { return };
    let server = Target::start("demo-server", &["--delay-ms", "2"]);
    let port = server.addr().rsplit(':').next().unwrap().to_string();
    let (agent, addr) = serve(&["--port", &port, "--delivery"]);
    let prom = Prometheus::start(&prom_bin, &addr);
    let pid = server.pid;
    let requests = format!("http_server_requests_total{{pid=\"{pid}\"}}");
    let found =
        wait_until(Duration::from_secs(15), || prom.value(&format!("sum({requests})")).is_some());
    assert!(found, "no series for PID {pid}: {}", agent.stderr());
    let before = prom.value(&format!("sum({requests})")).unwrap();
    let delivered = format!("perf_agent_request_delivered_seconds_count{{pid=\"{pid}\"}}");
    let delivered_before = prom.value(&format!("sum({delivered})")).unwrap_or(0.0);

    // The agent's own exact p99 over the same window: `attach` beside it.
    let out = out_path("serve-p99");
    let attach =
        Agent::spawn(&["attach", "--pid", &pid.to_string(), "--out", out.to_str().unwrap()]);
    attach.wait_attached();
    let load = http_load(
        &format!("http://{}/", server.addr()),
        &["--requests", "2000", "--connections", "4"],
    );
    std::thread::sleep(Duration::from_millis(400));
    attach.signal(libc::SIGINT);
    assert_eq!(attach.wait(Duration::from_secs(30)).code, 0);
    let bmf = read_bmf(&out);
    prom.wait_scrapes(2);

    let after = prom.value(&format!("sum({requests})")).unwrap();
    assert_eq!(load.requests, 2000);
    assert_eq!(after - before, load.requests as f64, "Prometheus's increase vs requests sent");
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), load.requests as f64);

    let p99 = prom
        .value(&format!(
            "histogram_quantile(0.99, sum by (le) (http_server_request_duration_seconds_bucket{{pid=\"{pid}\"}}))"
        ))
        .unwrap();
    let own_p99 = bmf_value(&bmf, "latency/p99", "latency") / 1e9;
    eprintln!("p99: Prometheus {p99} s, attach {own_p99} s, client {} s", load.p99_ns / 1e9);
    assert_eq!(bucket_of(p99), bucket_of(own_p99), "p99 {p99} s vs the agent's own {own_p99} s");

    // Delivery: one per acknowledged response; the load's connections are
    // closed, so every response was acknowledged (the last of each
    // connection at its FIN). Arrival → acknowledged contains the
    // application's read → write, so its sum is not below the durations'.
    let deliveries = prom.value(&format!("sum({delivered})")).unwrap() - delivered_before;
    assert_eq!(deliveries, load.requests as f64, "deliveries vs requests sent");
    let sum = |name: &str| prom.value(&format!("sum({name}_sum{{pid=\"{pid}\"}})")).unwrap();
    let (delivered_s, duration_s) =
        (sum("perf_agent_request_delivered_seconds"), sum("http_server_request_duration_seconds"));
    eprintln!("delivered {delivered_s} s in all vs durations {duration_s} s");
    assert!(delivered_s >= duration_s, "delivered {delivered_s} s < durations {duration_s} s");

    let rss = prom.value(&format!("process_resident_memory_bytes{{pid=\"{pid}\"}}")).unwrap();
    let vm_rss = proc_status(pid).vm_rss as f64;
    assert!(rel_err(rss, vm_rss) <= 0.01, "process_resident_memory_bytes {rss} vs VmRSS {vm_rss}");
    assert_eq!(prom.value("sum(perf_agent_dropped_events_total)"), Some(0.0));

    // OpenMetrics when asked for; the same counter.
    let (status, body) = http_get(&addr, "/metrics", "application/openmetrics-text; version=1.0.0");
    assert!(status.contains("200") && body.ends_with("# EOF\n"), "{status}");
    assert!(body.contains("# TYPE http_server_requests counter"));
    stop_and_check_detached(agent);
}

/// `serve` live: its fd count and RSS, from /proc.
fn agent_fds(pid: u32) -> usize {
    // The fewest of a few readings 100 ms apart: a scrape being answered
    // or a `/proc` file being read holds an fd for a moment (the agent
    // runs SCHED_BATCH, so on a busy machine that moment can last a tick
    // longer); a leak stays.
    (0..5)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
        })
        .min()
        .unwrap_or(0)
}

/// A target restarted five times (`--exe`, so each new process is caught
/// at its exec, after the agent started): five `pid` series, each with
/// exactly its own requests and no reset; no fds, programs or memory
/// leaked; every panel of the Grafana dashboard returns data.
#[test]
fn restarts_are_new_pid_series_without_resets_or_leaks() {
    let Some(_serial) = privileged() else { return };
    let Some(prom_bin) = binary() else { return };
    let exe = fixture("demo-server");
    let (agent, addr) = serve(&["--exe", exe.to_str().unwrap()]);
    let prom = Prometheus::start(&prom_bin, &addr);
    let mut pids = Vec::new();
    let mut usage = Vec::new();
    for round in 0..5u64 {
        let server = Target::start("demo-server", &[]);
        let n = 100 + 10 * round;
        let found = wait_until(Duration::from_secs(10), || {
            http_get(&addr, "/metrics", "*/*").1.contains(&format!("pid=\"{}\"", server.pid))
        });
        assert!(found, "PID {} not followed: {}", server.pid, agent.stderr());
        http_load(&format!("http://{}/", server.addr()), &["--requests", &n.to_string()]);
        prom.wait_scrapes(2);
        pids.push((server.pid, n));
        drop(server); // killed: the next round is the restart
        std::thread::sleep(Duration::from_millis(500));
        let programs = common::bpf::bpf_objects(agent.pid).progs.len();
        usage.push((agent_fds(agent.pid), programs, proc_status(agent.pid).vm_rss));
    }
    let series = prom.query("sum by (pid) (http_server_requests_total)");
    assert_eq!(series.len(), 5, "one series per process: {series:?}");
    for (pid, n) in &pids {
        let v = prom.value(&format!(
            "sum(max_over_time(http_server_requests_total{{pid=\"{pid}\"}}[10m]))"
        ));
        assert_eq!(v, Some(*n as f64), "PID {pid}");
    }
    let resets = prom.value("sum(resets(http_server_requests_total[10m]))");
    assert_eq!(resets, Some(0.0), "a counter went down");
    eprintln!("agent (fds, programs, VmRSS) after each restart: {usage:?}");
    let (fds, programs, rss) = usage[1];
    for (f, p, r) in &usage[2..] {
        assert_eq!((*f, *p), (fds, programs), "fds or programs grew: {usage:?}");
        assert!(r.abs_diff(rss) < 1 << 20, "agent RSS not flat: {usage:?}");
    }
    dashboard_panels_return_data(&prom);
    stop_and_check_detached(agent);
}

/// Every PromQL expression of docs/deploy/grafana-dashboard.json, run
/// against the test Prometheus, returns at least one series.
fn dashboard_panels_return_data(prom: &Prometheus) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/grafana-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 7);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "1m");
            let r = prom.query(&expr);
            assert!(!r.is_empty(), "panel {:?}: {expr} returned nothing", panel["title"]);
        }
    }
}

/// A cgroup of the test's own, removed on drop (its processes killed first).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> TestCgroup {
        let root = perf_agent::serve::selectors::cgroup2_root();
        let path = root.join(format!("perf-agent-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TestCgroup(path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        wait_until(Duration::from_secs(5), || std::fs::remove_dir(&self.0).is_ok());
    }
}

/// `--cgroup` follows both processes of a cgroup: one moved in while
/// running (found by the scan), one that joins before its exec (armed by
/// the kernel's exec hook); `--port` finds a listener and `--exe` one
/// started later are covered above.
#[test]
fn cgroup_selector_follows_two_processes() {
    let Some(_serial) = privileged() else { return };
    let cgroup = TestCgroup::new();
    let (agent, addr) = serve(&["--cgroup", cgroup.0.to_str().unwrap()]);
    let first = Target::start("demo-server", &[]);
    std::fs::write(cgroup.0.join("cgroup.procs"), first.pid.to_string()).unwrap();
    let procs = std::ffi::CString::new(cgroup.0.join("cgroup.procs").to_str().unwrap()).unwrap();
    let mut cmd = Command::new(fixture("demo-server"));
    cmd.stdout(Stdio::piped());
    // SAFETY: open(2) and write(2) only between fork and exec (no allocation);
    // "0" moves the writing process itself.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    let mut second = KillOnDrop::spawn(&mut cmd, "demo-server in the cgroup");
    let mut out = std::io::BufReader::new(second.take_stdout().unwrap());
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
    let second_addr = ready_field(ready.trim(), "addr").unwrap();
    for (pid, url, n) in [
        (first.pid, format!("http://{}/", first.addr()), 70),
        (second.pid(), format!("http://{second_addr}/"), 90),
    ] {
        let found = wait_until(Duration::from_secs(10), || {
            http_get(&addr, "/metrics", "*/*").1.contains(&format!("pid=\"{pid}\""))
        });
        assert!(found, "PID {pid} of the cgroup not followed: {}", agent.stderr());
        http_load(&url, &["--requests", &n.to_string()]);
        let counted = wait_until(Duration::from_secs(5), || {
            let body = http_get(&addr, "/metrics", "*/*").1;
            body.lines().any(|l| {
                l.starts_with("http_server_requests_total{")
                    && l.contains(&format!("pid=\"{pid}\""))
                    && l.contains("status_class=\"2xx\"")
                    && l.ends_with(&format!(" {n}"))
            })
        });
        assert!(counted, "PID {pid}: not {n} requests:\n{}", http_get(&addr, "/metrics", "*/*").1);
    }
    stop_and_check_detached(agent);
}

/// Bad input ends with a clear error and a non-zero status before anything
/// is attached (no "serving" line).
#[test]
fn bad_input_is_refused_before_attaching() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let cases: [(&[&str], &str); 8] = [
        (&["--pid", "4194304"], "no such process"),
        (&["--selector", "x"], "unexpected argument"),
        (&["--exe", "/no/such/server"], "no such file"),
        (&["--comm", "a/b"], "--exe"),
        (&["--cgroup", "/sys/fs/cgroup/no-such-perf-agent-cgroup"], "not a cgroup v2 directory"),
        (&["--comm", "x", "--listen", &busy], "in use"),
        (&["--comm", "x", "--listen", "127.0.0.1:80"], "privileged"),
        (&[], "at least one of --pid"),
    ];
    for (args, message) in cases {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let out = run_agent(&all);
        assert_ne!(out.code, 0, "{all:?} succeeded");
        assert!(out.stderr.contains(message), "{all:?}: {:?} lacks {message:?}", out.stderr);
        assert!(!out.stderr.contains("serving"), "{all:?} attached: {}", out.stderr);
    }
}

/// The scrape configuration of docs/deploy/ is valid Prometheus syntax
/// (`promtool`, which comes with Debian's prometheus package).
#[test]
fn deploy_scrape_config_is_valid() {
    if binary().is_none() {
        return;
    }
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/prometheus-scrape.yml");
    let out =
        Command::new("promtool").args(["check", "config"]).arg(&config).output().expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the first sample of `name` whose labels contain `labels`.
fn sample_of(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `--comm` catches a process started later, at its exec: its requests are
/// counted and its startup gauge (exec → end of the first response) lies
/// between the test's own bounds: at least the pause the test makes between
/// the server's ready line and its first request, at most the time from
/// before the spawn to after that response.
#[test]
fn comm_selector_catches_a_later_exec_with_its_startup() {
    let Some(_serial) = privileged() else { return };
    // A name of our own (the comm is the basename the kernel execs), so no
    // other demo-server on the machine matches.
    let name = format!("pa-comm-{}", std::process::id() % 1_000_000);
    let link = scratch_dir().join(&name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(fixture("demo-server"), &link).unwrap();
    let (agent, addr) = serve(&["--comm", &name]);
    let spawned = std::time::Instant::now();
    let mut server = KillOnDrop::spawn(Command::new(&link).stdout(Stdio::piped()), "demo-server");
    let mut out = std::io::BufReader::new(server.take_stdout().unwrap());
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
    let ready_at = spawned.elapsed();
    let server_addr = ready_field(ready.trim(), "addr").unwrap();
    let pause = Duration::from_millis(300);
    std::thread::sleep(pause);
    http_load(&format!("http://{server_addr}/"), &["--requests", "1", "--connections", "1"]);
    let first_done = spawned.elapsed();
    http_load(&format!("http://{server_addr}/"), &["--requests", "49"]);
    let pid = format!("pid=\"{}\"", server.pid());
    let counted = wait_until(Duration::from_secs(5), || {
        http_get(&addr, "/metrics", "*/*").1.lines().any(|l| {
            l.starts_with("http_server_requests_total{")
                && l.contains(&pid)
                && l.contains(&format!("comm=\"{name}\""))
                && l.contains(&format!("selector=\"comm={name}\""))
                && l.contains("status_class=\"2xx\"")
                && l.ends_with(" 50")
        })
    });
    let metrics = http_get(&addr, "/metrics", "*/*").1;
    assert!(counted, "not 50 requests for {pid}:\n{metrics}");
    let startup = sample_of(&metrics, "perf_agent_startup_first_response_seconds", &pid)
        .unwrap_or_else(|| panic!("no startup gauge:\n{metrics}"));
    eprintln!("startup {startup} s; ready after {ready_at:?}, first response by {first_done:?}");
    assert!(
        startup >= pause.as_secs_f64() && startup <= first_done.as_secs_f64(),
        "startup {startup} s not in [{pause:?}, {first_done:?}]"
    );
    let _ = std::fs::remove_file(&link);
    stop_and_check_detached(agent);
}
