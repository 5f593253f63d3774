//! What `--delivery` costs (issue 14's cost clause): the delivery hooks
//! and the bookkeeping the socket programs do for them are opt-in, so the
//! default-mode rows no longer include them; this step measures them on
//! their own, on the demo-server scenario's server, always against the
//! agent in its default mode in the same rounds (the order alternating).
//!
//! - Throughput at saturation, agent with `--delivery` ÷ agent without,
//!   and the machine's CPU per request the same way (the steadier view,
//!   see `compare.rs`).
//! - [`COST_ROUNDS`] pairs following a fixed rate with the statistics on:
//!   each delivery hook's cost per run, their run time per request (the
//!   floor included and net of it), what the socket programs' bookkeeping
//!   adds to each of their runs, and the socket and delivery programs' BPF
//!   time per request with `--delivery` less without: what it adds in all.
//!   Only the programs `--delivery` changes count there: `sched_switch` and
//!   the memory programs run for the whole machine (other tenants' builds
//!   too), whose noise would drown a difference of a few hundred ns.

use anyhow::Result;

use super::agent_run::{AgentRun, FLOOR_PROGRAM, with_agent_args};
use super::check_interrupted;
use super::costs::{GOAL_ANY_NS, GOAL_HOT_NS, HOT_PROGRAMS, MIN_RUNS_FOR_GOAL};
use super::load::{Load, LoadSpec, http_load};
use super::results::{Goal, Results};
use super::runs::{Env, agent_first, each};

/// The delivery hooks (`agent/src/probes/delivery.rs`).
const DELIVERY_PROGRAMS: [&str; 3] = ["sk_data_ready", "tcp_probe", "tcp_retransmit_skb"];
/// The socket programs that call the delivery bookkeeping
/// (`agent-ebpf/src/net/delivery.rs`).
const BOOKKEEPING_PROGRAMS: [&str; 3] =
    ["tcp_rcv_space_adjust", "tcp_sendmsg_locked", "inet_sock_set_state"];
const DELIVERY: &[&str] = &["--delivery"];
/// Pairs of cost runs, and the length of each (at the cost scenario's rate):
/// tens of thousands of runs of each hook per run, ~15 s in all.
const COST_ROUNDS: usize = 2;
pub const COST_SECS: u64 = 2;

/// One round: the same load with the agent in its default mode and with
/// `--delivery`.
struct Round {
    default: (Load, AgentRun),
    delivery: (Load, AgentRun),
}

/// `rounds` rounds of `load`, each with the agent without and with
/// `--delivery`, the order alternating; the statistics on if `bpf_stats`.
fn rounds_of(env: &mut Env, rounds: usize, load: LoadSpec, bpf_stats: bool) -> Result<Vec<Round>> {
    let pid = load.target.expect("a target");
    let mut out = Vec::new();
    for round in 0..rounds {
        check_interrupted()?;
        let (mut default, mut delivery) = (None, None);
        let order = if agent_first(round) { [true, false] } else { [false, true] };
        for with_delivery in order {
            let extra: &[&str] = if with_delivery { DELIVERY } else { &[] };
            env.bpf_stats = bpf_stats;
            let run = with_agent_args(env, pid, extra, &mut |env| http_load(env, &load));
            env.bpf_stats = false;
            let (load, run) = run?;
            println!(
                "  round {} {}: {:>9.0} req/s  machine CPU {:>5.2} µs/req  agent: {} requests",
                round + 1,
                if with_delivery { "--delivery" } else { "default   " },
                load.rps(),
                load.busy_per_request() / 1e3,
                run.metric("requests/count", "count")
            );
            *(if with_delivery { &mut delivery } else { &mut default }) = Some((load, run));
        }
        out.push(Round { default: default.expect("ran"), delivery: delivery.expect("ran") });
    }
    Ok(out)
}

/// `saturation`: the throughput part's load; `cost`: a fixed-rate load.
pub fn run_step(
    env: &mut Env,
    rounds: usize,
    results: &mut Results,
    saturation: LoadSpec,
    cost: LoadSpec,
) -> Result<()> {
    println!(
        "\n== --delivery: throughput at saturation with it ÷ without it, the agent attached \
         both times ({rounds} rounds)"
    );
    let pairs = rounds_of(env, rounds, saturation, false)?;
    throughput_rows(results, &pairs);
    println!("\n== --delivery: the programs' cost with it and without it ({COST_ROUNDS} rounds)");
    let pairs = rounds_of(env, COST_ROUNDS, cost, true)?;
    cost_rows(results, &pairs);
    Ok(())
}

fn throughput_rows(results: &mut Results, pairs: &[Round]) {
    let note =
        format!("demo-server at saturation, agent --delivery ÷ default, {} rounds", pairs.len());
    let ratio = |f: fn(&Load) -> f64| each(pairs, |r| f(&r.delivery.0) / f(&r.default.0));
    results.add_spread("overhead/delivery_throughput_ratio", "ratio", &ratio(Load::rps)).note =
        note.clone();
    results
        .add_spread(
            "overhead/delivery_cpu_per_request_ratio",
            "ratio",
            &ratio(Load::busy_per_request),
        )
        .note = note;
}

/// Total run time and runs of program `name` over `runs`.
fn total<'a>(runs: impl Iterator<Item = &'a AgentRun>, name: &str) -> (f64, f64) {
    runs.filter_map(|r| r.programs.get(name))
        .fold((0.0, 0.0), |(ns, n), (cost, count)| (ns + cost * count, n + count))
}

