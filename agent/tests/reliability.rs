//! Reliability: faults and hostile input, one test each (see
//! docs/reliability.md for what was run, at what scale, and the numbers);
//! load (many and short-lived connections, a full ring, two agents) is in
//! `reliability_load.rs`.
//!
//! Every test is bounded (well under 60 s on a 2-core VM), uses loopback only,
//! and cleans up its processes on failure too: fixtures are `Target`s,
//! agents `Agent`s and other children `KillOnDrop`s, all killed on drop.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Agent, KillOnDrop, Target, agent_bin, bmf_value,
    bpf::{
        BPF_LINK_GET_FD_BY_ID, BPF_MAP_GET_FD_BY_ID, BPF_PROG_GET_FD_BY_ID, BpfObjects,
        bpf_id_exists, bpf_objects,
    },
    fixture, http_load, in_ci, out_path, privileged, read_bmf, summary_number, wait_until,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn bpftool() -> Option<PathBuf> {
    ["/usr/sbin/bpftool", "/usr/bin/bpftool", "/usr/local/sbin/bpftool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// `bpftool -j <what> show`: id → name (programs) or id → prog_id (links).
fn bpftool_show(what: &str) -> Vec<serde_json::Value> {
    let tool = bpftool().expect("bpftool");
    let out = Command::new(tool).args(["-j", what, "show"]).output().expect("running bpftool");
    assert!(out.status.success(), "bpftool {what} show: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The agent's programs, links and maps while it runs; checks with bpftool
/// (if installed) that they are ours by name.
fn snapshot_attached(agent: &Agent) -> BpfObjects {
    let objects = bpf_objects(agent.pid);
    // The default mode's 7: the exec hook, rss_stat, inet_sock_set_state,
    // tcp_rcv_space_adjust, tcp_sendmsg_locked and the two reset hooks.
    assert!(
        objects.progs.len() >= 7 && objects.links.len() >= 7,
        "expected the agent's programs and links in its fdinfo: {objects:?}"
    );
    match bpftool() {
        Some(_) => {
            let names: BTreeSet<String> = bpftool_show("prog")
                .iter()
                .filter(|p| p["id"].as_u64().is_some_and(|id| objects.progs.contains(&(id as u32))))
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
            // bpftool shows the BTF name, or the kernel's, truncated to 15 bytes.
            for want in ["rss_stat", "tcp_rcv_space_adjust", "inet_sock_set_state"] {
                assert!(
                    names
                        .iter()
                        .any(|n| want.starts_with(n.as_str()) && n.len() >= want.len().min(15)),
                    "bpftool shows {names:?}, not {want}"
                );
            }
        }
        None if in_ci() => panic!("CI=true but bpftool is not installed (cargo xtask setup)"),
        None => eprintln!("\n*** bpftool not installed: program names not cross-checked ***\n"),
    }
    objects
}

/// Asserts that every program, link and map the agent held is gone, and
/// that nothing new is pinned under /sys/fs/bpf.
fn assert_all_detached(objects: &BpfObjects, pinned_before: &BTreeSet<PathBuf>) {
    // The kernel frees programs and maps after an RCU grace period.
    let gone = wait_until(Duration::from_secs(5), || {
        objects.progs.iter().all(|&id| !bpf_id_exists(BPF_PROG_GET_FD_BY_ID, id))
            && objects.links.iter().all(|&id| !bpf_id_exists(BPF_LINK_GET_FD_BY_ID, id))
            && objects.maps.iter().all(|&id| !bpf_id_exists(BPF_MAP_GET_FD_BY_ID, id))
    });
    let left = |cmd, ids: &BTreeSet<u32>| -> Vec<u32> {
        ids.iter().copied().filter(|&id| bpf_id_exists(cmd, id)).collect()
    };
    assert!(
        gone,
        "still in the kernel after the agent ended: programs {:?}, links {:?}, maps {:?}",
        left(BPF_PROG_GET_FD_BY_ID, &objects.progs),
        left(BPF_LINK_GET_FD_BY_ID, &objects.links),
        left(BPF_MAP_GET_FD_BY_ID, &objects.maps)
    );
    match bpftool() {
        Some(_) => {
            let ids = |v: Vec<serde_json::Value>| -> BTreeSet<u32> {
                v.iter().filter_map(|o| o["id"].as_u64().map(|i| i as u32)).collect()
            };
            let progs = ids(bpftool_show("prog"));
            let links = ids(bpftool_show("link"));
            assert!(progs.is_disjoint(&objects.progs), "bpftool prog show still lists ours");
            assert!(links.is_disjoint(&objects.links), "bpftool link show still lists ours");
        }
        None if in_ci() => panic!("CI=true but bpftool is not installed (cargo xtask setup)"),
        None => eprintln!(
            "\n*** bpftool not installed: checked by BPF_*_GET_FD_BY_ID only, \
             not cross-checked with `bpftool prog/link show` ***\n"
        ),
    }
    assert_eq!(&pinned(), pinned_before, "something was pinned under /sys/fs/bpf");
}

/// Everything under /sys/fs/bpf (empty set when bpffs is not mounted).
fn pinned() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            }
            out.insert(p);
        }
    }
    let mut out = BTreeSet::new();
    walk(Path::new("/sys/fs/bpf"), &mut out);
    out
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------
// The target: killed, exec'ing, exiting with its PID reused, vanishing
// ---------------------------------------------------------------------------

/// The target killed with SIGKILL mid-run: results written, marked partial,
/// exit code 3, and what was measured before is there.
#[test]
fn target_killed_mid_run_gives_partial_results_and_exit_3() {
    let Some(_serial) = privileged() else { return };
    let target = Target::start("demo-server", &[]);
    let url = format!("http://{}/", target.addr());
    let out = out_path("rel-target-killed");
    let pid = target.pid.to_string();
    let agent = Agent::spawn(&["attach", "--pid", &pid, "--out", out.to_str().unwrap()]);
    agent.wait_attached();
    let load = http_load(&url, &["--requests", "300", "--connections", "2"]);
    let killed = Instant::now();
    target.process.kill();
    let ended = agent.wait(Duration::from_secs(10));
    eprintln!("agent ended {} ms after SIGKILL of the target", ms(killed.elapsed()));
    assert_eq!(ended.code, 3, "{}", ended.stderr);
    assert!(ended.stdout.contains("PARTIAL (target exited)"), "{}", ended.stdout);
    let bmf = read_bmf(&out);
    assert_eq!(bmf_value(&bmf, "agent/partial", "count"), 1.0);
    assert_eq!(bmf_value(&bmf, "requests/count", "count"), load.requests as f64);
}

/// The target execs another program: same thread group, so the agent keeps
/// following it. Launch mode (`run -- sh -c 'exec cpu-burner'`) and attach
/// mode (attached to a shell that sleeps, then execs the burner) both count
/// the CPU of the program exec'd, as /proc does for the same PID (the
/// shell's own CPU is ~1 ms). Compared with /proc, not with wall time: the
/// machine may be busy.
#[test]
fn target_exec_keeps_following_the_same_tgid() {
    let Some(_serial) = privileged() else { return };
    let burner = fixture("cpu-burner");
    let burner = burner.to_str().unwrap();
    let script = format!("exec {burner} --threads 1 --late-threads 0");
    let run = Agent::spawn(&["run", "--duration", "2", "--", "sh", "-c", &script]);
    let ended = run.wait(Duration::from_secs(20));
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    check_followed_exec("run", &ended.stdout);

    let script = format!("sleep 0.5; exec {burner} --threads 1 --late-threads 0");
    let shell =
        KillOnDrop::spawn(Command::new("sh").args(["-c", &script]).stdout(Stdio::null()), "sh");
    let pid = shell.pid().to_string();
    let agent = Agent::spawn(&["attach", "--pid", &pid, "--duration", "2.5"]);
    agent.wait_attached();
    let ended = agent.wait(Duration::from_secs(20));
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    check_followed_exec("attach", &ended.stdout);
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "cpu-burner", "the shell exec'd the burner in the same PID");
    drop(shell);
}

