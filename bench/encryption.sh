#!/usr/bin/env bash
# Relay throughput with per-recipient encryption, plain vs PGP/MIME vs S/MIME, in one run:
#   smtp-source (20 sessions) -> sealpost on 127.0.0.1 -> smtp-sink on 127.0.0.1
# For each size (10 KB and 100 KB by default) and each case it starts a fresh sealpost with a
# policy that forces the case's method for the sink's domain, sends MESSAGES messages and
# measures
#   accepted:   messages / wall time of smtp-source (every message got its 250)
#   end-to-end: messages / time from the start until smtp-sink has received all of them
# ROUNDS times (the order of the cases rotating each round, so none always runs first), then
# prints the median of each case and the encrypted/plain ratios of the median end-to-end
# rates: one loaded or noisy round cannot decide the ratio. The delivery log is checked:
# every message of an encrypted case must have been delivered with that method.
#
# Keys: an OpenPGP key made by `gpg --quick-gen-key` (GnuPG's defaults) and an RSA-2048
# certificate made by `openssl req`, both for bob@example.test, written into the key stores as
# the server reads them (keys_dir/pgp/<FPR>.pgp armored, keys_dir/smime/<sha256>.pem).
#
# usage: bench/encryption.sh [MESSAGES [SIZES [ROUNDS]]]
#        defaults: 3000 messages per case, SIZES "10240 102400", 3 rounds, 20 sessions
# env:   SEALPOST_BIN (default target/release/sealpost), SESSIONS (20),
#        SEALPOST_CONCURRENCY (outbound concurrency, 20), CASES ("plain pgp smime"),
#        SOURCE_OPTS (extra smtp-source flags), KEEP_WORKDIR=true,
#        PGP_KEY_ALGO (gpg --quick-gen-key algo: "default" = RSA-3072 on GnuPG 2.2,
#        "future-default" = Ed25519/Curve25519)
# needs: root (smtp-sink -u postfix), smtp-source, smtp-sink, gpg, openssl, python3.
set -euo pipefail
# Measure what production runs: a developer's RUST_BACKTRACE=1 makes every library error
# (sequoia uses them in normal control flow) capture a backtrace, which costs real CPU.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

MESSAGES=${1:-3000}
SIZES=${2:-"10240 102400"}
ROUNDS=${3:-3}
SESSIONS=${SESSIONS:-20}
CONC=${SEALPOST_CONCURRENCY:-20}
CASES=${CASES:-"plain pgp smime"}
SOURCE_OPTS=${SOURCE_OPTS:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SEALPOST_BIN:-$ROOT/target/release/sealpost}
SRC=$(command -v smtp-source || echo /usr/sbin/smtp-source)
SNK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
for t in "$SRC" "$SNK" "$BIN"; do
    [[ -x $t ]] || { echo "missing $t (apt-get install postfix; cargo build --release)" >&2; exit 2; }
done
for t in gpg openssl python3 sha256sum; do
    command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }
done
[[ $(id -u) -eq 0 ]] || { echo "run as root (smtp-sink -u postfix)" >&2; exit 2; }

W=$(mktemp -d /tmp/sealpost-bench-enc.XXXXXX)
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
    if [[ -n ${GNUPGHOME:-} ]]; then gpgconf --kill all >/dev/null 2>&1 || true; fi
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

# --- keys --------------------------------------------------------------------------------------
KEYS=$W/keys
mkdir -p "$KEYS/pgp" "$KEYS/smime"
export GNUPGHOME=$W/gnupg
mkdir -m 700 "$GNUPGHOME"
# PGP_KEY_ALGO=future-default makes an Ed25519/Curve25519 key (GnuPG 2.3+'s default) instead
# of GnuPG 2.2's RSA-3072; RSA encryption in pure Rust (~0.45 ms per RSA-3072 operation here)
# is most of PGP's cost.
gpg --batch --quiet --passphrase '' --quick-gen-key 'Bob <bob@example.test>' "${PGP_KEY_ALGO:-default}" default never 2>/dev/null
FPR=$(gpg --with-colons --fingerprint bob@example.test | awk -F: '$1 == "fpr" { print $10; exit }')
gpg --armor --export bob@example.test >"$KEYS/pgp/$FPR.pgp"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/smime.key" -out "$W/smime.pem" -days 365 \
    -subj "/CN=Bob/emailAddress=bob@example.test" \
    -addext "subjectAltName=email:bob@example.test" \
    -addext "keyUsage=critical,keyEncipherment,digitalSignature" \
    -addext "extendedKeyUsage=emailProtection" 2>/dev/null
SHA=$(openssl x509 -in "$W/smime.pem" -outform DER | sha256sum | cut -d' ' -f1)
cp "$W/smime.pem" "$KEYS/smime/$SHA.pem"
PGP_ALGO=$(gpg --with-colons --list-keys bob@example.test | awk -F: '$1 == "sub" { print "algo " $4 ", " $3 " bits"; exit }')

SINK_PORT=$(free_port)
SP_PORT=$(free_port)
"$SNK" -u postfix -c -m 512 "127.0.0.1:$SINK_PORT" 1024 >"$W/smtp-sink.out" 2>&1 &
PIDS+=($!)
wait_banner "$SINK_PORT" 10

# write_config CASE -> $W/sealpost.toml and $W/policy.toml
write_config() {
    local methods
    case $1 in
        plain) methods="" ;;
        pgp) methods='["pgp"]' ;;
        smime) methods='["smime"]' ;;
    esac
    if [[ -n $methods ]]; then
        cat >"$W/policy.toml" <<EOF
