#!/usr/bin/env bash
# Accept latency below saturation: the relay at an offered load, on loopback only.
#
#   bench/latency.sh [RELAY_BINARY]      (default: $CARGO_TARGET_DIR/release/relay)
#
# compare.sh runs closed loops: every session sends its next message as soon as the last one is
# answered, so the relay, loadgen and the sink saturate both cores and latency is mostly
# queueing. Here loadgen offers a fixed rate (--rate) over SESSIONS sessions, and the table shows
# the end-of-DATA -> 250 latency the relay gives at that rate, with the rate it really accepted.
# Each row gets a fresh relay (syncing on, no plugins) and countsink, and waits until the sink has
# every message.
#
# Environment: CARGO_TARGET_DIR, SESSIONS (50), ROWS ("SIZE:RATE:COUNT ...", default
# "2048:2000:20000 2048:5000:30000 102400:750:7500 102400:1500:15000"), DRAIN_TIMEOUT (s, 120),
# KEEP_TMP. Every process it starts is stopped on exit, and its temp dir removed.
set -euo pipefail
ME=latency
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
RELAY=${1:-$CARGO_TARGET_DIR/release/relay}
SESSIONS=${SESSIONS:-50}
ROWS=${ROWS:-"2048:2000:20000 2048:5000:30000 102400:750:7500 102400:1500:15000"}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
need_tools "$RELAY"

temp_dir_with_cleanup latency

echo "relay: $RELAY; $(nproc) CPUs; $SESSIONS sessions; syncing on; no plugins"
printf '\n%8s %10s %9s %10s %8s %8s %8s\n' size "offered/s" messages "accepted/s" "p50 ms" "p99 ms" "max ms"
for row in $ROWS; do
    IFS=: read -r size rate count <<<"$row"
    dir=$TMP/$size-$rate
    mkdir -p "$dir"
    start_sink "$dir" --progress
    start_relay "$dir" "$SINK_ADDR"
    "$LOADGEN" --server "$RELAY_ADDR" --sessions "$SESSIONS" --messages "$count" --size "$size" \
        --rate "$rate" --json >"$dir/loadgen.json"
    drain "$(json "$dir/loadgen.json" accepted)"
    printf '%8s %10s %9s %10.0f %8s %8s %8s\n' "$size" "$rate" "$(json "$dir/loadgen.json" accepted)" \
        "$(json "$dir/loadgen.json" accepted_per_s)" "$(json "$dir/loadgen.json" p50)" \
        "$(json "$dir/loadgen.json" p99)" "$(json "$dir/loadgen.json" max)"
    stop "$RELAY_PID"
    stop "$SINK_PID"
done
