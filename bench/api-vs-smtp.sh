#!/usr/bin/env bash
# Durable injection rate, HTTP API vs SMTP, in one run against one Sealpost server:
#   API:  examples/api_load.rs (Rust, reqwest; SESSIONS keep-alive connections, OAuth bearer
#         token from POST /oauth/token) -> POST /v1/messages, counted when answered 202
#   SMTP: smtp-source -d (SESSIONS sessions, each kept open for many messages like the HTTP
#         connections) -> the SMTP listener, counted when answered 250
# Both answers mean the message is flushed to the spool. Delivery keeps running during both
# phases (every message is relayed to smtp-sink on 127.0.0.1, as in relay-vs-postfix.sh);
# each phase starts after the sink has received every message of the one before, so each
# measures injection under its own delivery load. Prints both rates and the API/SMTP ratio.
#
# usage: bench/api-vs-smtp.sh [MESSAGES [SIZE_BYTES]]     defaults: 10000 messages, 10240 bytes
# env:   SEALPOST_BIN (default target/release/sealpost), SESSIONS (20), AUTH (bearer | key:
#        X-API-Key on every request, which verifies the argon2 hash each time),
#        SOURCE_OPTS (smtp-source flags, default "-d"; "" for one connection per message)
# needs: root (smtp-sink -u postfix), smtp-source, smtp-sink, python3, cargo (builds the
#        example). Only 127.0.0.1 is used.
set -euo pipefail
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

MESSAGES=${1:-10000}
SIZE=${2:-10240}
SESSIONS=${SESSIONS:-20}
AUTH=${AUTH:-bearer}
SOURCE_OPTS=${SOURCE_OPTS--d}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SEALPOST_BIN:-$ROOT/target/release/sealpost}
SRC=$(command -v smtp-source || echo /usr/sbin/smtp-source)
SNK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
for t in "$SRC" "$SNK" "$BIN"; do
    [[ -x $t ]] || { echo "missing $t (apt-get install postfix; cargo build --release)" >&2; exit 2; }