[[rule]]
name = "bench-$1"
recipient_domains = ["example.test"]
require = "encrypted"
methods = $methods
on_unavailable = "bounce"
EOF
    else
        : >"$W/policy.toml"
    fi
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
[policy]
file = "$W/policy.toml"
wkd = false
[keys]
dir = "$KEYS"
EOF
    "$BIN" check-config --config "$W/sealpost.toml" >/dev/null
}

# run_case CASE SIZE -> appends "CASE SIZE accepted_rate e2e_rate" to $W/results
run_case() {
    local name=$1 size=$2 base t0 t1 t2 n rc=0 deadline label delivered
    write_config "$name"
    rm -rf "$W/sealpost-spool"
    : >"$W/sealpost.log"
    RUST_LOG=info "$BIN" serve --config "$W/sealpost.toml" >>"$W/sealpost.log" 2>&1 &
    SP_PID=$!
    PIDS+=("$SP_PID")
    wait_banner "$SP_PORT" 30
    base=$(sink_count)
    base=${base:-0}
    t0=$(now)
    # shellcheck disable=SC2086
    "$SRC" -s "$SESSIONS" -m "$MESSAGES" -l "$size" $SOURCE_OPTS -f alice@example.net \
        -t bob@example.test "127.0.0.1:$SP_PORT" >"$W/smtp-source.out" 2>&1 || rc=$?
    t1=$(now)
    if [[ $rc -ne 0 ]]; then
        echo "smtp-source failed ($rc): $(tail -3 "$W/smtp-source.out")" >&2
        exit 1
    fi
    deadline=$((SECONDS + 900))
    while :; do
        n=$(sink_count)
        n=$(( ${n:-0} - base ))
        [[ $n -ge $MESSAGES ]] && break
        if [[ $SECONDS -ge $deadline ]]; then
            echo "$name/$size: only $n of $MESSAGES reached smtp-sink within 900 s" >&2
            tail -5 "$W/sealpost.log" >&2
            exit 1
        fi
        sleep 0.05
    done
    t2=$(now)
    kill "$SP_PID" 2>/dev/null || true
    wait "$SP_PID" 2>/dev/null || true
    case $name in
        plain) label=opportunistic-tls ;;
        pgp) label=openpgp ;;
        smime) label=smime ;;
    esac
    delivered=$(grep -cE "method=\"?$label\"?( |$)" "$W/sealpost.log" || true)
    if [[ ${delivered:-0} -lt $MESSAGES ]]; then
        echo "$name/$size: only ${delivered:-0} of $MESSAGES deliveries logged with method=$label" >&2
        grep -m3 -E "WARN|ERROR" "$W/sealpost.log" >&2 || true
        exit 1
    fi
    awk -v n="$MESSAGES" -v name="$name" -v size="$size" -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {
        printf "%-6s %7d B   accepted %8.1f msg/s (%6.2f s)   end-to-end %8.1f msg/s (%6.2f s)\n",
            name, size, n/(b-a), b-a, n/(c-a), c-a
        printf "%s %s %f %f\n", name, size, n/(b-a), n/(c-a) >> "'"$W/results"'" }'
}

echo "encryption relay benchmark: $MESSAGES messages per case, $SESSIONS sessions, sizes $SIZES, $ROUNDS rounds"
echo "  $("$BIN" --version) (outbound concurrency $CONC), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  keys: OpenPGP from $(gpg --version | head -1) (encryption subkey $PGP_ALGO), S/MIME RSA-2048 from $(openssl version | cut -d' ' -f1-2)"
echo "  smtp-source -> sealpost (127.0.0.1:$SP_PORT) -> smtp-sink (127.0.0.1:$SINK_PORT) ${SOURCE_OPTS:+[smtp-source $SOURCE_OPTS]}"
: >"$W/results"
read -r -a case_list <<<"$CASES"
for r in $(seq "$ROUNDS"); do
    echo "round $r"
    for size in $SIZES; do
        for i in "${!case_list[@]}"; do
            run_case "${case_list[$(( (i + r - 1) % ${#case_list[@]} ))]}" "$size"
        done
    done
done

awk '
function median(list,   n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
{ k = $1 " " $2; acc[k] = acc[k] " " $3; e2e[k] = e2e[k] " " $4
  if (!($2 in seen)) { seen[$2] = 1; sizes[++ns] = $2 }
  if (!($1 in cseen)) { cseen[$1] = 1; cases[++nc] = $1 } }
END {
    for (i = 1; i <= ns; i++) for (c = 1; c <= nc; c++) {
        k = cases[c] " " sizes[i]
        if (acc[k] == "") continue
        ma[k] = median(acc[k]); me[k] = median(e2e[k])
        printf "median %-6s %7d B   accepted %8.1f msg/s   end-to-end %8.1f msg/s\n", cases[c], sizes[i], ma[k], me[k]
    }
    for (i = 1; i <= ns; i++) {
        s = sizes[i]; p = me["plain " s]
        if (p == "") continue
        for (k = 1; k <= 2; k++) {
            c = (k == 1) ? "pgp" : "smime"
            if (me[c " " s] == "") continue
            r = me[c " " s] / p
            printf "ratio %-5s/plain at %7d B: end-to-end %.2f (encryption costs %.0f%%), accepted %.2f\n",
                c, s, r, 100 * (1 - r), ma[c " " s] / ma["plain " s]
        }
    }
}' "$W/results"
