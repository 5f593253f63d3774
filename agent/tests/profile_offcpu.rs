//! Off-CPU profiles and run-queue waits (`--profile-dir`, default
//! off-CPU on): the time each blocking function of a fixture spends off CPU
//! against the fixture's own accounting; run-queue waits against the
//! kernel's `run_delay` in /proc.

mod common;
mod profile_common;

use std::path::Path;

use common::{
    Agent, AgentOutput, Target, bmf_value, fixture, http_load, out_path, privileged, read_bmf,
};
use profile_common::{Folded, check_every_pprof, check_svg, profile_dir};

/// How long one profiled run may take to end.
const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `key=value` of a line.
fn field(line: &str, key: &str) -> u64 {
    common::ready_field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Profiles `offcpu-target --seconds 3 <extra>` for its whole life (no
/// --duration: the run ends when the fixture exits by itself, after
/// printing its accounting), the agent given `agent_extra`; the agent's
/// output and that accounting line.
fn run_offcpu_target(
    dir: &Path,
    out: &Path,
    agent_extra: &[&str],
    extra: &[&str],
) -> (AgentOutput, String) {
    let target = fixture("offcpu-target");
    let mut args =
        vec!["run", "--profile-dir", dir.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(agent_extra);
    args.extend_from_slice(&["--", target.to_str().unwrap(), "--seconds", "3"]);
    args.extend_from_slice(extra);
    let r = Agent::spawn(&args).wait(RUN_TIMEOUT);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // run.cpu and run.offcpu, read back by protoc against the folded files.
    assert_eq!(check_every_pprof(dir), 2);
    let acct = r.stdout.lines().find(|l| l.starts_with("offcpu ")).expect("fixture's accounting");
    let acct = acct.to_string();
    (r, acct)
}

/// Off-CPU: each blocking function's time within 10 % of the fixture's own
/// accounting (a thread sleeping 10 ms at a time, one waiting on a mutex
/// another holds most of the time). The time the hypervisor stole from the
/// busy threads estimated from `/proc/stat` (the default).
#[test]
fn off_cpu_time_per_function_matches_the_fixture() {
    let Some(_serial) = privileged() else { return };
    check_off_cpu_per_function("offcpu", &[]);
}

/// The same with `--runq-waits`: the stolen time summed at each switch-out
/// by `sched_switch`.
#[test]
fn off_cpu_time_per_function_matches_the_fixture_with_runq_waits() {
    let Some(_serial) = privileged() else { return };
    check_off_cpu_per_function("offcpu-runq", &["--runq-waits"]);
}

fn check_off_cpu_per_function(name: &str, agent_extra: &[&str]) {
    let dir = profile_dir(name);
    let out = out_path(&format!("profile-{name}"));
    let (r, acct) = run_offcpu_target(&dir, &out, agent_extra, &[]);
    eprintln!("{}", r.stdout.lines().find(|l| l.contains("off-CPU: ")).unwrap_or_default());
    let folded = Folded::read(&dir.join("run.offcpu.folded"));
    let sites = blocking_sites(&r.stdout);
    for (function, key) in [
        ("offcpu_target::sleep_ten_ms", "sleep_ns"),
        ("offcpu_target::wait_for_lock", "lock_wait_ns"),
    ] {
        let agent = folded.with_frame(|f| f == function) as f64;
        let truth = field(&acct, key) as f64;
        eprintln!(
            "{function}: {agent:.0} ns off CPU, fixture {truth:.0} ({:+.1} %)",
            (agent / truth - 1.0) * 100.0
        );
        assert!(
            (agent - truth).abs() <= 0.10 * truth,
            "{function}: {agent:.0} ns off CPU, fixture says {truth:.0} ({acct})"
        );
        // The summary names the function with the call it blocked in, at
        // its share of the folded file (printed to 0.1 %).
        let share = agent * 100.0 / folded.total() as f64;
        let (site, percent) = sites
            .iter()
            .find(|(site, _)| site.ends_with(function))
            .unwrap_or_else(|| panic!("{function} is not a blocking site in\n{}", r.stdout));
        assert!((percent - share).abs() <= 0.1, "{site}: {percent} %, folded says {share:.2} %");
    }
    // Weighted in ns: each stack ends in the kernel function the thread
    // blocked in (a blocked task's kernel stack starts above the
    // scheduler's own frames).
    assert!(
        folded
            .stacks
            .iter()
            .all(|(f, _)| f.last().unwrap().ends_with("_[k]") || f[0] == "[stack not sampled]"),
        "{:?}",
        folded.stacks
    );
    check_svg(
        &dir.join("run.offcpu.svg"),
        &["offcpu_target::sleep_ten_ms", "offcpu_target::wait_for_lock"],
    );
    // The on-CPU profile of the same run: the holder's and waiter's burn.
    let on = Folded::read(&dir.join("run.cpu.folded"));
    assert_eq!(on.total() as f64, bmf_value(&read_bmf(&out), "profile/samples", "count"));
}

/// Blocks far over the stacks taken (two threads napping 20 µs at a time,
/// tens of thousands of blocks a second, ~50 stacks a second taken, about
/// one per CPU and tick as aimed): the
/// napping function's off-CPU time is the nappers' totals from the
/// scheduler's counters, within 10 % of the fixture's own accounting. The
/// truth is `nap_off_cpu_ns`, the naps' wall time minus the nappers' own
/// CPU time over them: ~9 % of a nap is on CPU (system call, timer,
/// switch), which the agent rightly does not count. Most of a nap's time
/// off CPU here is the wait for a CPU after its wake-up (the holder and the
/// waiter burn both CPUs): a third of it, which the counters hold with the
/// preempted threads' waits and the ticks' share of woken waits splits
/// off (−2.6 … +0.4 % over three runs; counting blocked ticks instead read
/// +7 … +16 %: `docs/performance.md`, fourteenth session).
#[test]
fn off_cpu_time_is_estimated_from_sampled_blocks() {
    let Some(_serial) = privileged() else { return };
    let dir = profile_dir("offcpu-sampled");
    let out = out_path("profile-offcpu-sampled");
    let (r, acct) = run_offcpu_target(&dir, &out, &[], &["--nappers", "2"]);
    let counts = r.stdout.lines().find(|l| l.contains("off-CPU: ")).expect("summary line");
    let number_before = |marker: &str| -> u64 {
        let head = &counts[..counts.find(marker).unwrap_or_else(|| panic!("{counts}"))];
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    let (blocks, stacks) = (number_before(" blocks,"), number_before(" stacks taken"));
    assert!(stacks * 10 < blocks, "blocks were sampled: {counts}");
    // About one stack per CPU and tick: the nappers and the sleeper are in
    // a new block at nearly every tick, so the aim is reachable up to three
    // CPUs. Over ~75 ticks the count's own spread is ~8 %; ±25 % fails the
    // old count of new blocks, which left out those whose stack the tick
    // took and so overshot by ~1.5 times.
    let ticks = number_before(" ticks");
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let per_tick = stacks as f64 / ticks as f64;
    eprintln!("stacks per tick {per_tick:.2} (aim {cpus}; {counts})");
    assert!(
        per_tick <= 1.25 * cpus && per_tick >= 0.75 * cpus.min(3.0),
        "stacks per tick {per_tick:.2}, aim {cpus}: {counts}"
    );
    let folded = Folded::read(&dir.join("run.offcpu.folded"));
    let agent = folded.with_frame(|f| f == "offcpu_target::nap") as f64;
    let truth = field(&acct, "nap_off_cpu_ns") as f64;
    eprintln!("nap: {agent:.0} ns off CPU estimated, fixture says {truth:.0} ({acct}; {counts})");
    assert!(
        (agent - truth).abs() <= 0.10 * truth,
        "nap: {agent:.0} ns off CPU estimated, fixture says {truth:.0} ({acct}; {counts})"
    );
}

/// The summary's off-CPU blocking sites: (`call ← caller ← caller`, %).
fn blocking_sites(stdout: &str) -> Vec<(String, f64)> {
    stdout
        .lines()
        .skip_while(|l| !l.contains("off-CPU sites of "))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| {
            let (percent, site) = l.trim().split_once("  ").expect("`percent  site`");
            (site.to_string(), percent.parse().expect("a percentage"))
        })
        .collect()
}

/// `human_ns` text back to ns.
fn parse_human_ns(s: &str) -> f64 {
    let (v, unit) = s.trim().split_once(' ').unwrap_or_else(|| panic!("{s:?}"));
    let v: f64 = v.parse().unwrap_or_else(|_| panic!("{s:?}"));
    v * match unit {
        "s" => 1e9,
        "ms" => 1e6,
        "µs" => 1e3,
        _ => panic!("unit in {s:?}"),
    }
}

/// The agent attached to `pid` with `--profile-dir dir --out out` and
/// `extra` arguments.
fn attach_profiling(pid: u32, (dir, out): (&Path, &Path), extra: &[&str]) -> Agent {
    let pid = pid.to_string();
    let mut args = vec!["attach", "--pid", &pid, "--profile-dir", dir.to_str().unwrap()];
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    Agent::spawn(&args)
}

/// [`attach_profiling`] for `secs` with run-queue waits (`--runq-waits`)
/// and no off-CPU profiles (`--no-off-cpu`).
fn attach_runq_only(pid: u32, secs: &str, dir: &Path, out: &Path) -> Agent {
    attach_profiling(pid, (dir, out), &["--duration", secs, "--no-off-cpu", "--runq-waits"])
}

/// The summary's run-queue line of a run that succeeded.
fn runq_summary_line(r: &AgentOutput) -> &str {
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r.stdout.lines().find(|l| l.contains("run-queue wait total")).expect("summary line")
}

/// Run-queue waits (three busy threads on two cores wait a lot) add up to
/// the kernel's own `run_delay` in /proc/PID/task/*/schedstat within 10 %
/// (the waits are read from that same counter at each switch-out: this
/// checks that no slice is missed or counted twice);
/// their p50 and p99 are in BMF. `--no-off-cpu` writes no off-CPU files.
#[test]
fn runq_waits_add_up_to_proc_schedstat() {
    let Some(_serial) = privileged() else { return };
    let target = common::Target::start("cpu-burner", &["--threads", "3", "--late-threads", "0"]);
    let (dir, out) = (profile_dir("runq"), out_path("profile-runq"));
    let r = attach_runq_only(target.pid, "3", &dir, &out).wait(RUN_TIMEOUT);
    let line = runq_summary_line(&r);
    let agent = parse_human_ns(
        line.split("run-queue wait total").nth(1).unwrap().split('(').next().unwrap(),
    );
    let truth = parse_human_ns(line.split("run_delay").nth(1).unwrap().split(')').next().unwrap());
    assert!(truth > 1e8, "three threads on two cores waited only {truth} ns: {line}");
    assert!((agent - truth).abs() <= 0.10 * truth, "{line}");
    let bmf = read_bmf(&out);
    let (p50, p99) = (
        bmf_value(&bmf, "sched/runq_wait_p50", "latency"),
        bmf_value(&bmf, "sched/runq_wait_p99", "latency"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 < 1e9, "p50 {p50} p99 {p99}");
    assert!(!dir.join("run.offcpu.folded").exists(), "--no-off-cpu");
    assert_eq!(check_every_pprof(&dir), 1, "run.cpu only");
}

/// The target's threads' `(run_delay ns, waits)` now, summed: the second
/// and third fields of `/proc/PID/task/*/schedstat` (`pcount`: times run,
/// each after a wait).
fn schedstat_waits(pid: u32) -> (u64, u64) {
    let mut sum = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let text = std::fs::read_to_string(task.unwrap().path().join("schedstat")).unwrap();
        let f: Vec<u64> = text.split_whitespace().map(|v| v.parse().unwrap()).collect();
        sum = (sum.0 + f[1], sum.1 + f[2]);
    }
    sum
}

/// By default (no `--runq-waits`, no program at context switches) the mean
/// run-queue wait comes from the threads' `run_delay` and switches as the
/// off-CPU ticks read them: three busy threads on two cores, against
/// `/proc/PID/task/*/schedstat`'s `run_delay` ÷ `pcount` over most of the
/// agent's window (read after it attached and before it ends: its start-up
/// and symbolizing take CPU the target then waits for), within 10 %. The
/// test only sleeps until the window has ended: a loop that polls every
/// millisecond (`Agent::wait`) preempts the burners often enough to cut
/// their mean wait from ~3.3 to ~0.9 ms (seen at the agent's ticks when
/// this test polled for the agent's end inside its window). No percentiles without their hook.
#[test]
fn the_mean_run_queue_wait_matches_proc_schedstat() {
    let Some(_serial) = privileged() else { return };
    let target = common::Target::start("cpu-burner", &["--threads", "3", "--late-threads", "0"]);
    let (dir, out) = (profile_dir("runq-mean"), out_path("profile-runq-mean"));
    let agent = attach_profiling(target.pid, (&dir, &out), &["--duration", "3"]);
    agent.wait_attached();
    let before = schedstat_waits(target.pid);
    std::thread::sleep(std::time::Duration::from_millis(2800));
    let after = schedstat_waits(target.pid);
    // Past the window's end before polling for the agent's.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let r = agent.wait(RUN_TIMEOUT);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let truth = (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64;
    let bmf = read_bmf(&out);
    let mean = bmf_value(&bmf, "sched/runq_wait_mean", "latency");
    eprintln!("mean run-queue wait {mean:.0} ns, /proc {truth:.0} ns ({before:?} → {after:?})");
    assert!(truth > 100_000.0, "three threads on two cores barely waited: {truth} ns");
    assert!((mean - truth).abs() <= 0.10 * truth, "agent {mean:.0} ns, /proc {truth:.0} ns");
    assert!(bmf.get("sched/runq_wait_p50").is_none(), "no percentiles without --runq-waits");
}

/// A server with a thread per connection (demo-server: each http-load run's
/// 4 connections get 4 threads, gone when it ends). `/proc` no longer
/// lists those threads at the end of the run, so its run-queue total
/// misses their waits; the summary says so beside it rather than print a
/// ground truth that silently disagrees with the agent's count.
#[test]
fn the_summary_says_when_proc_misses_exited_threads() {
    let Some(_serial) = privileged() else { return };
    let server = common::Target::start("demo-server", &[]);
    let (dir, out) = (profile_dir("runq-exited"), out_path("profile-runq-exited"));
    let agent = attach_runq_only(server.pid, "5", &dir, &out);
    agent.wait_attached();
    let url = format!("http://{}/", server.addr());
    for _ in 0..3 {
        common::http_load(&url, &["--requests", "20000"]);
    }
    let r = agent.wait(RUN_TIMEOUT);
    let line = runq_summary_line(&r);
    assert!(line.contains("threads that exited during the run used"), "{line}");
}

/// A saturated server's threads block for microseconds at a time, so one
/// can be woken and run on another CPU while the tick copies its stack; a
/// copy that mixes two moments of the thread unwound into addresses in no
/// mapping (~4 % of demo-server's blocked time sat under `[unknown]+0x…`
/// callers of `recv`). The iterator drops such stacks (and the summary
/// counts them): every off-CPU stack left unwinds through mapped code.
#[test]
fn torn_off_cpu_stacks_of_a_busy_server_are_dropped_not_misread() {
    let Some(_serial) = privileged() else { return };
    let server = Target::start("demo-server", &[]);
    let (dir, out) = (profile_dir("offcpu-torn"), out_path("profile-offcpu-torn"));
    let agent = attach_profiling(server.pid, (&dir, &out), &[]);
    agent.wait_attached();
    http_load(&format!("http://{}/", server.addr()), &["--requests", "150000"]);
    agent.signal(libc::SIGINT);
    let r = agent.wait(RUN_TIMEOUT);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let folded = Folded::read(&dir.join("run.offcpu.folded"));
    let unmapped = folded.with_frame(|f| f.starts_with("[unknown]"));
    assert_eq!(unmapped, 0, "{unmapped} ns under unmapped frames:\n{}", r.stdout);
    // The connection threads wait for requests in the server's own code.
    let serving = folded.with_frame(|f| f == "fixtures::http::HeadBuffer::read_head");
    assert!(serving > 0, "no blocked time in read_head:\n{}", r.stdout);
}
