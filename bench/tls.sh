#!/usr/bin/env bash
# Submission over TLS and AUTH against plain SMTP, on loopback only.
#
#   bench/tls.sh [RELAY_BINARY]      (default: $CARGO_TARGET_DIR/release/relay)
#
# One relay (release build, syncing on) with a self-signed certificate (RSA-2048, or ECDSA P-256
# with KEY=ec), one user, and
# two listeners: the [server] one (plain, STARTTLS offered, AUTH optional) and an implicit-TLS
# one; every domain routed to a countsink. loadgen then sends SIZE-byte messages at SESSIONS
# concurrent sessions, one row each:
#   plain                   no TLS, no login
#   starttls+auth           STARTTLS, then AUTH PLAIN, then the messages
#   implicit+auth           TLS from the first byte, AUTH PLAIN, then the messages
#   plain, 1/conn           a new connection for every message
#   starttls+auth, 1/conn   a new connection, full TLS handshake and login for every message
#   implicit+auth, 1/conn   the same over implicit TLS
# loadgen's client does no session resumption, so every TLS connection is a full handshake
# (ECDHE key exchange and a signature with the certificate's key on the relay's side). The
# 1/conn rows are the
# handshake rate the relay sustains: connections/s, each with a handshake, a login and one
# message. Logins after the first are answered from the relay's cache of verified passwords;
# the first one of the run costs an argon2 hash.
# Between rows the script waits until the sink has every message, so each row starts with an
# empty queue. The table shows accepted msgs/s, connections/s, p50/p99 end-of-DATA -> 250 and
# the relay's CPU seconds per 1,000 messages.
#
# Environment: CARGO_TARGET_DIR, KEY (rsa or ec), SIZE (2048), SESSIONS (50), MESSAGES (20000 per row),
# CONN_MESSAGES (5000 per 1/conn row), DRAIN_TIMEOUT (s, 120), KEEP_TMP.
# Every process it starts is stopped on exit, and its temp dir removed.
set -euo pipefail
ME=tls
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
RELAY=${1:-$CARGO_TARGET_DIR/release/relay}
SIZE=${SIZE:-2048}
SESSIONS=${SESSIONS:-50}
MESSAGES=${MESSAGES:-20000}
CONN_MESSAGES=${CONN_MESSAGES:-5000}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
KEY=${KEY:-rsa}
case $KEY in
rsa) NEWKEY=(-newkey rsa:2048) KEY_NAME="RSA-2048" ;;
ec) NEWKEY=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) KEY_NAME="ECDSA P-256" ;;
*) echo "$ME: KEY must be rsa or ec" >&2; exit 2 ;;
esac
need_tools "$RELAY"
command -v openssl >/dev/null || { echo "$ME: needs openssl (apt-get install openssl)" >&2; exit 2; }

temp_dir_with_cleanup tls

openssl req -x509 "${NEWKEY[@]}" -nodes -days 2 -subj "/CN=relay.bench" \
    -addext "subjectAltName=DNS:relay.bench" \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1
printf 'bench-password\n' | "$RELAY" user add bench --file "$TMP/users" --password-stdin >/dev/null
cat >"$TMP/tls.toml" <<EOF
[tls]
cert = "$TMP/cert.pem"
key = "$TMP/key.pem"

[auth]
users_file = "$TMP/users"

[[listener]]
name = "implicit"
address = "127.0.0.1:0"
tls = "implicit"
require_auth = true
EOF

start_sink "$TMP" --progress
start_relay "$TMP" "$SINK_ADDR" "$TMP/tls.toml"
line=$(wait_for "$TMP/relay.log" '"event":"listening".*"listener":"implicit"' "$RELAY_PID" 10)
IMPLICIT_ADDR=$(sed -E 's/.*"addr":"([^"]+)".*/\1/' <<<"$line")

echo "relay: $RELAY; $(nproc) CPUs; $SIZE-byte messages, $SESSIONS sessions; certificate $KEY_NAME (self-signed)"
printf '\n%-24s %9s %10s %10s %8s %8s %9s\n' load messages "msgs/s" "conns/s" "p50 ms" "p99 ms" "CPU s/1k"
total=0
row() {
    local label=$1 count=$2 addr=$3
    shift 3
    local before after out secs
    before=$(cpu_ticks "$RELAY_PID" | awk '{print $1 + $2}')
    out=$TMP/$(tr -c 'a-z0-9\n' _ <<<"$label").json
    "$LOADGEN" --server "$addr" --sessions "$SESSIONS" --messages "$count" --size "$SIZE" \
        --json "$@" >"$out"
    total=$((total + $(json "$out" accepted)))
    drain "$total"
    after=$(cpu_ticks "$RELAY_PID" | awk '{print $1 + $2}')
    secs=$(json "$out" elapsed_s)
    printf '%-24s %9s %10.0f %10.0f %8s %8s %9.3f\n' "$label" "$(json "$out" accepted)" \
        "$(json "$out" accepted_per_s)" "$(echo "$(json "$out" connections) / $secs" | bc -l)" \
        "$(json "$out" p50)" "$(json "$out" p99)" \
        "$(echo "($after - $before) / $(getconf CLK_TCK) * 1000 / $count" | bc -l)"
}
AUTH=(--auth bench:bench-password)
row "plain" "$MESSAGES" "$RELAY_ADDR"
row "starttls+auth" "$MESSAGES" "$RELAY_ADDR" --tls starttls "${AUTH[@]}"
row "implicit+auth" "$MESSAGES" "$IMPLICIT_ADDR" --tls implicit "${AUTH[@]}"
row "plain, 1/conn" "$CONN_MESSAGES" "$RELAY_ADDR" --per-connection 1
row "starttls+auth, 1/conn" "$CONN_MESSAGES" "$RELAY_ADDR" --tls starttls "${AUTH[@]}" --per-connection 1
row "implicit+auth, 1/conn" "$CONN_MESSAGES" "$IMPLICIT_ADDR" --tls implicit "${AUTH[@]}" --per-connection 1
echo
echo "conns/s: connections loadgen opened per second (with TLS: full handshakes, no resumption)"
echo "handshakes (relay_tls_handshakes): $(curl -s "http://$METRICS_ADDR/metrics" | grep -E '^relay_tls_handshakes_total' | tr '\n' ' ')"
