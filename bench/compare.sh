#!/usr/bin/env bash
# The relay side by side with Postfix: the same loads against each, one after the other, on
# loopback only, and one table.
#
#   bench/compare.sh [RELAY_BINARY]      (default: $CARGO_TARGET_DIR/release/relay)
#
# Servers: "relay" (no plugins), "relay+plugins" (the four shipped plugins, bench/plugins.toml
# as accept-rate.sh uses it with EXTRA_CONFIG) and "postfix" (a private instance, see
# start_postfix; Postfix is installed from Debian if missing). Each routes every domain to a
# countsink. For each message size and session count, each server in turn gets a fresh server
# and a fresh countsink (so every row starts with empty queues); loadgen sends the row's
# messages, then the script waits until the sink has every accepted message and the server's
# queue is empty, and prints a row: accepted msgs/s and p50/p99 end-of-DATA->250 latency
# (loadgen), end-to-end msgs/s (loadgen's start to the sink receiving the last message), peak
# RSS and CPU seconds per 1,000 messages (see the legend at the end of the output).
#
# Environment: CARGO_TARGET_DIR (where relay, loadgen, countsink and the plugins are; loadgen
# and countsink are built if missing), SERVERS ("relay relay+plugins postfix"), SIZES (bytes,
# "2048 102400"), SESSIONS ("1 10 50"), MESSAGES (messages per row: "SESSIONS:COUNT" for every
# size, "SIZE:SESSIONS:COUNT" for one size, which wins; default below), LOAD_TIMEOUT (s, 300:
# longest one loadgen run may take), DRAIN_TIMEOUT (s, 120: longest wait for the sink to get
# everything, and again for the queue to empty), PLUGIN_CACHE (compiled-plugin cache, shared by
# the rows; default: one in the temp dir, filled before the first row), KEEP_TMP (keep the temp
# dir: configs, logs, loadgen and sink output), TMPDIR (/tmp; the postfix user must be able to
# enter it).
# Every process it starts, the Postfix instance included, is stopped on exit (Ctrl-C and
# failures included), and its temp dir removed. Postfix needs root (sudo is used when not root).
set -euo pipefail

ME=compare
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
RELAY=${1:-$CARGO_TARGET_DIR/release/relay}
SERVERS=${SERVERS:-"relay relay+plugins postfix"}
SIZES=${SIZES:-"2048 102400"}
SESSIONS=${SESSIONS:-"1 10 50"}
# About 7-10 s per Postfix row on the 2-core VM when it is quiet (Postfix took 520-830 msgs/s
# of 2 KB and 310-410 of 100 KB); the relay's rows take less: about 2 minutes in all.
MESSAGES=${MESSAGES:-"1:4000 10:5000 50:5000 102400:1:2500 102400:10:3000 102400:50:3000"}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-300}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
HZ=$(getconf CLK_TCK)
PAGE=$(getconf PAGESIZE)
SUDO=()
[[ $(id -u) == 0 ]] || SUDO=(sudo)

die() {
    echo "$ME: $*" >&2
    exit 2
}