fn check_followed_exec(mode: &str, stdout: &str) {
    let (agent, proc) = summary_cpu_time(stdout);
    eprintln!("{mode}: CPU after exec: agent {agent:.3} s, /proc {proc:.3} s");
    assert!(proc > 0.2, "{mode}: the burner ran {proc} s CPU by /proc\n{stdout}");
    assert!(
        (agent - proc).abs() <= 0.1 * proc + 0.03,
        "{mode}: agent {agent} s vs /proc {proc} s\n{stdout}"
    );
}

/// (agent, /proc) seconds of the summary's `cpu/time` line.
fn summary_cpu_time(stdout: &str) -> (f64, f64) {
    let line = stdout.lines().find(|l| l.starts_with("cpu/time")).expect("cpu/time line");
    let t: Vec<&str> = line.split_whitespace().collect();
    let secs = |v: &str, unit: &str| -> f64 {
        let v: f64 = v.parse().unwrap_or_else(|_| panic!("{line:?}"));
        v * match unit {
            "s" => 1.0,
            "ms" => 1e-3,
            "µs" => 1e-6,
            "ns" => 1e-9,
            other => panic!("unit {other} in {line:?}"),
        }
    };
    (secs(t[1], t[2]), secs(t[3], t[4]))
}

/// The target exits and its PID is taken at once by a new, CPU-hungry
/// process (forced through /proc/sys/kernel/ns_last_pid): the agent ends
/// promptly with exit 3 (it watches a pidfd, not the number) and reports none
/// of the new process's CPU.
#[test]
fn reused_pid_is_never_followed() {
    let Some(_serial) = privileged() else { return };
    let mut target = Target::start("demo-server", &[]);
    let pid = target.pid;
    let out = out_path("rel-pid-reuse");
    let agent =
        Agent::spawn(&["attach", "--pid", &pid.to_string(), "--out", out.to_str().unwrap()]);
    agent.wait_attached();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    target.process.kill();
    target.process.reap(Duration::from_secs(5)).expect("reaping the killed server"); // the PID is free now
    // Take the same PID with a spinning process.
    let mut reused = None;
    for _ in 0..50 {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let child = KillOnDrop::spawn(
            Command::new(fixture("cpu-burner"))
                .args(["--threads", "2", "--late-threads", "0", "--seconds", "5"])
                .stdout(Stdio::null()),
            "cpu-burner",
        );
        if child.pid() == pid {
            reused = Some(child);
            break;
        }
        drop(child);
    }
    let reused_at = killed.elapsed();
    let ended = agent.wait(Duration::from_secs(10));
    let after = killed.elapsed();
    assert!(reused.is_some(), "could not make a new process take PID {pid}");
    eprintln!(
        "PID {pid} reused {} µs after SIGKILL; agent ended {} ms after it",
        reused_at.as_micros(),
        ms(after)
    );
    assert_eq!(ended.code, 3, "{}", ended.stderr);
    assert!(after < Duration::from_secs(2), "the agent took {after:?} to notice the exit");
    // Give the new process time to burn: had the agent followed it, it
    // would show. The agent has ended already, so this is belt and braces.
    std::thread::sleep(Duration::from_millis(200));
    let bmf = read_bmf(&out);
    let cpu_ms = bmf_value(&bmf, "cpu/time", "cpu-time") / 1e6;
    assert!(cpu_ms < 50.0, "an idle server measured at {cpu_ms} ms CPU: the new process's?");
    drop(reused);
}

