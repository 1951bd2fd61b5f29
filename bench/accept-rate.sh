#!/usr/bin/env bash
# Accept rate and end-to-end throughput of the relay, on loopback only.
#
#   bench/accept-rate.sh [RELAY_BINARY]      (default: $CARGO_TARGET_DIR/release/relay)
#
# 1. Accept rate: countsink <- relay <- loadgen with 1, 10 and 50 sessions,
#    2 KB messages; a table of accepted msgs/s and p50/p99 accept latency
#    (end of DATA -> 250, which includes the relay's fsync). Between rows the
#    script waits for the relay to hand the previous row's mail to the sink, so
#    each row starts with an empty queue.
# 2. End to end: a fresh relay and sink; 10,000 messages at 50 sessions, timed
#    from loadgen's start to the sink receiving the last one.
#
# Environment: CARGO_TARGET_DIR (where loadgen/countsink are, built if missing),
# SIZE (bytes, 2048), RUNS ("sessions:messages ...", "1:2000 10:5000 50:10000"),
# E2E_MESSAGES (10000), E2E_SESSIONS (50), DRAIN_TIMEOUT (s, 300), EXTRA_CONFIG (a TOML file
# appended to the relay config, e.g. bench/plugins.toml), PLUGINS (with EXTRA_CONFIG: which
# plugins to install, "rate-limit ip-pools suppression content-policy"; "" for none), PLUGIN_CACHE
# (compiled-plugin cache directory; a fresh one per relay by default).
# Every process it starts is stopped on exit, and its temp dir removed.
set -euo pipefail

ME=accept-rate
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
RELAY=${1:-$CARGO_TARGET_DIR/release/relay}
SIZE=${SIZE:-2048}
RUNS=${RUNS:-"1:2000 10:5000 50:10000"}
E2E_MESSAGES=${E2E_MESSAGES:-10000}
E2E_SESSIONS=${E2E_SESSIONS:-50}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-300}
need_tools "$RELAY"

temp_dir_with_cleanup bench

# start_stack NAME [countsink flags...]: a countsink and a relay routing every
# domain to it; sets SINK_PID, SINK_OUT, SINK_ERR, RELAY_PID, RELAY_ADDR, METRICS_ADDR.
start_stack() {
    local dir=$TMP/$1
    shift
    mkdir -p "$dir"
    start_sink "$dir" "$@"
    start_relay "$dir" "$SINK_ADDR" "${EXTRA_CONFIG:-}"
}

