# Shared helpers for the policy interop scripts (policy_pgp_e2e.sh, policy_smime_e2e.sh,
# policy_explain.sh). Sourced, not run. Everything listens on 127.0.0.1 only.
# Each check prints "PASS name: why" or "FAIL name: why"; the EXIT trap stops every process
# started with `bg`, prints "N passed, M failed" and exits non-zero if anything failed.
# With CI=true a missing tool is a failure; otherwise the script prints SKIP and exits 0.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${SEALPOST_BIN:-$ROOT/target/release/sealpost}
CI=${CI:-false}
KEEP=${KEEP_WORKDIR:-false}
PASSED=0
FAILED=0
PIDS=()
DONE=false
WORK=$(mktemp -d "/tmp/sealpost-${SCRIPT_NAME:-policy}.XXXXXX")

cleanup() {
    local rc=$? pid
    if [[ $DONE != true ]]; then
        FAILED=$((FAILED + 1))
        echo "FAIL harness: script aborted (status $rc) before finishing"
    fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${GNUPGHOME:-} ]]; then gpgconf --kill all >/dev/null 2>&1 || true; fi
    if [[ $KEEP == true || $FAILED -gt 0 ]]; then
        echo "(work dir kept: $WORK)" >&2
    else
        rm -rf "$WORK"
    fi
    echo "$PASSED passed, $FAILED failed"
    [[ $FAILED -eq 0 ]] || exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { PASSED=$((PASSED + 1)); echo "PASS $1${2:+: $2}"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }

# need TOOL...: every tool must exist; otherwise FAIL (CI=true) or SKIP, and the script ends.
need() {
    local tool
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            if [[ $CI == true ]]; then
                fail "${SCRIPT_NAME:-policy}" "required tool '$tool' is missing (CI=true)"
            else
                echo "SKIP ${SCRIPT_NAME:-policy}: '$tool' not installed"
            fi
            DONE=true
            exit
        fi
    done
}

