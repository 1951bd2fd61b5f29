#!/usr/bin/env bash
# Growth with queue depth: does the relay's cost grow with the number of messages queued?
#
#   bench/growth.sh [RELAY_BINARY]      (default: $CARGO_TARGET_DIR/release/relay)
#
# One relay (release build, syncing on, spool in a temp dir) with two routes:
# - "*" (the fill traffic, to fill.test) goes to a paused downstream: a loopback port on which
#   nothing listens, so every delivery attempt gets "connection refused" and the message is
#   deferred. [delivery] retry_schedule = ["1h"] keeps deferred messages on disk, untouched,
#   for the rest of the run.
# - probe.test goes to a live countsink, so each probe measures the relay's whole per-message
#   cost (accept, deliver, remove) beside the backlog, and the queue depth stays the same
#   during the probe.
# The queue is filled in stages with loadgen to each of DEPTHS. Before each probe the script
# checks the relay's relay_queue_messages and relay_deliveries_total{result="deferred"}
# (every fill message queued and tried once), waits until PROBE_DELAY s have passed since the
# fill (the scheduler's scans start 5 s back in the schedule, so for a moment after a fill they
# walk the fill's deleted schedule keys; PROBE_DELAY=0 measures that, the default 65 the depth
# alone), then waits for the relay's CPU use to settle (RocksDB flushes and compactions). Each probe reports accept rate, p50/p99 end-of-DATA->250
# latency, end-to-end rate, relay CPU s per 1,000 probe messages, VmRSS before and after the
# probe, VmHWM and the spool's size on disk. Last (RESTART=1), the relay is restarted on the
# deepest queue and probed again: the row "<depth>r" shows what the depth costs a fresh process,
# without the memtables that filling the queue left behind.
#
# Environment: CARGO_TARGET_DIR, DEPTHS ("0 100000 1000000", ascending), SIZE (2048),
# FILL_SESSIONS (50), PROBE_MESSAGES (20000), PROBE_SESSIONS (50), PROBE_TIMEOUT (s, 300),
# FILL_MIN_RATE (msgs/s below which a fill stage counts as stuck, 300), SETTLE_TIMEOUT (s, 300),
# QUIET_CPU (% of one CPU the relay must fall below before a probe, 15), QUIET_TIMEOUT (s, 300),
# PROGRESS_SECS (10), PROBE_DELAY (s from the end of a fill to its probe, 65; see README),
# RESTART (1: restart the relay at the deepest queue and time it; 0: no),
# KEEP_TMP (keep the temp dir).
# Every process it starts is stopped on exit (Ctrl-C included), and its temp dir removed.
set -euo pipefail

ME=growth
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
RELAY_SRC=${1:-$CARGO_TARGET_DIR/release/relay}
DEPTHS=${DEPTHS:-"0 100000 1000000"}
SIZE=${SIZE:-2048}
FILL_SESSIONS=${FILL_SESSIONS:-50}
PROBE_MESSAGES=${PROBE_MESSAGES:-20000}
PROBE_SESSIONS=${PROBE_SESSIONS:-50}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-300}
FILL_MIN_RATE=${FILL_MIN_RATE:-300}
SETTLE_TIMEOUT=${SETTLE_TIMEOUT:-300}
QUIET_CPU=${QUIET_CPU:-15}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-300}
PROGRESS_SECS=${PROGRESS_SECS:-10}
PROBE_DELAY=${PROBE_DELAY:-65}
RESTART=${RESTART:-1}
# The relay refuses mail (452) below this much free space, long before the disk is full.
MIN_FREE=$((1024 * 1024 * 1024))
HZ=$(getconf CLK_TCK)

die() {
    echo "growth: $*" >&2
    exit 1
}

need_tools "$RELAY_SRC"
command -v curl >/dev/null || die "needs curl to read the relay's metrics"
previous=-1
for depth in $DEPTHS; do
    [[ $depth =~ ^[0-9]+$ ]] || die "DEPTHS: '$depth' is not a number"
    ((depth >= previous)) || die "DEPTHS must be in ascending order: $DEPTHS"
    previous=$depth
