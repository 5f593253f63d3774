#!/bin/bash
# Node tax of the receive hook on an unwatched Unix-socket workload:
# unix_pingpong without an agent, with an agent whose receive hook is
# sock_recv_length, and with one whose hook is tcp_rcv_space_adjust, each
# attached (default mode) to an idle `sleep`; interleaved rounds.
# usage: run.sh AGENT_OLD AGENT_NEW [ROUNDS]
set -eu
old=$1 new=$2 rounds=${3:-6}
dir=$(mktemp -d)
cc -O2 -o "$dir/unix_pingpong" "$(dirname "$0")/unix_pingpong.c"
sleep 100000 & idle=$!
trap 'kill $idle 2>/dev/null; rm -rf "$dir"' EXIT
sysctl -q kernel.bpf_stats_enabled=1
for r in $(seq "$rounds"); do
    for mode in none old new; do
        agent=
        case $mode in old) agent=$old ;; new) agent=$new ;; esac
        if [ -n "$agent" ]; then
            "$agent" attach --pid "$idle" --out "$dir/out.json" >/dev/null 2>&1 & a=$!
            sleep 3
        fi
        before=$(bpftool prog show -j | python3 -c 'import json,sys; print(sum(p.get("run_cnt",0) for p in json.load(sys.stdin) if p.get("name","").startswith(("sock_recv","tcp_rcv"))))')
        ns=$("$dir/unix_pingpong" 300000)
        after=$(bpftool prog show -j | python3 -c 'import json,sys; print(sum(p.get("run_cnt",0) for p in json.load(sys.stdin) if p.get("name","").startswith(("sock_recv","tcp_rcv"))))')
        echo "round $r $mode: $ns ns per round trip, receive-hook runs $((after - before))"
        if [ -n "$agent" ]; then kill -INT $a; wait $a || true; fi
    done
done
sysctl -q kernel.bpf_stats_enabled=0