bg() { # run a command in the background, stopped by the EXIT trap; pid in $LAST_PID
    "$@" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_banner() { # PORT [TIMEOUT]
    python3 -c "import sys; sys.path.insert(0, sys.argv[1]); import common; common.wait_banner(int(sys.argv[2]), float(sys.argv[3]))" \
        "$HERE" "$1" "${2:-20}"
}

# start_sink DIR: the Python sink on a free port, records in DIR/sink.jsonl, bodies in DIR/dump.
start_sink() {
    mkdir -p "$1/dump"
    SINK_PORT=$(free_port)
    bg python3 "$HERE/sink.py" --listen "127.0.0.1:$SINK_PORT" --out "$1/sink.jsonl" --dump-dir "$1/dump"
    wait_banner "$SINK_PORT" 10
}

# write_config FILE SPOOL LISTEN_PORT SINK_PORT: relay listener, example.test local; both
# example.test and example.net routed to the sink (DSNs to alice@example.net land there too);
# MX lookups go to a dead loopback resolver and WKD is off (nothing leaves the machine). The
# policy file is policy.toml beside FILE and the
# keys live in keys/ beside FILE (both relative paths, resolved against the config's directory).
write_config() {
    cat >"$1" <<EOF
[server]
hostname = "mx.example.test"
spool_dir = "$2"
[[listener]]
address = "127.0.0.1:$3"
mode = "relay"
[relay]
local_domains = ["example.test"]
trusted_networks = ["127.0.0.1/32"]
[[route]]
domain = "example.test"
host = "127.0.0.1"
port = $4
[[route]]
domain = "example.net"
host = "127.0.0.1"
port = $4
[dns]
nameservers = ["127.0.0.1:9"]
[policy]
file = "policy.toml"
wkd = false
[keys]
dir = "keys"
EOF
}

start_server() { # CONFIG LOG PORT
    bg "$BIN" serve --config "$1" >"$2" 2>&1
    SERVER_PID=$LAST_PID
    wait_banner "$3" 20
}

# send PORT FROM RCPT FILE: sends FILE's bytes unchanged with smtplib; prints the final reply.
send() {
    python3 - "$@" <<'EOF'
import smtplib, sys
port, sender, rcpt, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
data = open(path, "rb").read()
try:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.example.net")
        code, text = s.mail(sender)
        if code != 250: print(f"MAIL {code} {text.decode()}"); sys.exit()
        code, text = s.rcpt(rcpt)
        if code != 250: print(f"RCPT {code} {text.decode()}"); sys.exit()
        code, text = s.data(data)
        print(f"{code} {text.decode()}")
except Exception as e:
    print(f"error: {e}")
EOF
}

# dump_of SINK_DIR MESSAGE_ID [TIMEOUT]: waits for the sink to record that Message-ID and
# prints the path of the dumped body (empty if it never came).
dump_of() {
    python3 - "$@" <<'EOF'
import json, os, sys, time
d, mid = sys.argv[1], sys.argv[2]
deadline = time.time() + float(sys.argv[3] if len(sys.argv) > 3 else 20)
while time.time() < deadline:
    try:
        for i, l in enumerate(open(os.path.join(d, "sink.jsonl")), 1):
            if l.strip() and json.loads(l).get("message_id") == mid:
                print(os.path.join(d, "dump", f"{i:06d}.eml")); sys.exit()
    except FileNotFoundError:
        pass
    time.sleep(0.1)
EOF
}

# wait_log FILE REGEX [TIMEOUT]: true once a line of FILE matches REGEX.
wait_log() {
    local deadline=$((SECONDS + ${3:-20}))
    while [[ $SECONDS -lt $deadline ]]; do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# make_message FILE MESSAGE_ID TO MARKER: a message with explicit Content-* fields and CRLF
# line ends; writes FILE.inner-pgp and FILE.inner-smime, the entities each method must
# recover byte-exact (src/crypto/mime.rs inner_entity; the S/MIME side is the same here
# because the message has Content-* fields: those fields, the empty line, the body).
make_message() {
    local body="Hello,\r\n\r\nthe code word is $4.\r\nLine with trailing spaces   \r\n..and a line starting with dots\r\n"
    printf "From: Alice <alice@example.net>\r\nTo: <%s>\r\nSubject: policy interop\r\nMessage-ID: %s\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n$body" \
        "$3" "$2" >"$1"
    printf "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n$body" >"$1.inner-pgp"
    cp "$1.inner-pgp" "$1.inner-smime"
}

# check_refused NAME SINK_DIR LOG RCPT MARKER: the policy bounced RCPT: the server logged it as
# bounced with 5.7.1, the sender got a DSN (routed to the sink), no copy went to RCPT, and
# the MARKER text never reached the sink in any message.
check_refused() {
    local name=$1 d=$2 log=$3 rcpt=$4 marker=$5 n
    if ! wait_log "$log" "rcpt=$rcpt .*550 5\.7\.1 policy .*bounced|bounced.*rcpt=$rcpt" 20; then
        fail "$name" "no 'bounced' log line for $rcpt: $(grep -F "$rcpt" "$log" | tail -2 | tr '\n' ' ')"
        return
    fi
    if ! wait_log "$d/sink.jsonl" '"mail_from": "", "rcpts": \["alice@example.net"\]' 20; then
        fail "$name" "no DSN to alice@example.net reached the sink"
        return
    fi
    sleep 0.5
    n=$(grep -c "\"$rcpt\"" "$d/sink.jsonl" || true)
    if [[ $n -ne 0 ]]; then
        fail "$name" "the sink got $n message(s) for $rcpt"
        return
    fi
    if grep -rlqF "$marker" "$d/dump"; then
        fail "$name" "the plaintext ($marker) reached the sink: $(grep -rlF "$marker" "$d/dump")"
        return
    fi
    if ! grep -rqlE '5\.7\.1' "$d/dump"; then
        fail "$name" "the DSN does not carry the 5.7.1 status"
        return
    fi
    pass "$name" "$rcpt bounced by policy (550 5.7.1 logged, DSN to the sender), no plaintext copy at the sink"
}
