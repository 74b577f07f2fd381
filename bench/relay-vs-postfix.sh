#!/usr/bin/env bash
# Relay throughput, Sealpost vs Postfix, in the same run on the same machine:
#   smtp-source (20 sessions) -> MTA on 127.0.0.1 -> smtp-sink on 127.0.0.1
# Rounds alternate sealpost, postfix, sealpost, postfix, ... For each round it measures
#   accepted:   messages / wall time of smtp-source (every message got its 250)
#   end-to-end: messages / time from the start until smtp-sink has received all of them
# and prints per-round figures, the medians and the sealpost/postfix ratios.
# Both MTAs flush the message to disk before the 250 (Postfix's cleanup fsyncs by default).
#
# usage: bench/relay-vs-postfix.sh [MESSAGES [SIZE_BYTES [ROUNDS_EACH]]]
#        defaults: 5000 messages, 10240 bytes, 2 rounds each, 20 sessions (SESSIONS=...)
# env:   SEALPOST_BIN (default target/release/sealpost), SESSIONS (20),
#        SEALPOST_CONCURRENCY (outbound concurrency, 20 = Postfix's destination limit),
#        SOURCE_OPTS (extra smtp-source flags, e.g. "-d" to keep sessions open),
#        SEALPOST_EXTRA (TOML appended to sealpost's config, e.g. $'[audit]\nenabled = false')
# needs: root (smtp-sink -u postfix, private Postfix instance), smtp-source, smtp-sink,
#        postfix, python3. Only 127.0.0.1 is used.
set -euo pipefail
# Measure what production runs: a developer's RUST_BACKTRACE=1 makes every library error
# (sequoia uses them in normal control flow) capture a backtrace, which costs real CPU.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

MESSAGES=${1:-5000}
SIZE=${2:-10240}
ROUNDS=${3:-2}
SESSIONS=${SESSIONS:-20}
CONC=${SEALPOST_CONCURRENCY:-20}
SOURCE_OPTS=${SOURCE_OPTS:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SEALPOST_BIN:-$ROOT/target/release/sealpost}
SRC=$(command -v smtp-source || echo /usr/sbin/smtp-source)
SNK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
PF=$(command -v postfix || echo /usr/sbin/postfix)
for t in "$SRC" "$SNK" "$PF" "$BIN"; do
    [[ -x $t ]] || { echo "missing $t (apt-get install postfix; cargo build --release)" >&2; exit 2; }
done
[[ $(id -u) -eq 0 ]] || { echo "run as root (smtp-sink -u postfix, private postfix instance)" >&2; exit 2; }

W=$(mktemp -d /tmp/sealpost-bench.XXXXXX)
chmod 755 "$W"
PIDS=()
PFDIR=$W/postfix
PF_RUNNING=false

