#!/usr/bin/env bash
# Interop suite: Python smtplib, swaks, Postfix smtp-source/smtp-sink, kill -9 crash test,
# all against the release binary on random free ports on 127.0.0.1; then the encryption
# scripts: gpg_roundtrip.sh and openssl_roundtrip.sh (library level, via ignored cargo tests),
# policy_pgp_e2e.sh, policy_smime_e2e.sh and policy_explain.sh (release binary, policy files,
# `sealpost keys` / `sealpost policy`); schemathesis.sh fuzzes the HTTP API against
# api/openapi.yaml.
# Each check prints PASS/FAIL (or SKIP) with a reason; the last line is "N passed, M failed";
# exit status is non-zero if anything failed. With CI=true a missing tool is a failure,
# otherwise the tests needing it are skipped.
#   bash tests/interop/run.sh            # all
#   bash tests/interop/run.sh swaks load # only some: smtplib swaks load sigterm crash gpg
#                                        # openssl policy_pgp_e2e policy_smime_e2e policy_explain
#                                        # dkim_e2e schemathesis
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${SEALPOST_BIN:-$ROOT/target/release/sealpost}
CI=${CI:-false}
KEEP=${KEEP_WORKDIR:-false}
PASSED=0
FAILED=0
SKIPPED=0
PIDS=()
DONE=false
WORK=$(mktemp -d /tmp/sealpost-interop.XXXXXX)
chmod 755 "$WORK"

cleanup() {
    local rc=$? pid
    if [[ $DONE != true ]]; then
        FAILED=$((FAILED + 1))
        echo "FAIL harness: run.sh aborted (status $rc) before finishing"
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # give servers their grace period, then make sure
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP == true || $FAILED -gt 0 ]]; then
        echo "(logs kept in $WORK)" >&2
    else
        rm -rf "$WORK"
    fi
    [[ $SKIPPED -eq 0 ]] || echo "($SKIPPED skipped)"
    echo "$PASSED passed, $FAILED failed"
    [[ $FAILED -eq 0 ]] || exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { PASSED=$((PASSED + 1)); echo "PASS $1${2:+: $2}"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }
skip() { SKIPPED=$((SKIPPED + 1)); echo "SKIP $1: $2"; }

# need TEST TOOL...: true if all tools exist; otherwise FAIL (CI=true) or SKIP.
need() {
    local t=$1 tool
    shift
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$tool ]]; then
            if [[ $CI == true ]]; then
                fail "$t" "required tool '$tool' is missing (CI=true)"
            else
                skip "$t" "'$tool' not installed (apt-get install swaks postfix)"
            fi
            return 1
        fi
    done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_banner() { # PORT [TIMEOUT]
    python3 -c "import sys; sys.path.insert(0, sys.argv[1]); import common; common.wait_banner(int(sys.argv[2]), float(sys.argv[3]))" \
        "$HERE" "$1" "${2:-20}"
}

bg() { # run a command in the background, remembered for the exit trap; pid in $LAST_PID
    "$@" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# write_config FILE SPOOL LISTEN_PORT ROUTE_PORT: relay listener, trusted 127.0.0.1,
# example.test local and routed to ROUTE_PORT, MX lookups to a dead loopback resolver.
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
[dns]
nameservers = ["127.0.0.1:9"]
${5:-}
EOF
}

start_server() { # CONFIG LOG PORT
    bg "$BIN" serve --config "$1" >"$2" 2>&1
    SERVER_PID=$LAST_PID
    wait_banner "$3" 20
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

queue_count() { # CONFIG -> number of queued messages (or "error")
    "$BIN" queue list --json --config "$1" 2>/dev/null |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["messages"]))' 2>/dev/null || echo error
}

# ---------------------------------------------------------------------------------------

