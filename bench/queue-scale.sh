#!/usr/bin/env bash
# Queue at scale: fill the spool with MESSAGES small messages while the destination, an
# smtp-sink started with `-r rcpt`, answers every RCPT TO with a 4xx (so each message gets one
# attempt and is deferred), report the server's RSS with them all queued, then replace it with
# an accepting smtp-sink on the same port and measure how fast the queue drains.
#   smtp-source (SESSIONS sessions) -> sealpost on 127.0.0.1 -> smtp-sink -r rcpt, then smtp-sink
# Retries are set to 60..120 s ([queue] min/max_retry_secs) so the drain starts within two
# minute of the sink coming up. The spool lives under /tmp on the same disk as the repo.
#
# usage: bench/queue-scale.sh [MESSAGES [SIZE_BYTES]]     defaults: 1000000 messages, 512 bytes
# env:   SEALPOST_BIN, SESSIONS (20)
# needs: root (smtp-sink -u postfix), smtp-source and smtp-sink (Debian's postfix), python3.
set -euo pipefail
# Measure what production runs: a developer's RUST_BACKTRACE=1 makes every library error
# (sequoia uses them in normal control flow) capture a backtrace, which costs real CPU.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

MESSAGES=${1:-1000000}
SIZE=${2:-512}
SESSIONS=${SESSIONS:-20}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SEALPOST_BIN:-$ROOT/target/release/sealpost}
SRC=$(command -v smtp-source || echo /usr/sbin/smtp-source)
SNK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
for t in "$SRC" "$SNK" "$BIN"; do
    [[ -x $t ]] || { echo "missing $t (apt-get install postfix; cargo build --release)" >&2; exit 2; }
done
[[ $(id -u) -eq 0 ]] || { echo "run as root (smtp-sink -u postfix)" >&2; exit 2; }

W=$(mktemp -d /tmp/sealpost-qscale.XXXXXX)
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
wait_banner() {
    python3 - "$1" <<'EOF'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.time() + 30
while time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n"); sys.exit(0)
    except OSError:
        pass
    time.sleep(0.05)
sys.exit(f"nothing answered on 127.0.0.1:{port}")
EOF
}
rss_mb() { awk '/^VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
hwm_mb() { awk '/^VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
sink_count() { tr '\r' '\n' <"$W/smtp-sink.out" 2>/dev/null | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 || true; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

PORT=$(free_port)
SINK_PORT=$(free_port)
cat >"$W/sealpost.toml" <<EOF
[server]
hostname = "mx.example.test"
spool_dir = "$W/spool"
max_connections = 1000
[[listener]]
address = "127.0.0.1:$PORT"
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
connect_timeout_secs = 2
[queue]
min_retry_secs = 600
max_retry_secs = 3600
[suppression]
enabled = false
EOF
"$BIN" serve --config "$W/sealpost.toml" >"$W/server.log" 2>&1 &
SP=$!
PIDS+=("$SP")
wait_banner "$PORT"
"$SNK" -u postfix -c -r rcpt -m 512 "127.0.0.1:$SINK_PORT" 1024 >"$W/tempfail-sink.out" 2>&1 &
TEMPFAIL=$!
PIDS+=("$TEMPFAIL")
wait_banner "$SINK_PORT"
echo "sealpost $("$BIN" --version | cut -d' ' -f2): $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, destination tempfailing every RCPT (smtp-sink -r rcpt)"

T0=$(now)
"$SRC" -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -d -f alice@example.net -t bob@example.test \
    "127.0.0.1:$PORT" >"$W/smtp-source.out" 2>&1
INJECT=$(since "$T0")
sleep 5
RSS=$(rss_mb "$SP")
HWM=$(hwm_mb "$SP")
DISK=$(du -sm "$W/spool" | cut -f1)
echo "injected in ${INJECT} s ($(awk -v n="$MESSAGES" -v t="$INJECT" 'BEGIN{printf "%.0f", n/t}') msg/s accepted, durable)"
DEFERRED=$(grep -c 'deferred' "$W/server.log" || true)
echo "queued: RSS ${RSS} MB now, peak ${HWM} MB; spool ${DISK} MB on disk; ${DEFERRED} deferral log lines"
kill "$TEMPFAIL" 2>/dev/null || true
wait "$TEMPFAIL" 2>/dev/null || true

"$SNK" -u postfix -c -m 512 "127.0.0.1:$SINK_PORT" 1024 >"$W/smtp-sink.out" 2>&1 &
PIDS+=($!)
wait_banner "$SINK_PORT"
T1=$(now)
"$BIN" queue flush --config "$W/sealpost.toml"
LAST_N=0
LAST_CHANGE=$SECONDS
while :; do
    n=$(sink_count)
    n=${n:-0}
    [[ $n -ge $MESSAGES ]] && break
    if [[ $n -ne $LAST_N ]]; then LAST_N=$n; LAST_CHANGE=$SECONDS; fi
    if (( SECONDS - LAST_CHANGE > 180 )); then
        echo "stalled at $n of $MESSAGES delivered" >&2
        break
    fi
    sleep 1
done
PEAK=$(hwm_mb "$SP")
echo "drained ${n} messages in $(since "$T1") s after the flush ($(awk -v n="$n" -v t="$(since "$T1")" 'BEGIN{printf "%.0f", n/t}') msg/s)"
echo "peak RSS over the whole run: ${PEAK} MB"