cleanup() {
    if [[ $PF_RUNNING == true ]]; then "$PF" -c "$PFDIR/etc" stop >/dev/null 2>&1 || true; fi
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
    python3 - "$1" "${2:-30}" <<'EOF'
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
EOF
}
now() { date +%s.%N; }
sink_count() { tr '\r' '\n' <"$W/smtp-sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 || true; }

SINK_PORT=$(free_port)
SP_PORT=$(free_port)
PF_PORT=$(free_port)

# One smtp-sink for all rounds (counts are taken as deltas), as user postfix.
"$SNK" -u postfix -c -m 512 "127.0.0.1:$SINK_PORT" 1024 >"$W/smtp-sink.out" 2>&1 &
PIDS+=($!)
wait_banner "$SINK_PORT" 10

# --- sealpost -----------------------------------------------------------------------------
cat >"$W/sealpost.toml" <<EOF
[server]
hostname = "mx.sealpost.bench.test"
spool_dir = "$W/sealpost-spool"
[[listener]]
address = "127.0.0.1:$SP_PORT"
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
concurrency = $CONC
${SEALPOST_EXTRA:-}
EOF
"$BIN" check-config --config "$W/sealpost.toml" >/dev/null

start_sealpost() {
    rm -rf "$W/sealpost-spool"
    "$BIN" serve --config "$W/sealpost.toml" >>"$W/sealpost.log" 2>&1 &
    SP_PID=$!
    PIDS+=("$SP_PID")
    wait_banner "$SP_PORT" 30
}
stop_sealpost() {
    kill "$SP_PID" 2>/dev/null || true
    wait "$SP_PID" 2>/dev/null || true
}

# --- postfix: private instance, own config and queue, loopback only ----------------------
mkdir -p "$PFDIR/etc" "$PFDIR/queue" "$PFDIR/data" "$PFDIR/log"
chown postfix "$PFDIR/data" "$PFDIR/log"
cat >"$PFDIR/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PFDIR/queue
data_directory = $PFDIR/data
maillog_file_prefixes = $PFDIR/log
maillog_file = $PFDIR/log/maillog
syslog_name = postfix-bench
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.postfix.bench.test
mydomain = postfix.bench.test
myorigin = \$myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
local_transport = error:5.1.1 no local delivery in this benchmark instance
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [127.0.0.1]:$SINK_PORT
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
default_destination_concurrency_limit = 20
smtp_destination_concurrency_limit = 20
smtpd_tls_security_level = none
smtp_tls_security_level = none
biff = no
EOF
cat >"$PFDIR/etc/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF

start_postfix() {
    "$PF" -c "$PFDIR/etc" start-fg >>"$PFDIR/start-fg.log" 2>&1 &
    PF_PID=$!
    PIDS+=("$PF_PID")
    PF_RUNNING=true
    if ! wait_banner "$PF_PORT" 30; then
        echo "postfix did not start:" >&2
        tail -n 20 "$PFDIR/start-fg.log" "$PFDIR/log/maillog" >&2 || true
        exit 1
    fi
}
stop_postfix() {
    "$PF" -c "$PFDIR/etc" stop >/dev/null 2>&1 || true
    wait "$PF_PID" 2>/dev/null || true
    PF_RUNNING=false
}

# run_round NAME PORT -> appends "NAME accepted_rate e2e_rate" to $W/results
run_round() {
    local name=$1 port=$2 base t0 t1 t2 n rc=0 deadline
    base=$(sink_count)
    base=${base:-0}
    t0=$(now)
    # shellcheck disable=SC2086
    "$SRC" -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" $SOURCE_OPTS -f alice@example.net \
        -t bob@example.test "127.0.0.1:$port" >"$W/smtp-source.$name.out" 2>&1 || rc=$?
    t1=$(now)
    if [[ $rc -ne 0 ]]; then
        echo "smtp-source against $name failed ($rc): $(tail -3 "$W/smtp-source.$name.out")" >&2
        exit 1
    fi
    deadline=$((SECONDS + 600))
    while :; do
        n=$(sink_count)
        n=$(( ${n:-0} - base ))
        [[ $n -ge $MESSAGES ]] && break
        if [[ $SECONDS -ge $deadline ]]; then
            echo "$name: only $n of $MESSAGES reached smtp-sink within 600 s" >&2
            exit 1
        fi
        sleep 0.05
    done
    t2=$(now)
    awk -v n="$MESSAGES" -v name="$name" -v a="$t0" -v b="$t1" -v c="$t2" -v got="$n" 'BEGIN {
        printf "%-9s accepted %8.1f msg/s (%6.2f s)   end-to-end %8.1f msg/s (%6.2f s)   sink got %d\n",
            name, n/(b-a), b-a, n/(c-a), c-a, got }'
    awk -v n="$MESSAGES" -v name="$name" -v a="$t0" -v b="$t1" -v c="$t2" \
        'BEGIN { printf "%s %f %f\n", name, n/(b-a), n/(c-a) }' >>"$W/results"
}

echo "relay benchmark: $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, $ROUNDS rounds each"
echo "  $("$BIN" --version) (outbound concurrency $CONC), postfix $(postconf -d -h mail_version), $(nproc) cores"
echo "  smtp-source -> MTA (127.0.0.1) -> smtp-sink (127.0.0.1:$SINK_PORT) ${SOURCE_OPTS:+[smtp-source $SOURCE_OPTS]}"
for r in $(seq "$ROUNDS"); do
    start_sealpost
    run_round sealpost "$SP_PORT"
    stop_sealpost
    start_postfix
    run_round postfix "$PF_PORT"
    stop_postfix
done

awk '
function median(arr, k,   i, j, t) {
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
    return (k % 2) ? arr[(k + 1) / 2] : (arr[k / 2] + arr[k / 2 + 1]) / 2
}
$1 == "sealpost" { sa[++ns] = $2; se[ns] = $3 }
$1 == "postfix"  { pa[++np] = $2; pe[np] = $3 }
END {
    msa = median(sa, ns); mse = median(se, ns); mpa = median(pa, np); mpe = median(pe, np)
    printf "median    sealpost: accepted %.1f msg/s, end-to-end %.1f msg/s\n", msa, mse
    printf "median    postfix:  accepted %.1f msg/s, end-to-end %.1f msg/s\n", mpa, mpe
    printf "ratio sealpost/postfix: accepted %.2f, end-to-end %.2f\n", msa / mpa, mse / mpe
}' "$W/results"