done
[[ $(id -u) -eq 0 ]] || { echo "run as root (smtp-sink -u postfix)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release --quiet --example api_load)
LOAD=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/api_load

W=$(mktemp -d /tmp/sealpost-bench.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP_WORKDIR:-false} == true ]]; then echo "(workdir kept: $W)" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_banner() { # PORT TIMEOUT
    python3 - "$1" "${2:-30}" <<'PY'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n"); sys.exit(0)
    except OSError:
        pass
    time.sleep(0.05)
sys.exit(f"nothing answered on 127.0.0.1:{port}")
PY
}
now() { date +%s.%N; }
sink_count() { tr '\r' '\n' <"$W/smtp-sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 || true; }
wait_sink() { # TOTAL: waits until smtp-sink has TOTAL messages
    local deadline=$((SECONDS + 600)) n
    while :; do
        n=$(sink_count)
        [[ ${n:-0} -ge $1 ]] && return 0
        if [[ $SECONDS -ge $deadline ]]; then
            echo "only ${n:-0} of $1 messages reached smtp-sink within 600 s" >&2
            exit 1
        fi
        sleep 0.1
    done
}

SINK_PORT=$(free_port)
SMTP_PORT=$(free_port)
API_PORT=$(free_port)
"$SNK" -u postfix -c -m 512 "127.0.0.1:$SINK_PORT" 1024 >"$W/smtp-sink.out" 2>&1 &
PIDS+=($!)
wait_banner "$SINK_PORT" 10

cat >"$W/sealpost.toml" <<EOF
[server]
hostname = "mx.sealpost.bench.test"
spool_dir = "$W/spool"
[[listener]]
address = "127.0.0.1:$SMTP_PORT"
mode = "relay"
[relay]
local_domains = ["example.test"]
trusted_networks = ["127.0.0.1/32"]
[[route]]
domain = "example.test"
host = "127.0.0.1"
port = $SINK_PORT
[dns]
nameservers = ["127.0.0.1:9"]
[outbound]
concurrency = 20
[api]
address = "127.0.0.1:$API_PORT"
EOF
"$BIN" check-config --config "$W/sealpost.toml" >/dev/null
"$BIN" serve --config "$W/sealpost.toml" >"$W/sealpost.log" 2>&1 &
PIDS+=($!)
wait_banner "$SMTP_PORT" 30
CLIENT=$("$BIN" api-clients add bench --scopes send --config "$W/sealpost.toml" --json)
read -r ID SECRET < <(python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["client_id"], c["client_secret"])' <<<"$CLIENT")
if [[ $AUTH == key ]]; then
    HEADER="X-API-Key: $ID:$SECRET"
else
    TOKEN=$(python3 - "$API_PORT" "$ID" "$SECRET" <<'PY'
import json, sys, urllib.parse, urllib.request
port, cid, secret = sys.argv[1:]
data = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": cid, "client_secret": secret}).encode()
with urllib.request.urlopen(f"http://127.0.0.1:{port}/oauth/token", data, timeout=10) as r:
    print(json.load(r)["access_token"])
PY
    )
    HEADER="Authorization: Bearer $TOKEN"
fi

echo "API vs SMTP injection: $MESSAGES messages of ~$SIZE bytes, $SESSIONS concurrent clients each"
echo "  $("$BIN" --version), $(nproc) cores; delivery to smtp-sink on 127.0.0.1 keeps running"
echo "  API client: examples/api_load.rs (Rust, reqwest, $SESSIONS keep-alive HTTP/1.1 connections, auth: $AUTH)"
echo "  SMTP client: smtp-source -s $SESSIONS -l $SIZE $SOURCE_OPTS"

# rate NAME T0 T1 CPU_FILE [NOTE]: prints one result line; the client's own CPU time (from
# /usr/bin/time) shows whether the client could have been the limit.
rate() {
    local cu cs
    read -r cu cs <"$4"
    awk -v name="$1" -v n="$MESSAGES" -v a="$2" -v b="$3" -v cpu="$(awk -v u="$cu" -v s="$cs" 'BEGIN { print u+s }')" \
        -v note="${5:-}" 'BEGIN { printf "%-5s %8.1f msg/s  (%6.2f s, client CPU %.2f s)  %s\n", name, n/(b-a), b-a, cpu, note }'
}

# API phase.
t0=$(now)
/usr/bin/time -f "%U %S" -o "$W/api_load.time" \
    "$LOAD" "http://127.0.0.1:$API_PORT" "$HEADER" "$MESSAGES" "$SESSIONS" "$SIZE" >"$W/api_load.out"
t1=$(now)
api_line=$(rate API "$t0" "$t1" "$W/api_load.time" "$(cat "$W/api_load.out")")
echo "$api_line"
wait_sink "$MESSAGES"

# SMTP phase, same server, after the API phase's mail has been delivered.
t0=$(now)
# shellcheck disable=SC2086
/usr/bin/time -f "%U %S" -o "$W/smtp-source.time" \
    "$SRC" $SOURCE_OPTS -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f alice@example.net -t bob@example.test \
    "127.0.0.1:$SMTP_PORT" >"$W/smtp-source.out" 2>&1
t1=$(now)
smtp_line=$(rate SMTP "$t0" "$t1" "$W/smtp-source.time")
echo "$smtp_line"
wait_sink $((2 * MESSAGES))
awk -v a="$(awk '{print $2}' <<<"$api_line")" -v s="$(awk '{print $2}' <<<"$smtp_line")" \
    'BEGIN { printf "ratio API/SMTP: %.2f\n", a / s }'
accepted=$(grep -c ' accepted queue_id=' "$W/sealpost.log" || true)
echo "  server log: $accepted accepted; smtp-sink received $(sink_count)"