# count_for SIZE SESSIONS: the row's message count from MESSAGES ("" if none).
count_for() {
    local entry general='' specific=''
    for entry in $MESSAGES; do
        if [[ $entry == "$1:$2:"* ]]; then
            specific=${entry##*:}
        elif [[ $entry == "$2:"* && $entry != *:*:* ]]; then
            general=${entry#*:}
        fi
    done
    echo "${specific:-$general}"
}

for v in LOAD_TIMEOUT DRAIN_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v: '${!v}' is not a positive number of seconds"
done
max_sessions=0
for s in $SESSIONS; do
    [[ $s =~ ^[1-9][0-9]*$ ]] || die "SESSIONS: '$s' is not a positive number"
    ((s > max_sessions)) && max_sessions=$s
    for size in $SIZES; do
        [[ $size =~ ^[1-9][0-9]*$ ]] || die "SIZES: '$size' is not a positive number of bytes"
        [[ $(count_for "$size" "$s") =~ ^[1-9][0-9]*$ ]] ||
            die "MESSAGES ('$MESSAGES') has no count for $s sessions at $size bytes (add $s:COUNT or $size:$s:COUNT)"
    done
done
((max_sessions > 0)) || die "SESSIONS is empty"
[[ -n ${SIZES// /} ]] || die "SIZES is empty"
for server in $SERVERS; do
    case $server in
    relay | relay+plugins | postfix) ;;
    *) die "SERVERS: unknown server '$server' (relay, relay+plugins, postfix)" ;;
    esac
done
[[ -n ${SERVERS// /} ]] || die "SERVERS is empty"

if [[ " $SERVERS " == *" relay"[\ +]* ]]; then
    need_tools "$RELAY"
    command -v curl >/dev/null || die "needs curl to read the relay's metrics"
else
    need_tools
fi
if [[ " $SERVERS " == *" relay+plugins "* ]]; then
    for p in rate-limit ip-pools suppression content-policy; do
        [[ -f $CARGO_TARGET_DIR/wasm32-wasip2/release/${p//-/_}.wasm ]] ||
            die "no $p plugin in $CARGO_TARGET_DIR/wasm32-wasip2/release (build the plugins: make plugins)"
    done
fi

# install_postfix: Postfix from Debian, without the configuration prompt ("No configuration":
# the package then writes no main.cf and starts no system-wide instance; one that is already
# there is left alone).
install_postfix() {
    dpkg -s postfix >/dev/null 2>&1 && return 0
    echo "$ME: installing Postfix from Debian"
    echo "postfix postfix/main_mailer_type select No configuration" | "${SUDO[@]}" debconf-set-selections
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
}

if [[ " $SERVERS " == *" postfix "* ]]; then
    install_postfix
    # postfix(1) is in /usr/sbin, which a user's PATH may lack.
    POSTFIX=$(PATH=$PATH:/usr/sbin:/sbin command -v postfix) || die "no postfix command after installing Postfix"
    POSTCONF=$(dirname "$POSTFIX")/postconf
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/relay-compare.XXXXXX")
# The Postfix daemons run as the postfix user and must reach their queue inside the temp dir.
chmod 755 "$TMP"
: "${PLUGIN_CACHE:=$TMP/plugin-cache}"
PF_CONF=''
PF_MASTER=''

# instance_scan SID: reads /proc for the Postfix instance whose master has PID SID: every process
# in the master's session (the master calls setsid; its daemons inherit the session and keep it
# if the master dies). Sets INSTANCE_PIDS; INSTANCE_RSS, their summed RSS in pages; and
# INSTANCE_TICKS, their user+system clock ticks plus those of their reaped children (the master's
# cutime+cstime holds every daemon that has exited).
instance_scan() {
    local -a f
    # One awk costs a few ms of CPU per scan, several times less than a loop in bash. It reads
    # with getline, which, unlike mawk's main loop, goes on past a process that has exited.
    read -ra f < <(awk -v sid="$1" 'BEGIN {
        for (i = 1; i < ARGC; i++) {
            if ((getline line < ARGV[i]) <= 0) continue
            close(ARGV[i])
            pid = line + 0
            sub(/.*\) /, "", line)  # the fields after "(comm) ": v[1] is the state, v[4] the session
            split(line, v, " ")
            if (v[4] == sid) { rss += v[22]; ticks += v[12] + v[13] + v[14] + v[15]; pids = pids " " pid }
        }
        print rss + 0, ticks + 0 pids
    }' /proc/[0-9]*/stat) || true
    INSTANCE_RSS=${f[0]:-0}
    INSTANCE_TICKS=${f[1]:-0}
    INSTANCE_PIDS=("${f[@]:2}")
}

# instance_gone SID TENTHS: waits up to TENTHS tenths of a second until the instance has no
# process left; fails if it still has some (left in INSTANCE_PIDS).
instance_gone() {
    for _ in $(seq "$2"); do
        instance_scan "$1"
        ((${#INSTANCE_PIDS[@]} == 0)) && return 0
        sleep 0.1
    done
    return 1
}

# sample_rss SID STOPFILE OUT: the instance's summed RSS every 100 ms until STOPFILE exists (or
# LOAD_TIMEOUT + 2 DRAIN_TIMEOUT + 60 s pass); then writes the peak (pages) to OUT.
sample_rss() {
    local sid=$1 stopfile=$2 out=$3 peak=0
    for _ in $(seq $(((LOAD_TIMEOUT + 2 * DRAIN_TIMEOUT + 60) * 10))); do
        [[ -e $stopfile ]] && break
        instance_scan "$sid"
        ((INSTANCE_RSS > peak)) && peak=$INSTANCE_RSS
        sleep 0.1
    done
    echo "$peak" >"$out"
}

# write_postfix_config DIR PORT SINK_ADDR: main.cf and master.cf of a private instance in
# DIR/postfix-conf, with its smtpd on 127.0.0.1:PORT relaying everything to SINK_ADDR.
write_postfix_config() {
    local dir=$1 port=$2 sink=$3
    # Every smtpd process serves one session for its whole life.
    local procs=$((2 * max_sessions > 100 ? 2 * max_sessions : 100))
    {
        cat <<EOF
# A private Postfix instance for one row of bench/compare.sh. Every setting here differs from
# Postfix's default (or restates one the comparison depends on). Not changed, on purpose: the
# queue (each message is written to a queue file and fsynced before the 250, as the relay
# syncs its write-ahead log), in_flow_delay (1s: smtpd slows down when the queue manager falls
# behind), the concurrency ramp (initial_destination_concurrency = 5, rising to the limit
# below), connection reuse to the sink, and the per-client connection limit (50; mynetworks
# clients are exempt by default).

EOF
        postfix_main_cf "$dir" bench
        cat <<EOF
# Every message goes to the countsink, as the relay's route "*" does.
relayhost = [${sink%:*}]:${sink##*:}
# At least one process per concurrent session: each smtpd serves one session for its whole
# life (twice the largest session count, 100 at least, which is Postfix's default).
default_process_limit = $procs
# At most 20 connections to the sink, as the relay's max_connections_per_destination (Postfix's
# default is 20 too; written here so that the comparison does not rest on a default).
smtp_destination_concurrency_limit = 20
EOF
    } >"$dir/postfix-conf/main.cf"
    postfix_master_cf "$port" >"$dir/postfix-conf/master.cf"
}

# start_postfix DIR SINK_ADDR: a private Postfix instance with config, queue, data and log in
# DIR, relaying everything to SINK_ADDR; sets PF_CONF, PF_QUEUE, PF_LOG, PF_MASTER (the master's
# PID) and POSTFIX_ADDR.
start_postfix() {
    local dir=$1 sink=$2 port
    PF_QUEUE=$dir/postfix-queue
    PF_LOG=$dir/postfix.log
    mkdir -p "$dir/postfix-conf"
    # The queue directory must exist and belong to root; "postfix start" creates the rest
    # (postfix-owned queue subdirectories and the data directory) with the right owners.
    "${SUDO[@]}" install -d -o root -g root -m 755 "$PF_QUEUE"
    for _ in 1 2 3; do
        port=$(free_port)
        write_postfix_config "$dir" "$port" "$sink"
        PF_CONF=$dir/postfix-conf
        # Postfix reports to its log, not to a terminal-less stderr.
        if "${SUDO[@]}" timeout 60 "$POSTFIX" -c "$PF_CONF" start >>"$dir/postfix.out" 2>&1; then
            PF_MASTER=$(tr -dc 0-9 <"$PF_QUEUE/pid/master.pid")
            POSTFIX_ADDR=127.0.0.1:$port
            return 0
        fi
        # A master that did start (say, the start timed out) is stopped before the next try.
        stop_postfix
        # Someone took the port between free_port and the bind: try another.
        grep -q "bind 127.0.0.1 port $port: Address already in use" "$PF_LOG" 2>/dev/null || break
    done
    echo "$ME: Postfix did not start; its log says:" >&2
    tail -n 20 "$PF_LOG" "$dir/postfix.out" >&2 2>/dev/null || true
    return 1
}

# stop_postfix: stops the instance started last ("postfix stop"), then makes sure that every
# process of it is gone: the daemons exit shortly after the master; any left after 10 s are
# killed by PID.
stop_postfix() {
    [[ -n $PF_CONF ]] || return 0
    local conf=$PF_CONF sid=$PF_MASTER pid
    # Interrupted or failed during "postfix start": the master may be up all the same.
    [[ -n $sid || ! -s $PF_QUEUE/pid/master.pid ]] || sid=$(tr -dc 0-9 <"$PF_QUEUE/pid/master.pid")
    PF_CONF=''
    PF_MASTER=''
    "${SUDO[@]}" timeout 60 "$POSTFIX" -c "$conf" stop >/dev/null 2>&1 || true
    [[ -n $sid ]] || return 0
    instance_gone "$sid" 100 && return 0
    echo "$ME: killing ${#INSTANCE_PIDS[@]} Postfix processes still running 10 s after postfix stop" >&2
    for pid in "${INSTANCE_PIDS[@]}"; do
        "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true
    done
    instance_gone "$sid" 50 || echo "$ME: Postfix processes ${INSTANCE_PIDS[*]} survived SIGKILL" >&2
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    trap '' INT TERM
    stop_postfix
    stop_started
    if [[ -n "${KEEP_TMP:-}" ]]; then
        echo "kept $TMP"
    else
        "${SUDO[@]}" rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Postfix opens its lock and log files as the postfix user: every directory above them must let
# it through (a TMPDIR under /root does not).
if [[ -n ${POSTFIX:-} ]] && ! "${SUDO[@]}" runuser -u postfix -- test -x "$TMP"; then
    die "the postfix user cannot enter $TMP: set TMPDIR to a directory that others may enter (e.g. /tmp)"
fi

# queue_empty SERVER: whether the server under test has nothing left in its queue.
queue_empty() {
    if [[ $1 == postfix ]]; then
        [[ -z $("${SUDO[@]}" find "$PF_QUEUE"/{maildrop,incoming,active,deferred,hold} -type f -print -quit) ]]
    else
        [[ $(curl -sf --max-time 5 "http://$METRICS_ADDR/metrics" |
            awk '$1 == "relay_queue_messages" { print $2 }') == 0 ]]
    fi
}

# server_ticks SERVER: user+system clock ticks the server under test has used so far.
server_ticks() {
    if [[ $1 == postfix ]]; then
        instance_scan "$PF_MASTER"
        echo "$INSTANCE_TICKS"
    else
        cpu_ticks "$RELAY_PID" | awk '{ print $1 + $2 }'
    fi
}

if [[ " $SERVERS " == *" relay+plugins "* && ! -d $PLUGIN_CACHE/modules ]]; then
    # Compile the plugins once, before the rows: with a warm cache every relay starts the way a
    # restarted one does (compiling would add seconds and ~20 MB to the first row's peak RSS).
    mkdir -p "$TMP/warm-up"
    start_relay "$TMP/warm-up" 127.0.0.1:9 "$BENCH_DIR/plugins.toml"
    stop "$RELAY_PID"
fi

# warnings LOG REGEX: whether LOG has lines matching REGEX; shows the first five on stderr.
warnings() {
    grep -E "$2" "$1" | head -n 5 >&2
    grep -qE "$2" "$1"
}

# run_row SERVER SIZE SESSIONS COUNT: one row of the table, printed when done; sets failed=1
# when messages were refused, lost or late.
run_row() {
    local server=$1 size=$2 sessions=$3 count=$4
    local dir=$TMP/$server-$size-$sessions note='' addr ticks_before ticks_after rss_kb=''
    local out accepted bad sampler='' sink_json e2e=- delivered
    mkdir -p "$dir"
    start_sink "$dir" --progress --json --timeout $((LOAD_TIMEOUT + 2 * DRAIN_TIMEOUT + 120))
    case $server in
    relay)
        start_relay "$dir" "$SINK_ADDR"
        addr=$RELAY_ADDR
        ;;
    relay+plugins)
        start_relay "$dir" "$SINK_ADDR" "$BENCH_DIR/plugins.toml"
        addr=$RELAY_ADDR
        ;;
    postfix)
        start_postfix "$dir" "$SINK_ADDR"
        addr=$POSTFIX_ADDR
        sample_rss "$PF_MASTER" "$dir/rss.stop" "$dir/rss.peak" &
        sampler=$!
        PIDS+=("$sampler")
        ;;
    esac

    ticks_before=$(server_ticks "$server")
    out=$dir/load.json
    timeout --foreground -k 5 "$LOAD_TIMEOUT" "$LOADGEN" --server "$addr" --sessions "$sessions" \
        --messages "$count" --size "$size" --json --allow-failures >"$out" || true
    accepted=$(json "$out" accepted)
    if [[ $accepted == - ]]; then
        accepted=0
        note="loadgen failed or took over ${LOAD_TIMEOUT}s"
    fi
    bad=$((count - accepted))
    if ((bad > 0)); then
        [[ -n $note ]] || note="$bad of $count refused or failed"
        grep -o '"first_error":"[^"]*"' "$out" >&2 || true
    fi

    # Everything accepted reaches the sink, and the server's queue empties, before the CPU and
    # memory figures are taken.
    drain "$accepted" || note="${note:+$note; }sink short"
    for _ in $(seq $((DRAIN_TIMEOUT * 10))); do
        queue_empty "$server" && break
        sleep 0.1
    done
    queue_empty "$server" || note="${note:+$note; }queue not empty"
    ticks_after=$(server_ticks "$server")
    if [[ $server == postfix ]]; then
        touch "$dir/rss.stop"
        for _ in $(seq 50); do
            kill -0 "$sampler" 2>/dev/null || break
            sleep 0.1
        done
        stop "$sampler"
        [[ -s $dir/rss.peak ]] && rss_kb=$(($(<"$dir/rss.peak") * PAGE / 1024))
        # postlogd writes the log a moment after the fact.
        for _ in $(seq 50); do
            delivered=$(grep -c ' status=sent ' "$PF_LOG" || true)
            ((delivered >= accepted)) && break
            sleep 0.1
        done
        ((delivered == accepted)) || note="${note:+$note; }Postfix logged $delivered sent"
        if warnings "$PF_LOG" ': (warning|error|fatal|panic): '; then
            note="${note:+$note; }Postfix warnings"
        fi
        stop_postfix
    else
        rss_kb=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$RELAY_PID/status")
        stop "$RELAY_PID"
        if warnings "$dir/relay.log" '"level":"(WARN|ERROR)"'; then
            note="${note:+$note; }relay warnings"
        fi
    fi
    stop "$SINK_PID"
    sink_json=$dir/sink.json
    tail -n1 "$SINK_OUT" >"$sink_json"
    if [[ $(json "$sink_json" messages) == "$accepted" ]] && ((accepted > 0)); then
        e2e=$(awk -v n="$accepted" -v a="$(json "$out" start_unix_us)" -v b="$(json "$sink_json" last_unix_us)" \
            'BEGIN { printf "%.1f", n / ((b - a) / 1e6) }')
    else
        note="${note:+$note; }sink got $(json "$sink_json" messages) of $accepted"
    fi

    awk -v server="$server" -v size="$size" -v s="$sessions" -v n="$accepted" \
        -v rate="$(json "$out" accepted_per_s)" -v e2e="$e2e" -v p50="$(json "$out" p50)" \
        -v p99="$(json "$out" p99)" -v rss="$rss_kb" -v t="$((ticks_after - ticks_before))" \
        -v hz="$HZ" -v note="$note" 'BEGIN {
        sz = (size % 1024 == 0) ? sprintf("%d KB", size / 1024) : sprintf("%d B", size)
        rate = (rate == "-") ? "-" : sprintf("%.1f", rate)
        p50 = (p50 == "-") ? "-" : sprintf("%.2f", p50)
        p99 = (p99 == "-") ? "-" : sprintf("%.2f", p99)
        rss = (rss == "") ? "-" : sprintf("%.1f", rss / 1024)
        cpu = (n > 0) ? sprintf("%.3f", t / hz / n * 1000) : "-"
        printf "%-14s %7s %8d %8d %10s %10s %7s %7s %9s %9s  %s\n", server, sz, s, n, rate, e2e,
            p50, p99, rss, cpu, note
    }'
    if [[ -n $note ]]; then
        failed=1
    elif [[ -z ${KEEP_TMP:-} ]]; then
        "${SUDO[@]}" rm -rf "$dir"
    fi
}

[[ " $SERVERS " == *" relay"[\ +]* ]] && echo "relay: $RELAY"
[[ -n ${POSTFIX:-} ]] && echo "postfix: $("$POSTCONF" -d -h mail_version) (Debian package), a private instance per row"
echo "servers: $SERVERS; sizes (bytes): $SIZES; sessions: $SESSIONS; messages per row: $MESSAGES"
echo "every domain routed to a countsink; all on 127.0.0.1; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '%-14s %7s %8s %8s %10s %10s %7s %7s %9s %9s  %s\n' server size sessions messages \
    "accepted/s" "e2e/s" "p50 ms" "p99 ms" "RSS MiB" "CPU s/1k" note
failed=0
for size in $SIZES; do
    for sessions in $SESSIONS; do
        for server in $SERVERS; do
            run_row "$server" "$size" "$sessions" "$(count_for "$size" "$sessions")"
        done
    done
done
echo
echo "accepted/s: messages accepted per second (loadgen); e2e/s: accepted messages per second"
echo "from loadgen's start to the sink receiving the last one; p50/p99: end of DATA -> 250;"
echo "RSS MiB: the relay's VmHWM, or the peak of the summed RSS of all the Postfix instance's"
echo "processes (sampled every 100 ms; shared pages count once per process); CPU s/1k: user+system"
echo "CPU seconds per 1,000 messages (Postfix: all its processes, exited ones included)"
exit "$failed"
