//! What `--delivery` costs (issue 14's cost clause): the delivery hooks
//! and the bookkeeping the socket programs do for them are opt-in, so the
//! default-mode rows no longer include them; this step measures them on
//! their own, on the demo-server scenario's server.
//!
//! - Throughput at saturation, agent with `--delivery` ÷ agent without,
//!   interleaved rounds (the order alternates), and the machine's CPU per
//!   request the same way (the steadier view, see `compare.rs`).
//! - One run following the cost scenario's fixed rate with `--delivery` and
//!   the statistics on: each delivery hook's cost per run, their run time
//!   per request (the floor included and net of it), and every program's
//!   BPF time per request less the default mode's in the cost scenario (the
//!   bookkeeping in `sock_recv_length`/`tcp_sendmsg_locked` included).

use anyhow::Result;

use super::agent_run::{AgentRun, FLOOR_PROGRAM, with_agent_args};
use super::check_interrupted;
use super::costs::{GOAL_ANY_NS, GOAL_HOT_NS, HOT_PROGRAMS, MIN_RUNS_FOR_GOAL};
use super::load::{Load, LoadSpec, http_load};
use super::results::{Goal, Results};
use super::runs::{Env, agent_first, each};

/// The delivery hooks (`agent/src/probes/delivery.rs`).
pub const DELIVERY_PROGRAMS: [&str; 3] = ["sk_data_ready", "tcp_probe", "tcp_retransmit_skb"];
const DELIVERY: &[&str] = &["--delivery"];

/// One round: the same load with the agent in its default mode and with
/// `--delivery`.
struct Round {
    default: Load,
    delivery: Load,
}

/// `saturated`: requests per saturation run; `cost`: the cost scenario's
/// load; `default_net_per_request`: the default mode's BPF ns per request
/// (net of the floor) in the cost scenario, if measured.
pub fn run_step(
    env: &mut Env,
    rounds: usize,
    results: &mut Results,
    saturated: LoadSpec,
    cost: LoadSpec,
    default_net_per_request: Option<f64>,
) -> Result<()> {
    let pid = saturated.target.expect("a target");
    println!(
        "\n== --delivery: throughput at saturation with it ÷ without it, agent attached both \
         times ({rounds} rounds)"
    );
    let mut out = Vec::new();
    for round in 0..rounds {
        check_interrupted()?;
        let (mut default, mut delivery) = (None, None);
        let order = if agent_first(round) { [true, false] } else { [false, true] };
        for with_delivery in order {
            let extra: &[&str] = if with_delivery { DELIVERY } else { &[] };
            let (load, _) =
                with_agent_args(env, pid, extra, &mut |env| http_load(env, &saturated))?;
            println!(
                "  round {} {}: {:>9.0} req/s  machine CPU {:>5.2} µs/req",
                round + 1,
                if with_delivery { "--delivery" } else { "default   " },
                load.rps(),
                load.busy_per_request() / 1e3
            );
            *(if with_delivery { &mut delivery } else { &mut default }) = Some(load);
        }
        out.push(Round { default: default.expect("ran"), delivery: delivery.expect("ran") });
    }
    let note = format!("demo-server at saturation, agent --delivery ÷ default, {rounds} rounds");
    results
        .add_spread(
            "overhead/delivery_throughput_ratio",
            "ratio",
            &each(&out, |r| r.delivery.rps() / r.default.rps()),
        )
        .note = note.clone();
    results
        .add_spread(
            "overhead/delivery_cpu_per_request_ratio",
            "ratio",
            &each(&out, |r| r.delivery.busy_per_request() / r.default.busy_per_request()),
        )
        .note = note;

    check_interrupted()?;
    println!("\n== --delivery: the programs' cost, following the cost scenario's load");
    env.bpf_stats = true;
    let run = with_agent_args(env, pid, DELIVERY, &mut |env| http_load(env, &cost));
    env.bpf_stats = false;
    let (load, run) = run?;
    println!(
        "  {:.0} requests; agent: {} requests",
        load.requests,
        run.metric("requests/count", "count")
    );
    cost_rows(results, &run, &load, default_net_per_request);
    Ok(())
}

/// Rows of the `--delivery` run with the statistics on.
fn cost_rows(results: &mut Results, run: &AgentRun, load: &Load, default_net: Option<f64>) {
    let Some(&(floor, _)) = run.programs.get(FLOOR_PROGRAM) else {
        results.notes.push("no --delivery cost: the statistics were off".into());
        return;
    };
    let (mut ns, mut net) = (0.0, 0.0);
    for name in DELIVERY_PROGRAMS {
        let Some(&(cost, count)) = run.programs.get(name) else { continue };
        ns += cost * count;
        net += (cost - floor) * count;
        let row = results.add(format!("overhead/delivery/prog_ns/{name}"), "latency", cost);
        row.note =
            format!("{count:.0} runs; {:.0} ns net of the floor ({floor:.0} ns)", cost - floor);
        if count >= MIN_RUNS_FOR_GOAL {
            let hot = HOT_PROGRAMS.contains(&name);
            row.goal = Goal::AtMost(if hot { GOAL_HOT_NS } else { GOAL_ANY_NS });
        }
    }
    let requests = run.metric("requests/count", "count");
    if requests.is_nan() || requests <= 0.0 {
        results.notes.push("no --delivery cost per request: the agent counted no request".into());
        return;
    }
    results.add("overhead/delivery_ns_per_request", "latency", ns / requests).note =
        "sk_data_ready + tcp_probe + tcp_retransmit_skb run time ÷ requests, floor included".into();
    results.add("overhead/delivery_ns_per_request_net", "latency", net / requests).note =
        "the same less the floor per run".into();
    let all_net = run.bpf_ns_net() / load.requests;
    results.add("overhead/bpf_ns_per_request_net_delivery", "latency", all_net).note =
        "every program's run time ÷ requests with --delivery, net of the floor".into();
    if let Some(default_net) = default_net {
        results
            .add("overhead/delivery_added_ns_per_request", "latency", all_net - default_net)
            .note = format!(
            "bpf_ns_per_request_net with --delivery − without ({default_net:.0} ns, the \
                 cost scenario's median): the hooks and the socket programs' bookkeeping"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rows_per_program_per_request_and_added() {
        let programs = [
            ("sk_data_ready", (80.0, 200.0)),
            ("tcp_probe", (140.0, 200.0)),
            ("sock_recv_length", (150.0, 100.0)),
            (FLOOR_PROGRAM, (50.0, 1000.0)),
        ];
        let run = AgentRun {
            programs: programs.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            bmf: serde_json::json!({ "requests/count": { "count": { "value": 100.0 } } }),
            ..AgentRun::default()
        };
        let load = Load { requests: 100.0, ..Load::default() };
        let mut r = Results::default();
        cost_rows(&mut r, &run, &load, Some(200.0));
        let value = |b: &str| r.rows.iter().find(|row| row.benchmark == b).map(|row| row.value);
        // (80 + 140) × 200 runs ÷ 100 requests; net: (30 + 90) × 2.
        assert_eq!(value("overhead/delivery_ns_per_request"), Some(440.0));
        assert_eq!(value("overhead/delivery_ns_per_request_net"), Some(240.0));
        assert_eq!(value("overhead/delivery/prog_ns/tcp_probe"), Some(140.0));
        // Every program net: 240 + (150 − 50) × 100 ÷ 100 = 340; less 200.
        assert_eq!(value("overhead/bpf_ns_per_request_net_delivery"), Some(340.0));
        assert_eq!(value("overhead/delivery_added_ns_per_request"), Some(140.0));
    }
}
