#!/bin/bash
# Does the vCPU's halt between requests explain why a request's program
# time is higher at 10 000 req/s than at saturation? Runs measure.py with
# the guest's halt-polling off (this VM's default) and at 200 µs,
# interleaved, and restores the setting. Needs root, cpuidle_haltpoll.
# usage: run.sh AGENT_BIN [ROUNDS_PER_RUN]
set -eu
agent=$1 rounds=${2:-2}
knob=/sys/module/haltpoll/parameters/guest_halt_poll_ns
saved=$(cat "$knob")
trap 'echo "$saved" > "$knob"' EXIT
for poll in 0 200000 200000 0 0 200000; do
    echo "$poll" > "$knob"
    python3 "$(dirname "$0")/measure.py" "$agent" "poll$poll" "$rounds"
done