/// A target that exits just before, during or right after attach: a clear
/// error (exit 1) or a partial result (exit 3), never a panic. Each delay is
/// tried with the target reaped at once (its /proc entry vanishes) and left a
/// zombie (its /proc entry stays, without memory).
#[test]
fn target_vanishing_during_attach_is_an_error_or_partial_never_a_panic() {
    let Some(_serial) = privileged() else { return };
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for reap in [true, false] {
        for delay_ms in [0u64, 1, 3, 10, 30, 60, 100, 150, 250, 400] {
            let mut target = KillOnDrop::spawn(
                Command::new("sleep").arg(format!("{}", delay_ms as f64 / 1000.0)),
                "sleep",
            );
            let pid = target.pid();
            let out = out_path(&format!("rel-vanish-{reap}-{delay_ms}"));
            let agent = Agent::spawn(&[
                "attach",
                "--pid",
                &pid.to_string(),
                "--duration",
                "3",
                "--out",
                out.to_str().unwrap(),
            ]);
            // Reaped as soon as it exits, or left a zombie while the agent runs.
            let (reaper, zombie) = if reap {
                let reaper =
                    std::thread::spawn(move || target.reap(Duration::from_secs(5)).is_some());
                (Some(reaper), None)
            } else {
                (None, Some(target))
            };
            let ended = agent.wait(Duration::from_secs(15));
            if let Some(reaper) = reaper {
                assert!(reaper.join().expect("reaper thread"), "sleep did not exit");
            }
            if let Some(mut zombie) = zombie {
                // Exited (the agent saw it go) and never waited for: still a zombie.
                let state = perf_agent::procfs::read_stat(pid).map(|s| s.state).ok();
                assert_eq!(state, Some('Z'), "reap=false delay={delay_ms}ms: not a zombie");
                zombie.reap(Duration::from_secs(5)).expect("reaping the zombie");
            }
            let what = format!("reap={reap} delay={delay_ms}ms: exit {}", ended.code);
            assert!(
                !ended.stderr.contains("panicked") && ended.code != 101,
                "{what}: panic\n{}",
                ended.stderr
            );
            match ended.code {
                1 => {
                    let e = ended.stderr.lines().find(|l| l.contains("error")).unwrap_or("");
                    assert!(
                        ["no process", "exited", "is gone", "cannot read", "reused"]
                            .iter()
                            .any(|m| e.contains(m)),
                        "{what}: unclear error {e:?}"
                    );
                    assert!(!out.exists(), "{what}: an error must not write results");
                    *outcomes.entry(format!("error: {}", error_kind(e))).or_default() += 1;
                }
                3 => {
                    let bmf = read_bmf(&out);
                    assert_eq!(bmf_value(&bmf, "agent/partial", "count"), 1.0, "{what}");
                    *outcomes.entry("partial (exit 3)".into()).or_default() += 1;
                }
                _ => panic!("{what}\n{}", ended.stderr),
            }
        }
    }
    eprintln!("outcomes: {outcomes:?}");
}

