#!/usr/bin/env bash
# `sealpost policy explain` on config/policy.example.toml for a table of recipients (text and
# --json), usage errors (exit 2), `sealpost policy reload` against a running server (a good
# file is reloaded, a bad one is refused with file:line and the server keeps running), SIGHUP
# reloads, and `policy reload` with no server says so (exit 1).
#   bash tests/interop/policy_explain.sh
set -euo pipefail
SCRIPT_NAME=policy_explain
source "$(dirname "${BASH_SOURCE[0]}")/policy_lib.sh"

need python3
[[ -x $BIN ]] || { fail binary "$BIN missing (cargo build --release)"; DONE=true; exit; }

D=$WORK
cp "$ROOT/config/policy.example.toml" "$D/policy.toml"
PORT=$(free_port)
# Every domain is routed, so explain needs no DNS (MX and MTA-STS are not consulted), and WKD
# is off: nothing leaves the machine.
cat >"$D/sealpost.toml" <<EOF
[server]
hostname = "mx.example.test"
spool_dir = "$D/spool"
[[listener]]
address = "127.0.0.1:$PORT"
mode = "relay"
[relay]
local_domains = ["example.test"]
trusted_networks = ["127.0.0.1/32"]
[[route]]
domain = "partner.example"
host = "127.0.0.1"
port = 9
[[route]]
domain = "other.example"
host = "127.0.0.1"
port = 9
[[route]]
domain = "lab.example"
host = "127.0.0.1"
port = 9
[dns]
nameservers = ["127.0.0.1:9"]
[policy]
file = "policy.toml"
wkd = false
EOF
C=$D/sealpost.toml

# explain_case NAME 'LINE REGEX'... -- ARGS...: every regex must match a line of the output.
explain_case() {
    local name=$1 out rc=0 re
    shift
    local res=()
    while [[ $1 != -- ]]; do res+=("$1"); shift; done
    shift
    out=$("$BIN" policy explain --config "$C" "$@" 2>&1) || rc=$?
    if [[ $rc -ne 0 ]]; then
        fail "explain-$name" "exit $rc: $out"
        return
    fi
    for re in "${res[@]}"; do
        if ! grep -qE "$re" <<<"$out"; then
            fail "explain-$name" "no line matching /$re/ in:"$'\n'"$out"
            return
        fi
    done
    pass "explain-$name" "${#res[@]} lines checked"
}

explain_case partner \
    '^recipient: alice@partner\.example$' \
    '^rule: phi-to-partners \(line [0-9]+\)$' \
    '^  require: encrypted$' \
    '^  methods: pgp, smime, verified-tls$' \
    '^  on_unavailable: bounce$' \
    '^  openpgp key: none$' \
    '^decision: deliver$' \
    '^  method: verified-tls \(source: rule phi-to-partners\)$' \
    '^  transport: starttls required, certificate verified$' \
    '^  - pgp: no OpenPGP key for alice@partner\.example$' \
    -- alice@partner.example
explain_case subdomain '^rule: phi-to-partners ' -- bob@eu.partner.example
explain_case header-phi \
    '^rule: marked-phi \(line [0-9]+\)$' \
    '^decision: refuse \(defer\)$' \
    '^  reason: require encrypted and no listed method is possible' \
    -- --from billing@clinic.example --header 'X-Sealpost-Sensitivity: phi' someone@other.example
explain_case subject-tag \
    '^rule: subject-secure \(line [0-9]+\)$' \
    '^  method: verified-tls \(source: rule subject-secure\)$' \
    -- --auth-user billing --header 'Subject: [secure] lab results' someone@other.example
explain_case subject-tag-unauthenticated \
    '^rule: none matched \(default: require none\)$' \
    -- --header 'Subject: [secure] lab results' someone@other.example
explain_case legacy-lab \
    '^rule: legacy-lab \(line [0-9]+\)$' \
    '^  method: tls$' \
    '^  transport: starttls required, certificate not checked$' \
    -- results@lab.example
explain_case default \
    '^rule: none matched \(default: require none\)$' \
    '^decision: deliver$' \
    '^  method: opportunistic tls$' \
    '^  transport: starttls if offered, plaintext otherwise$' \
    -- nobody@other.example
explain_case two-recipients \
    '^recipient: alice@partner\.example$' \
    '^recipient: nobody@other\.example$' \
    -- alice@partner.example nobody@other.example

if out=$("$BIN" policy explain --config "$C" --json alice@partner.example nobody@other.example 2>&1) &&
    python3 -c '
