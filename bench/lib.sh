# Shell functions shared by the benchmark scripts; sourced, never run.
#
# The sourcing script sets ME (its name, for messages), TMP (its temp dir) and, for drain,
# DRAIN_TIMEOUT (s). Every process started here is recorded in PIDS; stop forgets a process
# once it is gone, so that stop_started, on exit, never signals a PID that was reused.
# shellcheck shell=bash disable=SC2034 # the variables set here are for the sourcing scripts

: "${CARGO_TARGET_DIR:=$HOME/.cache/relay-target}"
export CARGO_TARGET_DIR
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOADGEN=$CARGO_TARGET_DIR/release/loadgen
COUNTSINK=$CARGO_TARGET_DIR/release/countsink
PIDS=()

# need_tools [RELAY]: fails unless RELAY (when given) is executable; builds loadgen and countsink
# if missing.
need_tools() {
    if [[ $# -gt 0 && ! -x $1 ]]; then
        echo "$ME: no relay binary at $1 (build it: cargo build --release -p relay)" >&2
        exit 2
    fi
    if [[ ! -x $LOADGEN || ! -x $COUNTSINK ]]; then
        (cd "$BENCH_DIR/.." && cargo build --release -p relay-bench)
    fi
}

# running PID: true while PID is one of our background processes and has not exited. Bash reaps
# exited children at once, after which the PID may be reused (pid_max is 32768 here): never
# signal a PID without asking this first.
running() {
    local r
    r=$(jobs -rp)
    grep -qx "$1" <<<"$r"
}

# Stops one process we started: TERM, up to SECS (default 10) s, then KILL; then forgets it.
stop() {
    local pid=$1 secs=${2:-10}
    if running "$pid"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq $((secs * 10))); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    untrack "$pid"
}

# untrack PID: a process that has exited and been waited for.
untrack() {
    local kept=() p
    for p in "${PIDS[@]}"; do
        [[ $p == "$1" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
}

# stop_started: stops every process we started that is still recorded.
stop_started() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop "$pid"
    done
}

# temp_dir_with_cleanup NAME: sets TMP to a new temp dir (relay-NAME.XXXXXX in $TMPDIR) and, on
# exit (Ctrl-C and failures included), stops every process started here and removes TMP (kept,
# and named, with KEEP_TMP set).
temp_dir_with_cleanup() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/relay-$1.XXXXXX")
    trap cleanup_temp_dir EXIT
    trap 'exit 130' INT TERM
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup_temp_dir() {
    stop_started
    if [[ -n "${KEEP_TMP:-}" ]]; then
        echo "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}

# wait_for FILE REGEX PID SECS: prints the first line of FILE matching REGEX,
# failing if PID exits or SECS pass first.
wait_for() {
    local file=$1 regex=$2 pid=$3 secs=$4 line
    for _ in $(seq $((secs * 10))); do
        line=$(grep -m1 -E "$regex" "$file" 2>/dev/null || true)
        if [[ -n $line ]]; then
            echo "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$ME: no line matching '$regex' in $file after ${secs}s; it says:" >&2
    tail -n 20 "$file" >&2
    return 1
}

# json FILE KEY: the first numeric value of "KEY" in a one-line JSON file ("-" if absent or null).
json() {
    local v
    v=$(grep -o "\"$2\":[-0-9.eE+]*" "$1" | head -n1 | cut -d: -f2)
    echo "${v:--}"
}

# start_sink DIR [countsink flags...]: a countsink on a free loopback port, writing DIR/sink.out
# and DIR/sink.err; sets SINK_PID, SINK_OUT, SINK_ERR and SINK_ADDR.
start_sink() {
    local dir=$1
    shift
    SINK_OUT=$dir/sink.out
    SINK_ERR=$dir/sink.err
    "$COUNTSINK" --listen 127.0.0.1:0 "$@" >"$SINK_OUT" 2>"$SINK_ERR" &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    SINK_ADDR=$(wait_for "$SINK_OUT" '^listening on ' "$SINK_PID" 10)
    SINK_ADDR=${SINK_ADDR#listening on }
}

# start_relay DIR SINK_ADDR [EXTRA_CONFIG] [RELAY]: the relay (default $RELAY) with its config,
# spool and log in DIR, routing every domain to SINK_ADDR; sets RELAY_PID, RELAY_ADDR and
# METRICS_ADDR. EXTRA_CONFIG: a TOML file appended to the config (bench/plugins.toml loads the
# shipped plugins; @PLUGIN_DIR@ and @CACHE_DIR@ are filled in). With it, PLUGINS names the
# plugins to install ("" for none), WASM_DIR where their .wasm files are (default:
# $CARGO_TARGET_DIR/wasm32-wasip2/release; to compare two builds) and PLUGIN_CACHE the
# compiled-plugin cache (default: a fresh one in DIR).
start_relay() {
    local dir=$1 sink_addr=$2 extra=${3:-} relay=${4:-$RELAY}
    cat >"$dir/relay.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
hostname = "relay.bench"
max_connections_per_ip = 1000

[spool]
path = "$dir/spool"
min_free_space = 0

[delivery]
max_connections_per_destination = 20

[[route]]
domain = "*"
next_hop = "$sink_addr"

[metrics]
listen = "127.0.0.1:0"

[log]
format = "json"
# Warnings, plus the serve module's info lines, of which we need "listening".
level = "warn,relay::serve=info"
EOF
    if [[ -n $extra ]]; then
        sed -e "s|@PLUGIN_DIR@|$dir/plugins|" -e "s|@CACHE_DIR@|${PLUGIN_CACHE:-$dir/plugin-cache}|" \
            "$extra" >>"$dir/relay.toml"
        mkdir -p "$dir/plugins"
        local wasm_dir=${WASM_DIR:-$CARGO_TARGET_DIR/wasm32-wasip2/release} p
        for p in ${PLUGINS-rate-limit ip-pools suppression content-policy}; do
            cp "$wasm_dir/${p//-/_}.wasm" "$dir/plugins/$p.wasm"
        done
    fi
    "$relay" serve --config "$dir/relay.toml" >/dev/null 2>"$dir/relay.log" &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    local line
    line=$(wait_for "$dir/relay.log" '"event":"listening"' "$RELAY_PID" 60)
    RELAY_ADDR=$(sed -E 's/.*"addr":"([^"]+)".*/\1/' <<<"$line")
    line=$(wait_for "$dir/relay.log" '"event":"metrics_listening"' "$RELAY_PID" 10)
    METRICS_ADDR=$(sed -E 's/.*"addr":"([^"]+)".*/\1/' <<<"$line")
}

# The countsink's message count from its last --progress line.
sink_count() {
    local n
    n=$(grep -o ' [0-9]* messages' "$SINK_ERR" 2>/dev/null | tail -n1 | tr -dc 0-9)
    echo "${n:-0}"
}

# drain TOTAL: waits until the sink has TOTAL messages (or DRAIN_TIMEOUT passes).
drain() {
    local total=$1
    for _ in $(seq $((DRAIN_TIMEOUT * 10))); do
        (($(sink_count) >= total)) && return 0
        sleep 0.1
    done
    echo "$ME: the sink has $(sink_count) of $total messages after ${DRAIN_TIMEOUT}s" >&2
    return 1
}

# free_port [EXCEPT]: a loopback port below the ephemeral range (so no outgoing connection holds
# it, and a connect to it cannot connect to itself) on which nothing listens now, other than
# EXCEPT (a port already handed out but not yet listened on).
# shellcheck disable=SC2120 # EXCEPT is optional
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        [[ $p == "${1:-}" ]] && continue
        if ! (: <>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "$ME: no free loopback port found in 20000-31999" >&2
    return 1
}

# cpu_ticks PID: user and system clock ticks the process has used so far.
cpu_ticks() {
    awk '{print $14, $15}' "/proc/$1/stat"
}

# postfix_main_cf DIR DOMAIN: the main.cf settings every private Postfix instance here shares, on
# stdout: its own queue, data directory and log under DIR, the fixed name postfix.DOMAIN,
# loopback and IPv4 only, relaying for loopback clients, no local delivery and no DNS lookups.
# The caller adds its relayhost and the rest.
postfix_main_cf() {
    local dir=$1 domain=$2
    cat <<EOF
# The current defaults, without compatibility warnings for older ones.
compatibility_level = 3.6
# This instance's own queue and data directories; the system-wide instance, if any, keeps
# /var/spool/postfix and /var/lib/postfix.
queue_directory = $dir/postfix-queue
data_directory = $dir/postfix-data
# Its log, in the temp dir (this machine may have no syslog daemon); postlogd writes it.
maillog_file = $dir/postfix.log
maillog_file_prefixes = $dir
# Fixed names, so that nothing looks up the host's name; with a relayhost given as an address
# and smtpd_peername_lookup off the instance makes no DNS queries at all.
myhostname = postfix.$domain
mydomain = $domain
# Loopback only (the smtpd port is set in master.cf), IPv4 only.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# Relay for loopback clients, like the relay's relay_networks; no local delivery at all.
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is off
alias_maps =
alias_database =
# No reverse lookup of the client's address, like the relay.
smtpd_peername_lookup = no
EOF
}

# postfix_master_cf PORT [LINE...]: the master.cf of a private Postfix instance, on stdout: its
# smtpd on 127.0.0.1:PORT and the services a relaying instance needs (no pickup, showq, verify,
# local: nothing uses them), then each LINE (more services). chroot is off for all ("n"):
# Debian's master.cf chroots most daemons into the queue directory, which would need copies of
# /etc files there. maxproc "-" is default_process_limit.
postfix_master_cf() {
    cat <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$1 inet n  -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    if (($# > 1)); then printf '%s\n' "${@:2}"; fi
}