fn error_kind(e: &str) -> &'static str {
    for k in ["no process", "has already exited", "is gone", "exited", "cannot read", "reused"] {
        if e.contains(k) {
            return k;
        }
    }
    "other"
}

// ---------------------------------------------------------------------------
// The agent: signals, SIGKILL, and what stays in the kernel
// ---------------------------------------------------------------------------

/// SIGINT and SIGTERM (with --duration: partial, exit 4; without: complete,
/// exit 0), and a second SIGINT while results are being written: results
/// are written exactly once, and every program, link and map is gone after.
#[test]
fn signals_write_results_once_and_leave_nothing_attached() {
    let Some(_serial) = privileged() else { return };
    let target = Target::start("demo-server", &[]);
    let url = format!("http://{}/", target.addr());
    let pinned_before = pinned();
    // (signals with the delay before each, --duration, exit code, partial)
    type Case = (&'static [(i32, u64)], Option<&'static str>, i32, f64);
    let cases: [Case; 4] = [
        (&[(libc::SIGINT, 0)], Some("60"), 4, 1.0),
        (&[(libc::SIGTERM, 0)], None, 0, 0.0),
        (&[(libc::SIGINT, 0), (libc::SIGINT, 1)], Some("60"), 4, 1.0),
        (&[(libc::SIGTERM, 0), (libc::SIGINT, 15)], None, 0, 0.0),
    ];
    for (i, (signals, duration, code, partial)) in cases.into_iter().enumerate() {
        let out = out_path(&format!("rel-signals-{i}"));
        let pid = target.pid.to_string();
        let mut args = vec!["attach", "--pid", &pid, "--out", out.to_str().unwrap()];
        if let Some(d) = duration {
            args.extend(["--duration", d]);
        }
        let agent = Agent::spawn(&args);
        agent.wait_attached();
        let load = http_load(&url, &["--requests", "2000", "--connections", "4"]);
        let objects = snapshot_attached(&agent);
        for &(signal, delay_ms) in signals {
            std::thread::sleep(Duration::from_millis(delay_ms));
            agent.signal(signal);
        }
        let ended = agent.wait(Duration::from_secs(10));
        let what = format!("case {i} {signals:?} duration {duration:?}");
        assert_eq!(ended.code, code, "{what}: {}", ended.stderr);
        assert_eq!(ended.stderr.matches("wrote ").count(), 1, "{what}: {}", ended.stderr);
        assert_eq!(ended.stdout.matches("metric ").count(), 1, "{what}: one summary");
        let bmf = read_bmf(&out);
        assert_eq!(bmf_value(&bmf, "agent/partial", "count"), partial, "{what}");
        assert_eq!(bmf_value(&bmf, "requests/count", "count"), load.requests as f64, "{what}");
        assert_all_detached(&objects, &pinned_before);
    }
}