# plugin_costs MESSAGES: each plugin hook's calls and wall time from the relay's metrics, per
# call and per message, and the mean size of the batches the hooks were asked in (nothing
# without plugins, or without curl).
plugin_costs() {
    local n=$1 metrics
    command -v curl >/dev/null || return 0
    metrics=$(curl -sf "http://$METRICS_ADDR/metrics") || return 0
    awk -v n="$n" '
        function key(line) { match(line, /\{[^}]*\}/); return substr(line, RSTART, RLENGTH) }
        /^relay_plugin_calls_total\{/ { calls[key($0)] = $NF }
        /^relay_plugin_call_seconds_total\{/ { secs[key($0)] = $NF }
        /^relay_plugin_batches_total\{/ { batches[key($0)] = $NF }
        /^relay_plugin_batch_questions_total\{/ { questions[key($0)] = $NF }
        END {
            for (k in batches) if (batches[k] > 0)
                printf "  batches %-44s %8d questions in %8d batches: %.1f a batch\n", k,
                    questions[k], batches[k], questions[k] / batches[k]
            for (k in calls) if (calls[k] > 0) {
                found = 1
                printf "  plugin %-45s %8d calls %7.2f us/call %7.2f us/message\n", k, calls[k],
                    secs[k] / calls[k] * 1e6, secs[k] / n * 1e6
                total += secs[k]
            }
            if (found) printf "  plugins in all: %.2f us of hook calls per message\n", total / n * 1e6
        }' <<<"$metrics"
}

failed=0
echo "relay: $RELAY"
echo "message size: $SIZE bytes; every domain routed to countsink; all on 127.0.0.1"
echo

# 1. Accept rate.
start_stack accept --progress
echo "accept rate (relay at $RELAY_ADDR):"
printf '%8s %9s %9s %7s %10s %9s %9s %9s\n' sessions messages accepted failed "msgs/s" "p50 ms" "p99 ms" "max ms"
delivered=0
for run in $RUNS; do
    sessions=${run%%:*}
    messages=${run##*:}
    out=$TMP/accept/load-$sessions.json
    "$LOADGEN" --server "$RELAY_ADDR" --sessions "$sessions" --messages "$messages" \
        --size "$SIZE" --json --allow-failures >"$out"
    accepted=$(json "$out" accepted)
    bad=$(($(json "$out" rejected) + $(json "$out" errors)))
    ((bad == 0)) || failed=1
    printf '%8s %9s %9s %7s %10.1f %9s %9s %9s\n' "$sessions" "$messages" "$accepted" "$bad" \
        "$(json "$out" accepted_per_s)" "$(json "$out" p50)" "$(json "$out" p99)" "$(json "$out" max)"
    if ((bad > 0)); then
        grep -o '"first_error":"[^"]*"' "$out" >&2 || true
    fi
    delivered=$((delivered + accepted))
    drain "$delivered" || failed=1
done
stop "$RELAY_PID"
stop "$SINK_PID"
echo

# 2. End to end, on a fresh relay and spool.
start_stack e2e --expect "$E2E_MESSAGES" --timeout $((DRAIN_TIMEOUT + 120)) --json
read -r user_before sys_before < <(cpu_ticks "$RELAY_PID")
out=$TMP/e2e/load.json
"$LOADGEN" --server "$RELAY_ADDR" --sessions "$E2E_SESSIONS" --messages "$E2E_MESSAGES" \
    --size "$SIZE" --json --allow-failures >"$out"
accepted=$(json "$out" accepted)
if ((accepted < E2E_MESSAGES)); then
    echo "end to end: the relay accepted only $accepted of $E2E_MESSAGES messages; not timed" >&2
    grep -o '"first_error":"[^"]*"' "$out" >&2 || true
    exit 1
fi
# countsink exits by itself when it has them all (or at its --timeout).
while kill -0 "$SINK_PID" 2>/dev/null; do
    sleep 0.1
done
sink_json=$(tail -n1 "$SINK_OUT")
if [[ $sink_json != *'"complete":true'* ]]; then
    echo "end to end: the sink did not get all $E2E_MESSAGES messages: $sink_json" >&2
    exit 1
fi
echo "$sink_json" >"$TMP/e2e/sink.json"
read -r user_after sys_after < <(cpu_ticks "$RELAY_PID")
user_ticks=$((user_after - user_before))
sys_ticks=$((sys_after - sys_before))
start_us=$(json "$out" start_unix_us)
last_us=$(json "$TMP/e2e/sink.json" last_unix_us)
awk -v n="$E2E_MESSAGES" -v s="$E2E_SESSIONS" -v start="$start_us" -v last="$last_us" \
    -v accept_s="$(json "$out" elapsed_s)" -v size="$SIZE" -v user="$user_ticks" -v sys="$sys_ticks" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN {
    e = (last - start) / 1e6
    printf "end to end: %d messages of %d bytes at %d sessions\n", n, size, s
    printf "  accepted by the relay in %.3f s (%.1f msgs/s)\n", accept_s, n / accept_s
    printf "  all in the sink %.3f s after the first was sent: %.1f msgs/s end to end\n", e, n / e
    ticks = user + sys
    printf "  relay CPU: %.2f s in all (%.2f user, %.2f system), %.3f s per 1,000 messages\n",
        ticks / hz, user / hz, sys / hz, ticks / hz / n * 1000
}'
plugin_costs "$E2E_MESSAGES"
exit "$failed"