import json, sys
v = json.loads(sys.argv[1])
assert isinstance(v, list) and len(v) == 2, v
assert v[0]["recipient"] == "alice@partner.example" and v[0]["rule"]["name"] == "phi-to-partners", v[0]
assert v[1]["rule"] is None, v[1]
assert "probes" in v[0] and "decision" in v[0]
' "$out" 2>"$D/json.err"; then
    pass explain-json "array of 2 explanations"
else
    fail explain-json "$out $(tail -1 "$D/json.err")"
fi

usage() { # NAME WANT_RC ARGS...
    local name=$1 want=$2 rc=0
    shift 2
    "$BIN" "$@" >"$D/usage.out" 2>&1 || rc=$?
    if [[ $rc -eq $want ]]; then
        pass "$name" "exit $rc"
    else
        fail "$name" "exit $rc, want $want: $(head -3 "$D/usage.out" | tr '\n' ' ')"
    fi
}
usage explain-no-rcpt 2 policy explain --config "$C"
usage explain-bad-header 2 policy explain --config "$C" --header 'no colon here' a@other.example
usage explain-no-config 2 policy explain a@other.example
usage keys-remove-none 1 keys remove nobody@example.test --config "$C"
if [[ $("$BIN" keys list --config "$C") == "no keys" ]]; then
    pass keys-list-empty "no keys"
else
    fail keys-list-empty "$("$BIN" keys list --config "$C" 2>&1)"
fi

# A bad policy file: explain refuses it with file:line.
cp "$D/policy.toml" "$D/good.toml"
printf '\n[[rule]]\nname = "broken"\nrequire = "sometimes"\n' >>"$D/policy.toml"
BAD_LINE=$(grep -n 'require = "sometimes"' "$D/policy.toml" | cut -d: -f1)
rc=0
out=$("$BIN" policy explain --config "$C" a@other.example 2>&1) || rc=$?
if [[ $rc -eq 1 ]] && grep -qF "policy.toml:$BAD_LINE:" <<<"$out"; then
    pass explain-bad-policy "exit 1, $out"
else
    fail explain-bad-policy "exit $rc: $out"
fi

# No server yet: reload validates the file and says the server is not running.
rc=0
out=$("$BIN" policy reload --config "$C" 2>&1) || rc=$?
if [[ $rc -eq 1 ]] && grep -q 'not running' <<<"$out" && grep -qF "policy.toml:$BAD_LINE:" <<<"$out"; then
    pass reload-not-running "exit 1, file:line and 'not running'"
else
    fail reload-not-running "exit $rc: $out"
fi

cp "$D/good.toml" "$D/policy.toml"
if ! start_server "$C" "$D/server.log" "$PORT"; then
    fail server "did not start: $(tail -5 "$D/server.log")"; DONE=true; exit
fi
# The admin socket is bound just after the SMTP listeners.
for _ in $(seq 50); do [[ -S $D/spool/admin.sock ]] && break; sleep 0.1; done
RULES=$(grep -c '^\[\[rule\]\]' "$D/policy.toml")
rc=0
out=$("$BIN" policy reload --config "$C" 2>&1) || rc=$?
if [[ $rc -eq 0 && $out == "policy reloaded: $RULES rule(s) in force" ]]; then
    pass reload "$out"
else
    fail reload "exit $rc: $out"
fi
printf '\n[[rule]]\nname = "broken"\nrequire = "sometimes"\n' >>"$D/policy.toml"
rc=0
out=$("$BIN" policy reload --config "$C" 2>&1) || rc=$?
if [[ $rc -eq 1 ]] && grep -qF "policy.toml:$BAD_LINE:" <<<"$out" && grep -q 'previous policy stays' <<<"$out"; then
    pass reload-refused "exit 1, $out"
else
    fail reload-refused "exit $rc: $out"
fi
kill -HUP "$SERVER_PID"
if wait_log "$D/server.log" 'policy reload refused' 10 && kill -0 "$SERVER_PID" 2>/dev/null; then
    pass sighup-refused "bad file logged and refused, server still running"
else
    fail sighup-refused "$(tail -3 "$D/server.log" | tr '\n' ' ')"
fi
cp "$D/good.toml" "$D/policy.toml"
printf '\n[[rule]]\nname = "added"\nrecipients = ["x@other.example"]\nrequire = "tls"\n' >>"$D/policy.toml"
kill -HUP "$SERVER_PID"
if wait_log "$D/server.log" "policy reloaded rules=$((RULES + 1))" 10 && wait_banner "$PORT" 5; then
    pass sighup-reload "$((RULES + 1)) rules in force after SIGHUP, still answering SMTP"
else
    fail sighup-reload "$(tail -3 "$D/server.log" | tr '\n' ' ')"
fi
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
DONE=true