done
MAX_DEPTH=$previous
((MAX_DEPTH >= 0)) || die "DEPTHS is empty"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/relay-growth.XXXXXX")

# Each stored message takes its size plus ~1 KB of queue entry, keys and our Received: header;
# twice that covers RocksDB's write-ahead log (at most 256 MiB) and compactions, with room.
need=$((MAX_DEPTH * (SIZE + 1024) * 2 + MIN_FREE))
avail=$(df --output=avail -B1 "$TMP" | tail -n1 | tr -dc 0-9)
if ((avail < need)); then
    rmdir "$TMP"
    die "$((need >> 20)) MiB of free space needed in ${TMPDIR:-/tmp} for a queue of $MAX_DEPTH, $((avail >> 20)) MiB free"
fi




# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local pid
    trap '' INT TERM
    for pid in "${PIDS[@]}"; do
        stop "$pid" 60
    done
    if [[ -n "${KEEP_TMP:-}" ]]; then
        echo "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# wait_exit PID SECS: waits for a process we started to exit, up to SECS; then stops it and
# fails. Returns the process's exit status.
wait_exit() {
    local pid=$1 secs=$2 rc=0
    for _ in $(seq $((secs * 10))); do
        if ! running "$pid"; then
            wait "$pid" || rc=$?
            untrack "$pid"
            return "$rc"
        fi
        sleep 0.1
    done
    echo "growth: process $pid still running after ${secs}s; stopping it" >&2
    stop "$pid"
    return 124
}



# metric NAME: the value of one sample from the relay's /metrics (NAME with its labels, as
# printed, e.g. 'relay_deliveries_total{result="deferred"}'); 0 when absent.
metric() {
    local v
    local text err
    # A scrape can fail while the 2 CPUs are saturated; give it three chances.
    for _ in 1 2 3; do
        if text=$(curl -sS -f --max-time 10 "http://$METRICS_ADDR/metrics" 2>"$TMP/curl.err"); then
            v=$(awk -v n="$1" '$1 == n { print $2; exit }' <<<"$text")
            echo "${v:-0}"
            return 0
        fi
        err=$(cat "$TMP/curl.err")
        sleep 1
    done
    relay_gone "cannot read http://$METRICS_ADDR/metrics: $err"
}

# relay_gone WHAT: fails, saying whether the relay is still running and how its log ends.
relay_gone() {
    if running "$RELAY_PID" && ! grep -q '"event":"shutdown"' "$RELAY_LOG"; then
        die "$1 (the relay, pid $RELAY_PID, is still running)"
    fi
    if grep -q '"event":"shutdown"' "$RELAY_LOG"; then
        echo "growth: the relay (pid $RELAY_PID) got SIGINT or SIGTERM from a process other than this script" >&2
    fi
    echo "growth: the relay (pid $RELAY_PID) has exited; $RELAY_LOG ends:" >&2
    tail -n 5 "$RELAY_LOG" >&2
    die "$1"
}

# relay_ticks: user + system clock ticks the relay has used so far (all its threads).
relay_ticks() {
    cpu_ticks "$RELAY_PID" | awk '{ print $1 + $2 }'
}

# status_kb FIELD: a /proc/PID/status field of the relay, in kB (VmRSS, VmHWM).
status_kb() {
    awk -v f="$1:" '$1 == f { print $2 }' "/proc/$RELAY_PID/status"
}

spool_bytes() {
    du -sb "$TMP/spool" | cut -f1
}

# wal_bytes: the part of the spool that is RocksDB's write-ahead log (*.log).
wal_bytes() {
    find "$TMP/spool" -maxdepth 1 -name '*.log' -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f\n", s }'
}