/// The destination vanishes during the run: the results are written to a
/// fallback file in $TMPDIR, and the profiles to a fallback directory
/// there, their paths printed, exit status 6.
#[test]
fn results_survive_a_destination_that_became_unwritable() {
    let Some(_serial) = privileged() else { return };
    let target = Target::start("demo-server", &[]);
    let base = out_path("vanishing").with_extension("d");
    let (dest, fallback) = (base.join("dest"), base.join("fallback"));
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(&fallback).unwrap();
    let (out, phases, profiles) =
        (dest.join("bench.json"), dest.join("phases.json"), dest.join("profiles"));
    let agent = Agent::spawn_env(
        &[
            "attach",
            "--pid",
            &target.pid.to_string(),
            "--duration",
            "1.5",
            "--out",
            out.to_str().unwrap(),
            "--phases-json",
            phases.to_str().unwrap(),
            "--profile-dir",
            profiles.to_str().unwrap(),
        ],
        &[("TMPDIR", fallback.to_str().unwrap())],
    );
    agent.wait_attached();
    http_load(&format!("http://{}/", target.addr()), &["--requests", "300"]);
    fs::remove_dir_all(&dest).unwrap();
    let r = agent.wait(Duration::from_secs(20));
    assert_eq!(r.code, 6, "{}\n{}", r.stdout, r.stderr);
    let written: Vec<PathBuf> =
        fs::read_dir(&fallback).unwrap().map(|e| e.unwrap().path()).collect();
    let find = |suffix: &str| {
        written
            .iter()
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no fallback *{suffix} in {written:?}:\n{}", r.stderr))
            .clone()
    };
    let (bmf_file, phases_file) = (find("-bench.json"), find("-phases.json"));
    assert!(
        r.stderr.contains(&format!("the results are in {} instead", bmf_file.display())),
        "{}",
        r.stderr
    );
    assert_eq!(bmf_value(&read_bmf(&bmf_file), "requests/count", "count"), 300.0);
    let doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&phases_file).unwrap()).unwrap();
    assert!(doc["phases"].is_array(), "{doc}");
    // The profiles: every file of the run's, and the BMF rows that count
    // them, which the folded file agrees with.
    let profile_dir = find("-profiles");
    assert!(
        r.stderr.contains(&format!("the profiles are in {} instead", profile_dir.display())),
        "{}",
        r.stderr
    );
    for file in ["run.cpu.folded", "run.cpu.svg", "run.cpu.pb.gz", "run.offcpu.folded"] {
        assert!(profile_dir.join(file).is_file(), "no {file} in {}", profile_dir.display());
    }
    let folded = fs::read_to_string(profile_dir.join("run.cpu.folded")).unwrap();
    let samples: u64 =
        folded.lines().map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap()).sum();
    assert_eq!(bmf_value(&read_bmf(&bmf_file), "profile/samples", "count"), samples as f64);
    let _ = fs::remove_dir_all(&base);
}