test_smtplib() {
    need smtplib python3 || return 0
    local out="$WORK/smtplib.out" rc=0
    bg python3 "$HERE/smtplib_starttls_auth.py" --bin "$BIN" --workdir "$WORK/smtplib" >"$out" 2>&1
    wait "$LAST_PID" || rc=$?
    count_py_output smtplib "$out" "$rc"
}

test_sigterm() {
    need sigterm python3 || return 0
    local out="$WORK/sigterm.out" rc=0
    bg python3 "$HERE/sigterm_test.py" --bin "$BIN" --workdir "$WORK/sigterm" >"$out" 2>&1
    wait "$LAST_PID" || rc=$?
    count_py_output sigterm "$out" "$rc"
}

test_crash() {
    need crash python3 || return 0
    local out="$WORK/crash.out" rc=0
    bg python3 "$HERE/crash_test.py" --bin "$BIN" --workdir "$WORK/crash" >"$out" 2>&1
    wait "$LAST_PID" || rc=$?
    count_py_output crash "$out" "$rc"
}

# run_script NAME SCRIPT: a self-contained script that prints PASS/FAIL/SKIP lines (and its own
# "N passed, M failed" summary, not counted again here).
run_script() {
    local out="$WORK/$1.out" rc=0
    bg env CI="$CI" SEALPOST_BIN="$BIN" bash "$HERE/$2" >"$out" 2>&1
    wait "$LAST_PID" || rc=$?
    count_py_output "$1" "$out" "$rc"
}

count_py_output() { # NAME OUTFILE RC
    local p f s
    cat "$2"
    p=$(grep -c '^PASS ' "$2" || true)
    f=$(grep -c '^FAIL ' "$2" || true)
    s=$(grep -c '^SKIP ' "$2" || true)
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    SKIPPED=$((SKIPPED + s))
    if [[ $3 -ne 0 && $f -eq 0 ]]; then
        fail "$1" "script exited with status $3 without reporting a failure"
    fi
}

sink_has() { # SINK_JSONL MESSAGE_ID [TIMEOUT] -> prints the number of records with that id
    python3 - "$@" <<'EOF'
import json, sys, time
path, mid = sys.argv[1], sys.argv[2]
deadline = time.time() + float(sys.argv[3] if len(sys.argv) > 3 else 15)
n = 0
while time.time() < deadline:
    try:
        n = sum(1 for l in open(path) if l.strip() and json.loads(l).get("message_id") == mid)
    except FileNotFoundError:
        n = 0
    if n:
        break
    time.sleep(0.1)
print(n)
EOF
}

