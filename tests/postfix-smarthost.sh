#!/usr/bin/env bash
# The real-world smarthost set-up, end to end: a private Postfix instance with
#   relayhost = [127.0.0.1]:PORT, smtp_tls_security_level = encrypt, and SASL client credentials
# submits a message to the relay's STARTTLS + AUTH listener, and the relay delivers it to a
# `relay sink`. The relay's relay_networks is empty, so only the login lets Postfix relay.
#
#   tests/postfix-smarthost.sh [RELAY_BINARY]   (default: $CARGO_TARGET_DIR/debug/relay)
#
# `make test` runs it after the cargo tests. It installs Postfix (preseeded to "No
# configuration": no main.cf, no system-wide instance is started), the Cyrus SASL modules and
# swaks from Debian if they are missing (root, or sudo). The Postfix instance has its own
# config, queue and data directories in a temp dir and listens on a free loopback port; the
# system-wide Postfix, if any, is never touched. Everything it starts is stopped on exit, and
# every wait is bounded. Exits 0 when the message arrived at the sink through the relay, signed
# in as the user (Received: ... Authenticated sender), over TLS, and Postfix logged status=sent.
set -euo pipefail
ME=postfix-smarthost
# shellcheck source=../bench/lib.sh
. "$(dirname "$0")/../bench/lib.sh"
RELAY=${1:-$CARGO_TARGET_DIR/debug/relay}
[[ -x $RELAY ]] || { echo "$ME: no relay binary at $RELAY (cargo build -p relay --bins)" >&2; exit 2; }
SUDO=()
[[ $(id -u) == 0 ]] || SUDO=(sudo)

missing=()
for p in postfix libsasl2-modules swaks openssl; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "$ME: installing ${missing[*]} from Debian"
    echo "postfix postfix/main_mailer_type select No configuration" | "${SUDO[@]}" debconf-set-selections
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
POSTFIX=$(PATH=$PATH:/usr/sbin:/sbin command -v postfix)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/relay-postfix.XXXXXX")
# The Postfix daemons run as the postfix user and must reach their queue in the temp dir.
chmod 755 "$TMP"
PF_CONF=$TMP/postfix-conf
PF_QUEUE=$TMP/postfix-queue
PF_LOG=$TMP/postfix.log
PF_STARTED=''

# stop_postfix: "postfix stop", then waits up to 10 s for every process of the instance (the
# master's session) to go, killing what is left by PID.
stop_postfix() {
    [[ -n $PF_STARTED ]] || return 0
    PF_STARTED=''
    local sid
    sid=$(tr -dc 0-9 <"$PF_QUEUE/pid/master.pid" 2>/dev/null || true)
    "${SUDO[@]}" timeout 60 "$POSTFIX" -c "$PF_CONF" stop >/dev/null 2>&1 || true
    [[ -n $sid ]] || return 0
    for _ in $(seq 100); do
        pgrep -s "$sid" >/dev/null || return 0
        sleep 0.1
    done
    for pid in $(pgrep -s "$sid"); do
        "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true
    done
}

cleanup() {
    trap '' INT TERM
    stop_postfix
    stop_started
    if [[ -n ${KEEP_TMP:-} ]]; then echo "kept $TMP"; else "${SUDO[@]}" rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "$ME: FAILED: $*" >&2
    for f in "$TMP/relay.log" "$PF_LOG" "$TMP/sink.log"; do
        [[ -f $f ]] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }
    done
    exit 1
}

# The relay's certificate (self-signed: Postfix encrypts but does not verify, as with most
# smarthosts on a private network) and its one user.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=relay.test" \
    -addext "subjectAltName=DNS:relay.test" \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 || fail "openssl could not make a certificate"
printf 'postfix-password\n' | "$RELAY" user add postfix@example.com --file "$TMP/users" --password-stdin \
    >/dev/null || fail "relay user add"

SINK_PORT=$(free_port)
"$RELAY" sink --listen "127.0.0.1:$SINK_PORT" --dir "$TMP/sink" --json >"$TMP/sink.log" 2>&1 &
PIDS+=($!)
wait_for "$TMP/sink.log" '"event":"listening"' "$!" 20 >/dev/null || fail "the sink did not start"

cat >"$TMP/relay.toml" <<EOF
[server]
hostname = "relay.test"
# Nobody may relay by address: only a login lets Postfix through.
relay_networks = []

[spool]
path = "$TMP/spool"
min_free_space = 0

[[route]]
domain = "*"
next_hop = "127.0.0.1:$SINK_PORT"

[tls]
cert = "$TMP/cert.pem"
key = "$TMP/key.pem"

[auth]
users_file = "$TMP/users"

[[listener]]
name = "submission"
address = "127.0.0.1:0"
tls = "starttls"
require_auth = true

[log]
format = "json"
level = "info"
EOF
"$RELAY" serve --config "$TMP/relay.toml" >"$TMP/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
line=$(wait_for "$TMP/relay.log" '"event":"listening".*"listener":"submission"' "$RELAY_PID" 30) ||
    fail "the relay did not start"
RELAY_ADDR=$(sed -E 's/.*"addr":"([^"]+)".*/\1/' <<<"$line")

# The private Postfix instance: loopback only, no local delivery, everything to the relay.
mkdir -p "$PF_CONF"
"${SUDO[@]}" install -d -o root -g root -m 755 "$PF_QUEUE"
PF_PORT=$(free_port "$SINK_PORT")
{
    postfix_main_cf "$TMP" test
    cat <<EOF
# The smarthost set-up under test, as an operator would write it.
relayhost = [${RELAY_ADDR%:*}]:${RELAY_ADDR##*:}
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = static:postfix@example.com:postfix-password
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
EOF
} >"$PF_CONF/main.cf"
postfix_master_cf "$PF_PORT" "tlsmgr    unix  -       -       n       1000?   1       tlsmgr" \
    >"$PF_CONF/master.cf"
PF_STARTED=1
"${SUDO[@]}" timeout 60 "$POSTFIX" -c "$PF_CONF" start >"$TMP/postfix.out" 2>&1 || fail "postfix did not start"

# An app hands Postfix a message; Postfix passes it on to its relayhost.
swaks --server 127.0.0.1 --port "$PF_PORT" --timeout 20 --ehlo app.test \
    --from app@example.com --to someone@destination.test \
    --header "Subject: through postfix and the relay" --body "smarthost test" \
    >"$TMP/swaks.out" 2>&1 || { cat "$TMP/swaks.out" >&2; fail "Postfix did not take the message"; }

for _ in $(seq 300); do
    compgen -G "$TMP/sink/*.eml" >/dev/null && break
    sleep 0.1
done
eml=$(compgen -G "$TMP/sink/*.eml" | head -n1) || fail "no message reached the sink within 30 s"
grep -q "^Subject: through postfix and the relay" "$eml" || fail "the sink got another message: $eml"
grep -q "(Authenticated sender: postfix@example.com)" "$eml" || fail "no Authenticated sender in $eml"
grep -q "with ESMTPSA" "$eml" || fail "the relay's Received does not say ESMTPSA"
grep -q '"event":"auth_ok".*"user":"postfix@example.com"' "$TMP/relay.log" || fail "no auth_ok in the relay log"
grep -q "status=sent" "$PF_LOG" || fail "Postfix did not log status=sent"
grep -q "Trusted TLS connection\|Untrusted TLS connection\|Anonymous TLS connection" "$PF_LOG" ||
    fail "Postfix did not log a TLS connection to the relay"
echo "$ME: ok: Postfix -> relay (STARTTLS, AUTH as postfix@example.com) -> sink"