# launch_relay LOG: starts the relay on $TMP/relay.toml, logging to LOG; sets RELAY_PID,
# RELAY_ADDR, METRICS_ADDR and STARTUP_S (launch to the "listening" line, which follows the
# spool's start-up count).
launch_relay() {
    local line started
    RELAY_LOG=$1
    started=$(date +%s.%N)
    "$TMP/relay" serve --config "$TMP/relay.toml" >/dev/null 2>"$RELAY_LOG" &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    line=$(wait_for "$RELAY_LOG" '"event":"listening"' "$RELAY_PID" 600)
    STARTUP_S=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    RELAY_ADDR=$(sed -E 's/.*"addr":"([^"]+)".*/\1/' <<<"$line")
    line=$(wait_for "$RELAY_LOG" '"event":"metrics_listening"' "$RELAY_PID" 10)
    METRICS_ADDR=$(sed -E 's/.*"addr":"([^"]+)".*/\1/' <<<"$line")
}

# wait_quiet: waits (up to QUIET_TIMEOUT) until the relay uses less than QUIET_CPU % of one CPU
# over 2 s, so that flushes and compactions left over from filling do not run during a probe.
# Sets QUIET to "" when it did, "*" when it did not.
wait_quiet() {
    local deadline=$((SECONDS + QUIET_TIMEOUT)) a b pct
    QUIET="*"
    while ((SECONDS < deadline)); do
        a=$(relay_ticks)
        sleep 2
        b=$(relay_ticks)
        pct=$(((b - a) * 100 / (2 * HZ)))
        if ((pct < QUIET_CPU)); then
            QUIET=""
            return 0
        fi
        echo "  relay still busy (${pct}% CPU), waiting"
    done
    echo "growth: the relay stayed above ${QUIET_CPU}% CPU for ${QUIET_TIMEOUT}s; probing anyway (row marked *)" >&2
}

# fill COUNT: sends COUNT messages to the paused route, printing progress; fails when loadgen
# does not finish in time (FILL_MIN_RATE) or not every message is accepted. Sets FILL_RATE.
fill() {
    local n=$1 out=$TMP/fill-$1-$SECONDS.json pid deadline start q last_q=-1 last_t
    local limit=$((120 + n / FILL_MIN_RATE))
    "$LOADGEN" --server "$RELAY_ADDR" --sessions "$FILL_SESSIONS" --messages "$n" --size "$SIZE" \
        --to-domain fill.test --json --allow-failures >"$out" &
    pid=$!
    PIDS+=("$pid")
    start=$SECONDS
    deadline=$((start + limit))
    last_t=$start
    while running "$pid"; do
        if ((SECONDS >= deadline)); then
            stop "$pid"
            die "filling $n messages took over ${limit}s (queue at $(metric relay_queue_messages))"
        fi
        sleep 1
        if ((SECONDS - last_t >= PROGRESS_SECS)); then
            q=$(metric relay_queue_messages)
            if ((last_q >= 0)); then
                echo "  $((SECONDS - start))s: queue $q ($(((q - last_q) / (SECONDS - last_t))) msgs/s), relay RSS $(($(status_kb VmRSS) >> 10)) MB"
            else
                echo "  $((SECONDS - start))s: queue $q, relay RSS $(($(status_kb VmRSS) >> 10)) MB"
            fi
            last_q=$q
            last_t=$SECONDS
        fi
    done
    wait_exit "$pid" 1 || die "loadgen failed while filling; see $out"
    local accepted bad
    accepted=$(json "$out" accepted)
    bad=$(($(json "$out" rejected) + $(json "$out" errors)))
    if ((accepted != n || bad > 0)); then
        grep -o '"first_error":"[^"]*"' "$out" >&2 || true
        die "the relay accepted $accepted of $n fill messages ($bad refused or failed)"
    fi
    FILL_RATE=$(json "$out" accepted_per_s)
}