test_swaks() {
    need swaks swaks python3 || return 0
    local d="$WORK/swaks" port sport
    mkdir -p "$d"
    port=$(free_port)
    sport=$(free_port)
    mkdir -p "$d/dump"
    bg python3 "$HERE/sink.py" --listen "127.0.0.1:$sport" --out "$d/sink.jsonl" --dump-dir "$d/dump"
    wait_banner "$sport" 10 || { fail sink "sink did not start"; return 0; }
    write_config "$d/sealpost.toml" "$d/spool" "$port" "$sport"
    if ! start_server "$d/sealpost.toml" "$d/server.log" "$port"; then
        fail swaks "server did not start: $(tail -5 "$d/server.log")"
        return 0
    fi

    # swaks_case NAME GREP_IN_TRANSCRIPT SWAKS_ARGS...
    swaks_case() {
        local name=$1 want=$2 mid out rc=0 n
        shift 2
        mid="<swaks-$name-$RANDOM$RANDOM@interop.example.net>"
        out="$d/$name.txt"
        swaks --server "127.0.0.1:$port" --from alice@example.net --to bob@example.test \
            --helo client.example.net --header "Message-Id: $mid" --header "Subject: swaks $name" \
            --body "interop test $name" --timeout 20 "$@" >"$out" 2>&1 || rc=$?
        if [[ $rc -ne 0 ]]; then
            fail "swaks-$name" "swaks exit $rc: $(grep -E '^ *(<|\*\*\*)' "$out" | tail -3 | tr '\n' ' ')"
            return 0
        fi
        if ! grep -qE '<[-~] +250 2\.0\.0 Ok: queued as' "$out"; then
            fail "swaks-$name" "no '250 2.0.0 Ok: queued as' in transcript ($out)"
            return 0
        fi
        if [[ -n $want ]] && ! grep -qE "$want" "$out"; then
            fail "swaks-$name" "transcript lacks /$want/ ($out)"
            return 0
        fi
        n=$(sink_has "$d/sink.jsonl" "$mid" 15)
        if [[ $n == 1 ]]; then
            pass "swaks-$name" "250 queued, delivered once ($mid)"
        else
            fail "swaks-$name" "sink has $n copies of $mid"
        fi
    }
    swaks_case plain ''
    swaks_case starttls 'TLS started' --tls
    swaks_case pipelining '250.PIPELINING' --pipeline
    if swaks --help 2>&1 | grep -q -- '--dsn-notify'; then
        swaks_case dsn '' --dsn-ret hdrs --dsn-envid "env$RANDOM" --dsn-notify FAILURE,DELAY \
            --dsn-orcpt rfc822:bob@example.test
    else
        # This swaks (Debian 12: 20201014) has no --dsn-* options; send the same DSN
        # parameters with smtplib instead.
        local mid="<dsn-$RANDOM$RANDOM@interop.example.net>" res n
        res=$(python3 - "$port" "$mid" <<'EOF'
import smtplib, sys
port, mid = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo("client.example.net")
    if not s.has_extn("dsn"):
        print("DSN not advertised in EHLO"); sys.exit()
    msg = f"From: alice@example.net\r\nTo: bob@example.test\r\nMessage-Id: {mid}\r\nSubject: dsn\r\n\r\ndsn params\r\n"
    code, text = s.mail("alice@example.net", ["RET=HDRS", "ENVID=env+2Bid42"])
    if code != 250: print(f"MAIL {code} {text.decode()}"); sys.exit()
    code, text = s.rcpt("bob@example.test", ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;bob@example.test"])
    if code != 250: print(f"RCPT {code} {text.decode()}"); sys.exit()
    code, text = s.data(msg.encode())
    print(f"{code} {text.decode()}")
EOF
        ) || true
        if [[ $res != "250 2.0.0 Ok: queued as"* ]]; then
            fail swaks-dsn "DSN-parameter send (smtplib, swaks lacks --dsn-*): $res"
        else
            n=$(sink_has "$d/sink.jsonl" "$mid" 15)
            if [[ $n == 1 ]]; then
                pass swaks-dsn "RET/ENVID/NOTIFY/ORCPT accepted via smtplib (this swaks has no --dsn-*), delivered once"
            else
                fail swaks-dsn "sink has $n copies of $mid"
            fi
        fi
    fi

    local rout="$WORK/raw.out" rc=0
    python3 "$HERE/raw_bare_lf.py" --port "$port" --sink-out "$d/sink.jsonl" --dump-dir "$d/dump" >"$rout" 2>&1 || rc=$?
    count_py_output raw "$rout" "$rc"
    local q
    q=$(queue_count "$d/sealpost.toml")
    if [[ $q == 0 ]]; then pass swaks-queue-empty "nothing left queued"; else fail swaks-queue-empty "queue: $q"; fi
    stop_pid "$SERVER_PID"
}

test_load() {
    need load smtp-source smtp-sink python3 || return 0
    local d="$WORK/load" port sport total=${LOAD_MESSAGES:-1000} t0 t1 rc=0 deadline dl acc q m
    local SRC SNK
    SRC=$(command -v smtp-source || echo /usr/sbin/smtp-source)
    SNK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
    mkdir -p "$d"
    port=$(free_port)
    sport=$(free_port)
    # -c prints "sess=N quit=N mesg=N" counters; run as user postfix (required as root).
    if [[ $(id -u) -eq 0 ]]; then
        bg "$SNK" -u postfix -c "127.0.0.1:$sport" 1000 >"$d/smtp-sink.out" 2>&1
    else
        bg "$SNK" -c "127.0.0.1:$sport" 1000 >"$d/smtp-sink.out" 2>&1
    fi
    local sink_pid=$LAST_PID
    wait_banner "$sport" 10 || { fail sink "sink did not start"; return 0; }
    write_config "$d/sealpost.toml" "$d/spool" "$port" "$sport"
    if ! start_server "$d/sealpost.toml" "$d/server.log" "$port"; then
        fail load "server did not start: $(tail -5 "$d/server.log")"
        return 0
    fi
    t0=$(date +%s.%N)
    "$SRC" -s 20 -m "$total" -l 2000 -f alice@example.net -t bob@example.test \
        "127.0.0.1:$port" >"$d/smtp-source.out" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    if [[ $rc -ne 0 ]]; then
        fail load-smtp-source "smtp-source exit $rc: $(tail -3 "$d/smtp-source.out")"
    else
        pass load-smtp-source "$total messages in 20 sessions sent in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s"
    fi
    deadline=$((SECONDS + 120))
    while :; do
        dl=$(grep -c ' delivered queue_id=' "$d/server.log" || true)
        q=$(queue_count "$d/sealpost.toml")
        [[ $dl -ge $total && $q == 0 ]] && break
        if [[ $SECONDS -ge $deadline ]]; then break; fi
        sleep 0.5
    done
    acc=$(grep -c ' accepted queue_id=' "$d/server.log" || true)
    sleep 0.3
    m=$(tr '\r' '\n' <"$d/smtp-sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2)
    if [[ $acc -eq $total && $dl -eq $total && $q == 0 && ${m:-0} -eq $total ]]; then
        pass load-all-delivered "accepted=$acc delivered=$dl smtp-sink mesg=$m queue empty"
    else
        fail load-all-delivered "accepted=$acc delivered(log)=$dl smtp-sink mesg=${m:-?} queue=$q (expected $total/$total/$total/0)"
    fi
    local deferred
    deferred=$(grep -cE ' (deferred|bounced) queue_id=' "$d/server.log" || true)
    [[ $deferred -eq 0 ]] || echo "  note: $deferred deferred/bounced log lines during the load test"
    stop_pid "$SERVER_PID"
    stop_pid "$sink_pid"
}

# ---------------------------------------------------------------------------------------

if [[ ! -x $BIN ]]; then
    echo "building the release binary ($BIN missing)"
    (cd "$ROOT" && cargo build --release)
fi
if ! command -v python3 >/dev/null; then
    echo "python3 is required" >&2
fi
echo "interop: $("$BIN" --version), workdir $WORK, CI=$CI"

TESTS=("$@")
[[ ${#TESTS[@]} -gt 0 ]] || TESTS=(smtplib swaks load sigterm crash gpg openssl policy_pgp_e2e
    policy_smime_e2e policy_explain dkim_e2e schemathesis)
for t in "${TESTS[@]}"; do
    echo "== $t"
    case $t in
    smtplib) test_smtplib ;;
    swaks) test_swaks ;;
    load) test_load ;;
    sigterm) test_sigterm ;;
    crash) test_crash ;;
    gpg) run_script gpg gpg_roundtrip.sh ;;
    openssl) run_script openssl openssl_roundtrip.sh ;;
    policy_pgp_e2e) run_script policy_pgp_e2e policy_pgp_e2e.sh ;;
    policy_smime_e2e) run_script policy_smime_e2e policy_smime_e2e.sh ;;
    policy_explain) run_script policy_explain policy_explain.sh ;;
    dkim_e2e) run_script dkim_e2e dkim_e2e.sh ;;
    schemathesis) run_script schemathesis schemathesis.sh ;;
    *) fail "$t" "unknown test name" ;;
    esac
done

DONE=true
# cleanup (EXIT trap) stops everything, prints "N passed, M failed" and sets the status.
