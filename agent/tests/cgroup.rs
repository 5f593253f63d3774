//! `run --cpus/--memory`: the target in a cgroup of its own with Docker's
//! limits, on whichever layout the machine has (v1 here, v2 on GitHub's
//! runners). Ground truth: `/proc/PID/stat` read by the test itself, and
//! the kernel's OOM kill seen as the target's death by SIGKILL.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::*;
use perf_agent::cgroup::{Version, place};

/// Where perf-agent puts a cgroup for these controllers, as the library
/// computes it for this process (the agent, our child, shares our cgroups).
fn cgroup_parents(cpu: bool, memory: bool) -> (Version, Vec<PathBuf>) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let ctl = |root: &Path| std::fs::read_to_string(root.join("cgroup.controllers")).ok();
    let p = place::placement(&mountinfo, &own, ctl, cpu, memory).expect("cgroups available");
    (p.version, [p.cpu_parent, p.memory_parent].into_iter().flatten().collect())
}

fn pid_of(agent: &Agent) -> u32 {
    let line = agent.expect_stdout_line("ready");
    ready_field(&line, "pid").unwrap().parse().unwrap()
}

/// Two spinning threads under `--cpus 0.5` get half a core, not two: the
/// process's own `utime + stime` over 2 s says 50 % ± 5 %, the agent agrees,
/// and the cgroup reports throttling. The cgroup is gone afterwards.
#[test]
fn two_spinning_threads_under_half_a_cpu_use_half_a_core() {
    let Some(_serial) = privileged() else { return };
    let out = out_path("cgroup-cpus");
    let burner = fixture("cpu-burner");
    let agent = Agent::spawn(&[
        "run",
        "--cpus",
        "0.5",
        "--duration",
        "4",
        "--out",
        out.to_str().unwrap(),
        "--",
        burner.to_str().unwrap(),
        "--threads",
        "2",
        "--late-threads",
        "0",
    ]);
    let pid = pid_of(&agent);
    let agent_pid = agent.pid;
    let (version, parents) = cgroup_parents(true, false);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(own.contains(&format!("perf-agent-{}", agent.pid)), "not in its cgroup: {own}");
    std::thread::sleep(Duration::from_millis(700));
    let (t0, c0) = (Instant::now(), proc_cpu_ns(pid));
    std::thread::sleep(Duration::from_secs(2));
    let (wall, cpu) = (t0.elapsed().as_nanos() as f64, (proc_cpu_ns(pid) - c0) as f64);
    let proc_percent = cpu / wall * 100.0;
    let result = agent.wait(Duration::from_secs(30));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    eprintln!("{}", result.stdout);
    assert!((45.0..=55.0).contains(&proc_percent), "/proc says {proc_percent:.1} % of a core");
    let bmf = read_bmf(&out);
    let agent_percent = bmf_value(&bmf, "cpu/percent", "cpu-percent");
    assert!((45.0..=55.0).contains(&agent_percent), "the agent says {agent_percent:.1} %");
    eprintln!("cpu: /proc {proc_percent:.2} %, agent {agent_percent:.2} % of a core");
    let throttled = bmf_value(&bmf, "cgroup/cpu_throttled_periods", "count");
    let periods = bmf_value(&bmf, "cgroup/cpu_periods", "count");
    // Two threads want 200 ms per 100 ms period and get 50: nearly every
    // period ends throttled; 4 s is about 40 periods.
    assert!(periods >= 30.0 && throttled >= 0.8 * periods, "{throttled} of {periods}");
    assert!(bmf_value(&bmf, "cgroup/cpu_throttled_percent", "percent") >= 80.0);
    assert!(bmf_value(&bmf, "cgroup/cpu_throttled_time", "cpu-time") > 1e9);
    assert!(result.stdout.contains("cpu quota 0.5 CPU, throttled in"), "{}", result.stdout);
    for parent in parents {
        let dir = parent.join(format!("perf-agent-{agent_pid}"));
        assert!(!dir.exists(), "{version:?} cgroup {} left behind", dir.display());
    }
}

/// A target that allocates 96 MiB under `--memory 32m` is killed by the
/// kernel's OOM killer; the run ends with the target, with a message
/// naming the limit and the results written.
#[test]
fn a_target_allocating_past_its_memory_limit_is_oom_killed_and_reported() {
    let Some(_serial) = privileged() else { return };
    let out = out_path("cgroup-oom");
    let toucher = fixture("mem-toucher");
    let agent = Agent::spawn(&[
        "run",
        "--memory",
        "32m",
        "--duration",
        "20",
        "--out",
        out.to_str().unwrap(),
        "--",
        toucher.to_str().unwrap(),
        "--mib",
        "96",
        "--wait-ms",
        "300",
    ]);
    let result = agent.wait(Duration::from_secs(40));
    eprintln!("{}\n{}", result.stdout, result.stderr);
    // mem-toucher never listens, so its death is "exited during startup"
    // (5); a server killed after it listened gives 3. Both keep the results.
    assert_eq!(result.code, 5, "the target died before --duration");
    assert!(result.stdout.contains("killed by signal 9"), "{}", result.stdout);
    assert!(!result.stdout.contains("touched"), "it never finished touching 96 MiB");
    assert!(
        result.stderr.contains("the OOM killer killed 1 process(es) of the target: it reached --memory 32m (33554432 bytes"),
        "{}",
        result.stderr
    );
    let bmf = read_bmf(&out);
    assert_eq!(bmf_value(&bmf, "cgroup/oom_kills", "count"), 1.0);
    assert_eq!(bmf_value(&bmf, "agent/partial", "count"), 1.0);
    let peak = bmf_value(&bmf, "cgroup/memory_peak", "memory");
    assert!(peak <= (32 << 20) as f64 && peak >= (28 << 20) as f64, "cgroup peak {peak}");
    // RSS also counts the program's file pages, which the cgroup that first
    // read them was charged for: a few MiB above the limit at most.
    let rss = bmf_value(&bmf, "memory/peak_rss", "memory");
    assert!(rss <= (36 << 20) as f64 && rss >= (28 << 20) as f64, "the target's peak RSS {rss}");
}

/// A cgroup left by an agent that was killed is removed at the next start.
#[test]
fn a_stale_cgroup_is_removed_at_the_next_start() {
    let Some(_serial) = privileged() else { return };
    let (_, parents) = cgroup_parents(true, false);
    // PIDs above pid_max are never alive.
    let stale = parents[0].join("perf-agent-99999999");
    std::fs::create_dir(&stale).unwrap();
    let burner = fixture("cpu-burner");
    let result = run_agent(&[
        "run",
        "--cpus",
        "1",
        "--duration",
        "1",
        "--",
        burner.to_str().unwrap(),
        "--threads",
        "1",
        "--late-threads",
        "0",
    ]);
    let exists = stale.exists();
    if exists {
        let _ = std::fs::remove_dir(&stale);
    }
    assert_eq!(result.code, 0, "{}", result.stderr);
    assert!(!exists, "{} not removed:\n{}", stale.display(), result.stderr);
    assert!(result.stderr.contains("removed the stale cgroup"), "{}", result.stderr);
}

#[test]
fn bad_limits_are_usage_errors() {
    for (args, needle) in [
        (&["run", "--cpus", "0", "--", "true"][..], "at least 0.01"),
        (&["run", "--memory", "5m", "--", "true"], "the smallest limit is 6m"),
        (&["run", "--memory", "lots", "--", "true"], "expected a size"),
        (&["attach", "--pid", "1", "--cpus", "1"], "unexpected argument '--cpus'"),
    ] {
        let out = run_agent(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}
