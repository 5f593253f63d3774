#!/bin/bash
# The seventh session's scheduler-hook experiments (docs/performance.md,
# "Seventh session"). Run as root from a built checkout:
#   bash docs/experiments/sched-hooks/run.sh [agent binary]
# 1. per-task context-switch perf events vs the agent's sched_switch:
#    what a ping-pong of two unrelated processes pays per round trip;
#    and what the events cost when the ping-pong itself carries them.
# 2. the cost of a kernel / user stack from sched_switch (bpftrace).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
agent=${1:-$here/../../../target/release/perf-agent}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -o "$work/swev" "$here/swev.c"
cc -O2 -o "$work/pingpong" "$here/pingpong.c"
cd "$work"
N=300000
sleep 1000 & idle=$!
for round in 1 2 3 4; do
  echo "round $round (ns per round trip)"
  echo -n "  nothing:                         "; ./pingpong $N
  ./swev $idle 8 2>/dev/null & ev=$!; sleep 0.3
  echo -n "  per-task events on an idle pid:  "; ./pingpong $N
  kill $ev || true; wait $ev 2>/dev/null || true
  ./pingpong $N 1 2>/dev/null > self.out & pp=$!; sleep 0.2
  ./swev $pp 8 2>/dev/null & ev=$!; wait $pp
  echo -n "  per-task events on the ping-pong: "; cat self.out
  kill $ev || true; wait $ev 2>/dev/null || true
  rm -rf prof; "$agent" attach --pid $idle --profile-dir prof --duration 10 --out p.json > agent.log 2>&1 & ag=$!; sleep 3
  echo -n "  perf-agent --profile-dir on idle: "; ./pingpong $N
  kill -INT $ag || true; wait $ag 2>/dev/null || true
done
kill $idle
sysctl -qw kernel.bpf_stats_enabled=1
echo "sched_switch programs on the ping-pong's switches (half the runs match)"
for body in '@c = count();' '@s[kstack] = count();' '@s[kstack(6)] = count();' '@s[ustack] = count();'; do
  ./pingpong 200000 2 > /dev/null 2> pp.err & pp=$!; sleep 0.3
  pid=$(sed -n 's/pid //p' pp.err)
  bpftrace -e "tracepoint:sched:sched_switch /args->prev_pid == \$1/ { $body }" "$pid" > /dev/null 2>&1 & bt=$!
  wait $pp
  bpftool prog show 2>/dev/null | grep -A2 sched_switch | grep -o "run_time_ns [0-9]* run_cnt [0-9]*" |
    awk -v p="$body" '{printf "  %-26s %.0f ns/run over %d runs\n", p, $2/$4, $4}'
  kill $bt || true; wait $bt 2>/dev/null || true
done
sysctl -qw kernel.bpf_stats_enabled=0