# settle DEPTH DEFERRED: waits (up to SETTLE_TIMEOUT) until the relay reports DEPTH messages
# queued and DEFERRED deferred attempts, i.e. every fill message was tried once and is now
# waiting for its retry in an hour.
settle() {
    local depth=$1 deferred=$2 deadline=$((SECONDS + SETTLE_TIMEOUT)) q d
    while :; do
        q=$(metric relay_queue_messages)
        d=$(metric 'relay_deliveries_total{result="deferred"}')
        ((q == depth && d >= deferred)) && break
        if ((SECONDS >= deadline)); then
            die "after ${SETTLE_TIMEOUT}s the queue holds $q messages (expected $depth) and $d attempts were deferred (expected $deferred)"
        fi
        sleep 1
    done
    ((d == deferred)) || die "$d deferred attempts, expected $deferred: were deferred messages retried?"
    local delivered
    delivered=$(metric 'relay_deliveries_total{result="delivered"}')
    ((delivered == PROBED)) || die "$delivered deliveries, expected $PROBED (the probes): did the paused port accept mail?"
}

echo "relay: $RELAY_SRC (copied to $TMP/relay for the run)"
cp "$RELAY_SRC" "$TMP/relay"
PAUSED_PORT=$(free_port)
SINK_PORT=$(free_port "$PAUSED_PORT")
SINK_ADDR=127.0.0.1:$SINK_PORT

cat >"$TMP/relay.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
hostname = "relay.bench"
max_connections_per_ip = 1000

[spool]
path = "$TMP/spool"
min_free_space = $MIN_FREE

[delivery]
max_connections_per_destination = 20
# Deferred messages stay queued, untouched, for the rest of the run.
retry_schedule = ["1h"]

# The probe traffic: a countsink started for each probe.
[[route]]
domain = "probe.test"
next_hop = "$SINK_ADDR"

# The fill traffic: nothing listens here, so every attempt is refused and deferred.
[[route]]
domain = "*"
next_hop = "127.0.0.1:$PAUSED_PORT"

[metrics]
listen = "127.0.0.1:0"

[log]
format = "json"
# Warnings, plus the serve module's info lines, of which we need "listening".
level = "warn,relay::serve=info"
EOF

launch_relay "$TMP/relay.log"
echo "relay at $RELAY_ADDR, metrics at $METRICS_ADDR, spool in $TMP/spool"
echo "fill: $SIZE-byte messages to fill.test at $FILL_SESSIONS sessions, routed to 127.0.0.1:$PAUSED_PORT (nothing listens: refused, deferred, retry in 1h)"
echo "probe: $PROBE_MESSAGES messages to probe.test at $PROBE_SESSIONS sessions, routed to a countsink at $SINK_ADDR"
echo

