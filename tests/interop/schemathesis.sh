#!/usr/bin/env bash
# schemathesis (PyPI) fuzzes the HTTP API against its own OpenAPI document, loaded from the
# running release server at GET /v1/openapi.yaml: every operation, positive and negative
# data, every check (`--checks all`: no 5xx, status codes, content types, headers and bodies
# as documented, schema-valid data accepted, invalid data refused, auth not ignored, 405
# with Allow for undocumented methods...), then the server log must hold no panic or error.
# It authenticates with an API client made by `sealpost api-clients add ... --json` (HTTP
# Basic with its id and secret). Any failure is a FAIL. About 1 minute with the default 40
# examples per operation.
#
# Nothing leaves the machine: the generated recipient domains would need DNS, and the only
# resolver configured is a dead loopback port, so their mail stays queued; outgoing
# connections are bound to 127.0.0.1, which the kernel refuses to route anywhere but
# loopback (address literals like [192.0.2.1]; IPv6 ones fail the source-family check
# before connecting); MX connections go to a loopback sink
# port; WKD is off. Webhooks: `[events] webhook_allowed_hosts = ["127.0.0.1"]`, so the
# server refuses (400) any other webhook URL the fuzzer makes up and the dispatcher checks
# it again before each POST: nothing is resolved, and the only POSTs go to 127.0.0.1:9, where
# nothing listens (the hooks point valid requests' URLs there).
#   bash tests/interop/schemathesis.sh         # SCHEMATHESIS_EXAMPLES=N to change the size
set -euo pipefail
SCRIPT_NAME=schemathesis
source "$(dirname "${BASH_SOURCE[0]}")/policy_lib.sh"

need python3 schemathesis
[[ -x $BIN ]] || { fail binary "$BIN missing (cargo build --release)"; DONE=true; exit; }
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-40}
D=$WORK
cd "$D"

start_sink "$D" || { fail sink "did not start"; DONE=true; exit; }
PORT=$(free_port)
API_PORT=$(free_port)
cat >"$D/sealpost.toml" <<EOC
[server]
hostname = "mx.example.test"
spool_dir = "$D/spool"
[[listener]]
address = "127.0.0.1:$PORT"
mode = "relay"
[relay]
local_domains = ["example.test"]
trusted_networks = ["127.0.0.1/32"]
[dns]
nameservers = ["127.0.0.1:9"]
[outbound]
smtp_port = $SINK_PORT
source_address = "127.0.0.1"
connect_timeout_secs = 2
[policy]
wkd = false
[[class]]
name = "transactional"
[events]
webhook_allowed_hosts = ["127.0.0.1"]
[api]
address = "127.0.0.1:$API_PORT"
# schemathesis sends many requests with wrong credentials on purpose (the ignored_auth
# check); the default limit of 10 a minute would turn the rest of the run into 429s.
max_auth_failures_per_minute = 1000000
EOC
if ! out=$("$BIN" check-config --config "$D/sealpost.toml" 2>&1); then
    fail check-config "$out"; DONE=true; exit
fi
if ! start_server "$D/sealpost.toml" "$D/server.log" "$PORT"; then
    fail server "did not start: $(tail -5 "$D/server.log")"; DONE=true; exit
fi
CLIENT=$("$BIN" api-clients add fuzzer --scopes send,read,admin --config "$D/sealpost.toml" --json)
KEY=$(python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["client_id"] + ":" + c["client_secret"])' <<<"$CLIENT")
BASE="http://127.0.0.1:$API_PORT"
if python3 -c 'import sys, urllib.request as u; r = u.urlopen(sys.argv[1], timeout=10); assert r.headers["Content-Type"] == "application/yaml"; open(sys.argv[2], "wb").write(r.read())' \
    "$BASE/v1/openapi.yaml" "$D/served.yaml" && cmp -s "$D/served.yaml" "$ROOT/api/openapi.yaml"; then
    pass served "GET /v1/openapi.yaml without credentials is api/openapi.yaml byte for byte"
else
    fail served "GET /v1/openapi.yaml did not serve api/openapi.yaml"
fi

rc=0
# Basic with the client's id and secret: accepted on every /v1 route, and the client
# authentication of the OAuth endpoints, so their success paths are fuzzed too.
# schemathesis_hooks.py makes configuration-dependent values realistic in valid requests.
timeout 600 env PYTHONPATH="$HERE" SCHEMATHESIS_HOOKS=schemathesis_hooks \
    schemathesis run "$BASE/v1/openapi.yaml" \
    -a "$KEY" --checks all --max-examples "$EXAMPLES" --seed "${SCHEMATHESIS_SEED:-1}" \
    --request-timeout 20 --workers 1 --output-sanitize true >"$D/schemathesis.out" 2>&1 || rc=$?
tail -40 "$D/schemathesis.out" | sed 's/^/  /'
summary=$(grep -E '(passed|failed|errored|skipped)' "$D/schemathesis.out" | tail -1 || true)
if [[ $rc -eq 0 ]]; then
    pass schemathesis "schemathesis $(schemathesis --version 2>/dev/null | awk '{print $NF}'), --checks all, $EXAMPLES examples/operation: $summary"
else
    fail schemathesis "exit $rc: $summary (full output: $D/schemathesis.out)"
fi
if grep -qE 'panicked|ERROR' "$D/server.log"; then
    fail server-log "$(grep -E 'panicked|ERROR' "$D/server.log" | head -3)"
else
    pass server-log "no panic or error in the server log"
fi
DONE=true