/// The run time of the programs `--delivery` changes, net of the floor,
/// ÷ the requests the agent counted; NaN without the statistics.
fn affected_net_per_request(run: &AgentRun) -> f64 {
    let Some(&(floor, _)) = run.programs.get(FLOOR_PROGRAM) else { return f64::NAN };
    let net: f64 = DELIVERY_PROGRAMS
        .iter()
        .chain(&BOOKKEEPING_PROGRAMS)
        .filter_map(|name| run.programs.get(*name))
        .map(|(cost, count)| (cost - floor) * count)
        .sum();
    net / run.metric("requests/count", "count")
}

/// Rows of the cost rounds (statistics on).
fn cost_rows(results: &mut Results, pairs: &[Round]) {
    let with = || pairs.iter().map(|r| &r.delivery.1);
    let without = || pairs.iter().map(|r| &r.default.1);
    let (floor_ns, floor_runs) = total(with(), FLOOR_PROGRAM);
    if floor_runs == 0.0 {
        results.notes.push("no --delivery cost: the statistics were off".into());
        return;
    }
    let floor = floor_ns / floor_runs;
    let (mut ns, mut net) = (0.0, 0.0);
    for name in DELIVERY_PROGRAMS {
        let (time, count) = total(with(), name);
        if count == 0.0 {
            continue; // tcp_retransmit_skb: loopback retransmits nothing
        }
        let cost = time / count;
        (ns, net) = (ns + time, net + time - floor * count);
        let row = results.add(format!("overhead/delivery/prog_ns/{name}"), "latency", cost);
        row.note =
            format!("{count:.0} runs; {:.0} ns net of the floor ({floor:.0} ns)", cost - floor);
        if count >= MIN_RUNS_FOR_GOAL {
            let hot = HOT_PROGRAMS.contains(&name);
            row.goal = Goal::AtMost(if hot { GOAL_HOT_NS } else { GOAL_ANY_NS });
        }
    }
    // The bookkeeping, per run of the socket programs that do it.
    for name in BOOKKEEPING_PROGRAMS {
        let ((on_ns, on_runs), (off_ns, off_runs)) = (total(with(), name), total(without(), name));
        if on_runs > 0.0 && off_runs > 0.0 {
            let (on, off) = (on_ns / on_runs, off_ns / off_runs);
            results
                .add(format!("overhead/delivery/prog_ns_added/{name}"), "latency", on - off)
                .note = format!("per run: {on:.0} ns with --delivery, {off:.0} ns without");
        }
    }
    let requests: f64 = with().map(|r| r.metric("requests/count", "count")).sum();
    if requests.is_nan() || requests <= 0.0 {
        results.notes.push("no --delivery cost per request: the agent counted no request".into());
        return;
    }
    results.add("overhead/delivery_ns_per_request", "latency", ns / requests).note =
        "sk_data_ready + tcp_probe + tcp_retransmit_skb run time ÷ requests, floor included".into();
    results.add("overhead/delivery_ns_per_request_net", "latency", net / requests).note =
        "the same less the floor per run".into();
    let added = each(pairs, |r| {
        affected_net_per_request(&r.delivery.1) - affected_net_per_request(&r.default.1)
    });
    results.add_spread("overhead/delivery_added_ns_per_request", "latency", &added).note = format!(
        "socket and delivery programs' run time net of the floor ÷ requests, --delivery − \
         default, per round ({} rounds): the hooks and the bookkeeping",
        pairs.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(programs: &[(&str, f64, f64)], requests: f64) -> (Load, AgentRun) {
        let run = AgentRun {
            programs: programs.iter().map(|&(n, ns, c)| (n.to_string(), (ns, c))).collect(),
            bmf: serde_json::json!({ "requests/count": { "count": { "value": requests } } }),
            ..AgentRun::default()
        };
        (Load { requests, ..Load::default() }, run)
    }

    #[test]
    fn cost_rows_per_program_per_request_and_added() {
        let floor = (FLOOR_PROGRAM, 50.0, 1000.0);
        let round = Round {
            default: run(
                &[("tcp_rcv_space_adjust", 120.0, 100.0), ("sched_switch", 70.0, 5000.0), floor],
                100.0,
            ),
            delivery: run(
                &[
                    ("sk_data_ready", 80.0, 200.0),
                    ("tcp_probe", 140.0, 200.0),
                    ("tcp_rcv_space_adjust", 150.0, 100.0),
                    ("sched_switch", 90.0, 9000.0),
                    floor,
                ],
                100.0,
            ),
        };
        let mut r = Results::default();
        cost_rows(&mut r, &[round]);
        let value = |b: &str| r.rows.iter().find(|row| row.benchmark == b).map(|row| row.value);
        // (80 + 140) × 200 runs ÷ 100 requests; net: (30 + 90) × 2.
        assert_eq!(value("overhead/delivery_ns_per_request"), Some(440.0));
        assert_eq!(value("overhead/delivery_ns_per_request_net"), Some(240.0));
        assert_eq!(value("overhead/delivery/prog_ns/tcp_probe"), Some(140.0));
        assert!(value("overhead/delivery/prog_ns/tcp_retransmit_skb").is_none());
        assert_eq!(value("overhead/delivery/prog_ns_added/tcp_rcv_space_adjust"), Some(30.0));
        // With: 240 + (150 − 50) × 100 ÷ 100 = 340; without: (120 − 50) × 1.
        // sched_switch, which --delivery does not change, does not count.
        assert_eq!(value("overhead/delivery_added_ns_per_request"), Some(270.0));
    }
}
