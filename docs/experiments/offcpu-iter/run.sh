#!/bin/bash
# Off-CPU time by wall-clock ticks instead of at every switch-out: can a
# sleepable task iterator (`iter.s/task`) read each thread of one process
# (its state, its user registers, a copy of its user stack, its kernel
# stack) on this kernel, and what does one tick cost? The thirteenth
# session's experiment (docs/performance.md, "Thirteenth session").
#
# Run as root from a checkout where `cargo xtask build` has run:
#   sudo bash docs/experiments/offcpu-iter/run.sh
# It builds spike.patch (a throwaway iterator program in agent-ebpf and a
# loader, `agent/examples/iter_spike.rs`) in a temporary git worktree with
# its own target directory (a full build, a few minutes), then reads the
# iterator 1000-2000 times per case. The loader's arguments:
#   iter_spike PID READS COPY(0|1) all|pid
# COPY 1: a user-stack copy (two pages from the stack pointer's, page by
# page up to the stack's top) and the kernel stack of every thread, and
# on the last read the blocked threads' stacks unwound and named;
# `pid`: the link is created with `bpf_iter_link_info.task.pid`, so only
# PID's threads are visited (aya 0.14's `Iter::attach` passes no link
# info: the loader makes the link with the raw `BPF_LINK_CREATE`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
work=$(mktemp -d)
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    git -C "$repo" worktree remove --force "$work/tree" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
git -C "$repo" worktree add -q --detach "$work/tree" HEAD
git -C "$work/tree" apply "$here/spike.patch"
target="$repo/target/offcpu-iter-spike"
(cd "$work/tree" && export CARGO_TARGET_DIR="$target" &&
    cargo build -q --release -p fixtures &&
    cargo build -q --release -p perf-agent --example iter_spike)
bin=$target/release
spike=$bin/examples/iter_spike
for f in "$spike" "$bin/demo-server" "$bin/http-load" "$bin/offcpu-target"; do
    [ -x "$f" ] || { echo "not built: $f" >&2; exit 1; }
done

echo "== demo-server under load (http-load, 4 connections): one read"
"$bin/demo-server" --addr 127.0.0.1:0 > "$work/ds.out" &
server=$!
sleep 0.5
addr=$(grep -o 'addr=[^ ]*' "$work/ds.out" | cut -d= -f2)
"$bin/http-load" --url "http://$addr/" --requests 2000000 --connections 4 > /dev/null &
load=$!
sleep 1
"$spike" "$server" 1 1 pid
for mode in all pid; do
    for copy in 0 1; do
        echo -n "== demo-server, $mode, copy=$copy: "
        "$spike" "$server" 2000 "$copy" "$mode" | tail -1
    done
done
kill "$load" "$server" 2>/dev/null || true
wait 2>/dev/null || true

echo "== offcpu-target: the blocked threads' stacks, unwound and named by the"
echo "   agent's own StackWalker and Symbolizer (6 runs of 2 reads, counted)"
"$bin/offcpu-target" --seconds 8 --nappers 2 > /dev/null &
target_pid=$!
sleep 0.7
for run in 1 2 3 4 5 6; do
    "$spike" "$target_pid" 2 1 pid | grep '^    ' | sed 's/.*__rust_begin_short_backtrace;//'
done | sort | uniq -c
wait "$target_pid" 2>/dev/null || true

for nappers in 0 20 60; do
    "$bin/offcpu-target" --seconds 8 --nappers "$nappers" > /dev/null &
    target_pid=$!
    sleep 0.7
    threads=$(ls "/proc/$target_pid/task" | wc -l)
    for mode in pid all; do
        echo -n "== offcpu-target, $threads threads, $mode, state only: "
        "$spike" "$target_pid" 1000 0 "$mode" | tail -1
    done
    wait "$target_pid" 2>/dev/null || true
done