# probe NAME DEPTH: the probe load at a queue of DEPTH (after wait_quiet); appends a row to
# ROWS, sets PROBE_RSS (kB) and adds the delivered messages to PROBED.
probe() {
    local name=$1 depth=$2 rss_idle sink_out sink_pid out load_pid ticks_before ticks_after
    local accepted bad rss hwm sink_json e2e queue_after spool_mb wal_mb
    rss_idle=$(status_kb VmRSS)
    sink_out=$TMP/sink-$name.json
    "$COUNTSINK" --listen "$SINK_ADDR" --expect "$PROBE_MESSAGES" --timeout "$PROBE_TIMEOUT" --json \
        >"$sink_out" 2>"$TMP/sink-$name.err" &
    sink_pid=$!
    PIDS+=("$sink_pid")
    wait_for "$sink_out" '^listening on ' "$sink_pid" 10 >/dev/null ||
        die "countsink could not listen on $SINK_ADDR: $(cat "$TMP/sink-$name.err")"

    echo "probe at depth $name: $PROBE_MESSAGES messages"
    ticks_before=$(relay_ticks)
    out=$TMP/probe-$name.json
    "$LOADGEN" --server "$RELAY_ADDR" --sessions "$PROBE_SESSIONS" --messages "$PROBE_MESSAGES" \
        --size "$SIZE" --to-domain probe.test --json --allow-failures >"$out" &
    load_pid=$!
    PIDS+=("$load_pid")
    wait_exit "$load_pid" "$PROBE_TIMEOUT" || die "loadgen failed in the probe at depth $name; see $out"
    accepted=$(json "$out" accepted)
    bad=$(($(json "$out" rejected) + $(json "$out" errors)))
    if ((bad > 0)); then
        failed=1
        grep -o '"first_error":"[^"]*"' "$out" >&2 || true
    fi
    # The sink exits once it has every accepted message; when some were refused it would wait
    # for its --timeout, so stop it then.
    if ((accepted < PROBE_MESSAGES)); then
        stop "$sink_pid"
    else
        wait_exit "$sink_pid" $((PROBE_TIMEOUT + 10)) || true
    fi
    ticks_after=$(relay_ticks)
    rss=$(status_kb VmRSS)
    hwm=$(status_kb VmHWM)
    sink_json=$(tail -n1 "$sink_out")
    e2e=-
    if [[ $sink_json == *'"complete":true'* ]]; then
        e2e=$(awk -v n="$accepted" -v a="$(json "$out" start_unix_us)" \
            -v b="$(grep -o '"last_unix_us":[0-9]*' <<<"$sink_json" | cut -d: -f2)" \
            'BEGIN { printf "%.0f", n / ((b - a) / 1e6) }')
    else
        failed=1
        echo "growth: the sink did not get all $accepted probe messages: $sink_json" >&2
    fi
    PROBED=$((PROBED + $(grep -o '"messages":[0-9]*' <<<"$sink_json" | cut -d: -f2)))
    # The probe's messages leave the queue once their delivery is written back.
    for _ in $(seq 300); do
        queue_after=$(metric relay_queue_messages)
        ((queue_after <= depth)) && break
        sleep 0.1
    done
    spool_mb=$(($(spool_bytes) >> 20))
    wal_mb=$(($(wal_bytes) >> 20))
    PROBE_RSS=$rss
    ROWS+=("$(awk -v d="$name$QUIET" -v q="$queue_after" -v sp="$spool_mb" -v wal="$wal_mb" -v fr="$FILL_RATE" \
        -v ar="$(json "$out" accepted_per_s)" -v p50="$(json "$out" p50)" -v p99="$(json "$out" p99)" \
        -v e2e="$e2e" -v t="$((ticks_after - ticks_before))" -v hz="$HZ" -v n="$accepted" \
        -v ri="$rss_idle" -v r="$rss" -v h="$hwm" 'BEGIN {
        printf "%11s %9d %8d %6d %7s %8.0f %7.2f %7.2f %7s %8.3f %7.1f %7.1f %7.1f",
            d, q, sp, wal, (fr == "-" ? "-" : sprintf("%.0f", fr)), ar, p50, p99, e2e,
            (n > 0 ? t / hz / n * 1000 : 0), ri / 1024, r / 1024, h / 1024
    }')")
    echo "  done: $(json "$out" accepted_per_s | cut -d. -f1) msgs/s accepted, $e2e msgs/s end to end, RSS $((rss >> 10)) MB"
    local kind mem=""
    for kind in memtables block_cache table_readers; do
        mem+=" $kind $(($(metric "relay_spool_memory_bytes{kind=\"$kind\"}" | cut -d. -f1) >> 20)) MB"
    done
    echo "  RocksDB memory:$mem"
    echo
}

FILLED=0  # fill messages sent so far
PROBED=0  # probe messages delivered so far
ROWS=()
failed=0
read -r first _ <<<"$DEPTHS"
for depth in $DEPTHS; do
    queued=$(metric relay_queue_messages)
    n=$((depth - queued))
    FILL_RATE=-
    if ((n > 0)); then
        echo "filling the queue from $queued to $depth:"
        fill "$n"
        FILL_END=$SECONDS
        FILLED=$((FILLED + n))
        printf '  loadgen done: %d messages at %.0f msgs/s\n' "$n" "$FILL_RATE"
    fi
    settle "$depth" "$FILLED"
    if ((n > 0 && PROBE_DELAY > 0)); then
        echo "  waiting until ${PROBE_DELAY}s after the fill (PROBE_DELAY)"
        while ((SECONDS - FILL_END < PROBE_DELAY)); do
            sleep 1
        done
    fi
    wait_quiet
    probe "$depth" "$depth"
    [[ $depth == "$first" ]] && RSS_FIRST=$PROBE_RSS
    RSS_LAST=$PROBE_RSS