/// SIGKILL of the agent: nothing it loaded stays attached or pinned, and the
/// target keeps serving.
#[test]
fn agent_sigkill_leaves_nothing_attached_or_pinned() {
    let Some(_serial) = privileged() else { return };
    let target = Target::start("demo-server", &[]);
    let url = format!("http://{}/", target.addr());
    let pinned_before = pinned();
    for mode in ["attach", "run"] {
        let out = out_path(&format!("rel-agent-kill-{mode}"));
        let pid = target.pid.to_string();
        let server = fixture("demo-server");
        let args: Vec<&str> = match mode {
            "attach" => vec!["attach", "--pid", &pid, "--out", out.to_str().unwrap()],
            _ => vec!["run", "--out", out.to_str().unwrap(), "--", server.to_str().unwrap()],
        };
        let agent = Agent::spawn(&args);
        agent.wait_attached();
        http_load(&url, &["--requests", "500", "--connections", "2"]);
        let objects = snapshot_attached(&agent);
        let launched: Vec<u32> = children_of(agent.pid);
        agent.signal(libc::SIGKILL);
        let ended = agent.wait(Duration::from_secs(5));
        assert_eq!(ended.code, 128 + libc::SIGKILL);
        assert!(!out.exists(), "a killed agent writes nothing");
        assert_all_detached(&objects, &pinned_before);
        // A launched server outlives a SIGKILLed agent (nothing can stop it):
        // end it here.
        for pid in launched {
            // SAFETY: a process this test caused to exist.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    // The target was never disturbed.
    let after = http_load(&url, &["--requests", "200", "--connections", "2"]);
    assert_eq!(after.requests, 200);
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else {
        return Vec::new();
    };
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

// ---------------------------------------------------------------------------
// Input files (bad flags and values: cli.rs)
// ---------------------------------------------------------------------------

/// A malformed `--k6-results` file (garbage, truncated JSON, binary) does not
/// stop a run: the run completes, the one good point among the bad lines is
/// read, and every bad line is counted.
#[test]
fn malformed_k6_results_file_is_survived() {
    let Some(_serial) = privileged() else { return };
    let target = Target::start("demo-server", &[]);
    let file = out_path("rel-bad-k6").with_extension("k6.json");
    let mut junk =
        b"{\"type\":\"Point\",\"metric\":\"http_reqs\",\"data\":{\"time\":\"yesterday\"\n".to_vec();
    junk.extend_from_slice(b"\x00\xff\xfe not json at all\n{\"type\":\n");
    let good =
        r#"{"type":"Point","metric":"http_reqs","data":{"time":"2026-01-01T00:00:00Z","value":1}}"#;
    junk.extend_from_slice(format!("{good}\n").as_bytes());
    // Binary lines: any byte but a newline.
    const BINARY_LINES: u32 = 16;
    for line in 0..BINARY_LINES {
        let byte = |i: u32| match ((line * 256 + i) * 7919 % 251) as u8 {
            b'\n' => 0xff,
            b => b,
        };
        junk.extend((0..256).map(byte));
        junk.push(b'\n');
    }
    let bad_lines = 3 + BINARY_LINES;
    fs::write(&file, junk).unwrap();
    let out = out_path("rel-bad-k6-out");
    let pid = target.pid.to_string();
    let r = Agent::spawn(&[
        "attach",
        "--pid",
        &pid,
        "--duration",
        "1",
        "--k6-results",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .wait(Duration::from_secs(20));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"));
    let bmf = read_bmf(&out);
    assert_eq!(bmf_value(&bmf, "client/http_reqs", "count"), 1.0, "the good line");
    let counted =
        format!("k6 http_reqs 1, agent requests 0, {bad_lines} malformed k6 result lines");
    assert!(r.stdout.contains(&counted), "expected {counted:?} in\n{}", r.stdout);
    let _ = fs::remove_file(&file);
}

// ---------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------

/// As a non-root user (65534) with only capabilities, against a root-owned
/// target: CAP_BPF + CAP_PERFMON + CAP_DAC_READ_SEARCH + CAP_SYS_PTRACE is
/// enough (and RLIMIT_MEMLOCK 0 does not matter: no CAP_SYS_RESOURCE);
/// without CAP_DAC_READ_SEARCH, CAP_BPF or CAP_PERFMON the error names it
/// (with none, it also says to use sudo); without CAP_SYS_PTRACE it works,
/// warns naming it, and still counts every request.
#[test]
fn least_capabilities_work_and_a_missing_one_is_named() {
    let Some(_serial) = privileged() else { return };
    if Command::new("setpriv").arg("--version").output().is_err() {
        assert!(!in_ci(), "CI=true but setpriv (util-linux) is missing");
        eprintln!("\n*** SKIPPED: setpriv (util-linux) is not installed ***\n");
        return;
    }
    let target = Target::start("demo-server", &[]);
    let url = format!("http://{}/", target.addr());
    // Somewhere user 65534 may write.
    let dir = std::env::temp_dir().join(format!("perf-agent-caps-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let agent_as = |caps: &str, out: &Path| -> Agent {
        let set = if caps.is_empty() { "-all".to_string() } else { format!("-all,{caps}") };
        let script = format!(
            "ulimit -l 0 && exec setpriv --reuid=65534 --regid=65534 --clear-groups \
             --inh-caps={set} --ambient-caps={set} --bounding-set={set} \
             {} attach --pid {} --duration 2.5 --out {}",
            agent_bin().display(),
            target.pid,
            out.display()
        );
        Agent::spawn_cmd(Command::new("sh").args(["-c", &script]), &[caps])
    };
    // Exactly these four.
    for (caps, warns) in [
        ("+bpf,+perfmon,+dac_read_search,+sys_ptrace", false),
        ("+bpf,+perfmon,+dac_read_search", true),
    ] {
        let out = dir.join(format!("caps-{}.json", caps.len()));
        let agent = agent_as(caps, &out);
        agent.wait_attached();
        let load = http_load(&url, &["--requests", "300", "--new-connection-per-request"]);
        let ended = agent.wait(Duration::from_secs(20));
        assert_eq!(ended.code, 0, "{caps}: {}", ended.stderr);
        assert_eq!(ended.stderr.contains("CAP_SYS_PTRACE"), warns, "{caps}: {}", ended.stderr);
        let bmf = read_bmf(&out);
        assert_eq!(bmf_value(&bmf, "requests/count", "count"), load.requests as f64, "{caps}");
        let inbound = summary_number(&ended.stdout, "connections:", " inbound");
        let adopted = summary_number(&ended.stdout, "connections:", " opened before attach");
        if warns {
            // Listening ports unknown: the connections are adopted at their
            // first read instead; the requests are the same.
            assert_eq!((inbound, adopted), (0, 300), "{caps}: {}", ended.stdout);
        } else {
            assert_eq!((inbound, adopted), (300, 0), "{caps}: {}", ended.stdout);
            assert!(bmf.get("binary/size").is_some(), "{caps}: /proc/PID/exe readable");
        }
    }
    for (caps, named) in [
        ("+bpf,+perfmon", &["CAP_DAC_READ_SEARCH"][..]),
        ("+perfmon,+dac_read_search", &["CAP_BPF"]),
        ("+bpf,+dac_read_search", &["CAP_PERFMON"]),
        // None at all: the message also says how to get them.
        ("", &["CAP_BPF", "sudo"]),
    ] {
        let out = dir.join("caps-missing.json");
        let ended = agent_as(caps, &out).wait(Duration::from_secs(20));
        assert_eq!(ended.code, 1, "{caps:?}: {}", ended.stderr);
        for named in named {
            assert!(ended.stderr.contains(named), "{caps:?}: no {named} in {}", ended.stderr);
        }
        assert!(!out.exists());
    }
    let _ = fs::remove_dir_all(&dir);
}