done

# A failed expansion abandons the whole loop without tripping set -e: make sure it did not.
read -ra depth_list <<<"$DEPTHS"
((${#ROWS[@]} == ${#depth_list[@]})) || die "${#ROWS[@]} rows for ${#depth_list[@]} depths: a probe did not finish"

if [[ $RESTART == 1 ]]; then
    # The same queue in a fresh process: what the depth itself costs, without the memtables and
    # caches that filling it left behind.
    stopped=$(date +%s.%N)
    stop "$RELAY_PID" 120
    down=$(awk -v a="$stopped" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    launch_relay "$TMP/relay-restarted.log"
    count=$(grep -m1 -o '"queued":[0-9]*' "$RELAY_LOG" | cut -d: -f2)
    echo "restarted with $count messages queued: stopped in ${down}s, listening ${STARTUP_S}s after launch (the spool is counted first)"
    ((count == MAX_DEPTH)) || die "the restarted relay counted $count queued messages, expected $MAX_DEPTH"
    wait_quiet
    deferred=$(metric 'relay_deliveries_total{result="deferred"}')
    ((deferred == 0)) || die "the restarted relay retried $deferred deferred messages before their time"
    FILL_RATE=-
    probe "${MAX_DEPTH}r" "$MAX_DEPTH"
    RSS_RESTARTED=$PROBE_RSS
fi

echo "growth with queue depth ($SIZE-byte messages; probe: $PROBE_MESSAGES at $PROBE_SESSIONS sessions):"
printf '%11s %9s %8s %6s %7s %8s %7s %7s %7s %8s %7s %7s %7s\n' depth queued "spool MB" "WAL MB" "fill/s" \
    "accept/s" "p50 ms" "p99 ms" "e2e/s" "CPU/1k" "RSSpre" "RSS" "HWM"
printf '%s\n' "${ROWS[@]}"
echo "  queued: relay_queue_messages after the probe; spool MB: its size on disk, WAL MB: the part that is"
echo "  RocksDB's write-ahead log; fill/s: loadgen's accept rate filling up to this depth;"
echo "  CPU/1k: relay user+system s per 1,000 probe messages; RSSpre: VmRSS (MB) before the probe,"
echo "  RSS: right after it, HWM: VmHWM so far (since the start of that relay process)"
[[ $RESTART == 1 ]] && echo "  ${MAX_DEPTH}r: the same queue after a restart of the relay"
if grep -q '\*' <<<"${ROWS[*]}"; then
    echo "  *: the relay was still busy (over ${QUIET_CPU}% CPU) when that probe started"
fi
ratio() {
    awk -v a="$1" -v ra="$2" -v b="$3" -v rb="$4" 'BEGIN {
        r = rb / ra
        printf "RSS at depth %s / at depth %s: %.1f / %.1f MB = %.2fx (target: within 1.5x): %s\n",
            b, a, rb / 1024, ra / 1024, r, (r <= 1.5 ? "within" : "OVER the target")
    }'
}
ratio "$first" "$RSS_FIRST" "$MAX_DEPTH" "$RSS_LAST"
[[ $RESTART == 1 ]] && ratio "$first" "$RSS_FIRST" "${MAX_DEPTH}r" "$RSS_RESTARTED"
# Anything the relay found worth a warning (it logs warnings and errors only, besides start-up).
warnings=$(cat "$TMP"/relay*.log | grep -c -E '"level":"(WARN|ERROR)"' || true)
if ((warnings > 0)); then
    echo "the relay logged $warnings warnings or errors; the last ones:"
    cat "$TMP"/relay*.log | grep -E '"level":"(WARN|ERROR)"' | tail -n 5
fi
exit "$failed"
