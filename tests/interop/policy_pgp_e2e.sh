#!/usr/bin/env bash
# End-to-end PGP/MIME through the release server: a key made by `gpg --quick-gen-key` is
# imported with `sealpost keys import` while the server runs; a policy rule requires
# encryption for example.test (methods pgp, smime; on_unavailable bounce). Mail to
# bob@example.test must reach the sink as multipart/encrypted (RFC 3156) and `gpg --decrypt`
# of its second part must give the original entity byte-exact. Mail to carol@example.test (no
# key) must be bounced by the policy: a DSN to the sender and no plaintext copy at the sink.
#   bash tests/interop/policy_pgp_e2e.sh
set -euo pipefail
SCRIPT_NAME=policy_pgp_e2e
source "$(dirname "${BASH_SOURCE[0]}")/policy_lib.sh"

need gpg python3
[[ -x $BIN ]] || { fail binary "$BIN missing (cargo build --release)"; DONE=true; exit; }
gpg --version | head -1

D=$WORK
export GNUPGHOME="$D/gnupg"
mkdir -m 700 "$GNUPGHOME"
if ! gpg --batch --passphrase '' --quick-gen-key 'Bob <bob@example.test>' default default never \
    >"$D/gpg-gen.log" 2>&1; then
    fail gpg-keygen "$(tail -3 "$D/gpg-gen.log" | tr '\n' ' ')"; DONE=true; exit
fi
gpg --batch --armor --export bob@example.test >"$D/bob.asc"

cat >"$D/policy.toml" <<'EOF'
[[rule]]
name = "example-test-encrypted"
recipient_domains = ["example.test"]
require = "encrypted"
methods = ["pgp", "smime"]
on_unavailable = "bounce"
EOF
start_sink "$D" || { fail sink "did not start"; DONE=true; exit; }
PORT=$(free_port)
write_config "$D/sealpost.toml" "$D/spool" "$PORT" "$SINK_PORT"
if ! start_server "$D/sealpost.toml" "$D/server.log" "$PORT"; then
    fail server "did not start: $(tail -5 "$D/server.log")"; DONE=true; exit
fi

# Import while the server runs: keys are read at lookup time.
if out=$("$BIN" keys import "$D/bob.asc" --config "$D/sealpost.toml" 2>&1) &&
    grep -qE '^imported pgp [0-9A-F]{40} bob@example.test$' <<<"$out"; then
    pass keys-import "$out"
else
    fail keys-import "exit/output: $out"
fi
if "$BIN" keys list --json --config "$D/sealpost.toml" | python3 -c '
import json, sys
keys = json.load(sys.stdin)
assert [k["kind"] for k in keys] == ["pgp"] and keys[0]["emails"] == ["bob@example.test"], keys' 2>"$D/list.err"; then
    pass keys-list "one pgp key for bob@example.test"
else
    fail keys-list "$(tail -2 "$D/list.err")"
fi
if out=$("$BIN" policy explain --config "$D/sealpost.toml" bob@example.test carol@example.test 2>&1) &&
    grep -q '^  method: pgp (key ' <<<"$out" && grep -q '^decision: refuse (bounce)' <<<"$out"; then
    pass explain "bob: pgp, carol: refuse (bounce)"
else
    fail explain "$out"
fi

# Bob: encrypted end to end.
MID="<pgp-e2e-$RANDOM$RANDOM@example.net>"
make_message "$D/bob.eml" "$MID" bob@example.test "bob-marker-$RANDOM"
reply=$(send "$PORT" alice@example.net bob@example.test "$D/bob.eml")
if [[ $reply != "250 "* ]]; then
    fail send-bob "$reply"
else
    dump=$(dump_of "$D" "$MID" 30)
    if [[ -z $dump ]]; then
        fail pgp-delivered "no message $MID at the sink: $(grep -F bob@ "$D/server.log" | tail -2 | tr '\n' ' ')"
    elif ! python3 - "$dump" "$D/bob.pgp" <<'EOF' 2>"$D/mime.err"; then
import email, email.policy, sys
raw = open(sys.argv[1], "rb").read()
m = email.message_from_bytes(raw, policy=email.policy.compat32)
assert m.get_content_type() == "multipart/encrypted", m.get_content_type()
assert m.get_param("protocol") == "application/pgp-encrypted", m.get_param("protocol")
parts = m.get_payload()
assert len(parts) == 2, len(parts)
assert parts[0].get_content_type() == "application/pgp-encrypted", parts[0].get_content_type()
assert "Version: 1" in parts[0].get_payload(), parts[0].get_payload()
assert parts[1].get_content_type() == "application/octet-stream", parts[1].get_content_type()
body = parts[1].get_payload()
assert body.lstrip().startswith("-----BEGIN PGP MESSAGE-----"), body[:40]
assert all(b < 128 for b in raw), "not 7-bit clean"
open(sys.argv[2], "w").write(body)
EOF
        fail pgp-mime "not RFC 3156 PGP/MIME: $(tail -1 "$D/mime.err")"
    else
        pass pgp-mime "multipart/encrypted; protocol=application/pgp-encrypted, 7-bit ($dump)"
        if grep -qF bob-marker "$dump"; then
            fail pgp-no-plaintext "the body text is visible in $dump"
        fi
        if ! gpg --batch --status-fd 3 --decrypt "$D/bob.pgp" >"$D/bob.dec" 2>"$D/gpg.err" 3>"$D/gpg.status"; then
            fail gpg-decrypt "$(tr '\n' ' ' <"$D/gpg.err")"
        elif ! grep -q DECRYPTION_OKAY "$D/gpg.status"; then
            fail gpg-decrypt "no DECRYPTION_OKAY in gpg status"
        elif cmp -s "$D/bob.dec" "$D/bob.eml.inner-pgp"; then
            pass gpg-decrypt "gpg recovers the original entity byte-exact ($(wc -c <"$D/bob.dec") bytes)"
        else
            fail gpg-decrypt "decrypted bytes differ from the expected entity (see $D/bob.dec vs $D/bob.eml.inner-pgp)"
        fi
    fi
fi

# Carol: no key, the rule says bounce.
MID="<pgp-nokey-$RANDOM$RANDOM@example.net>"
make_message "$D/carol.eml" "$MID" carol@example.test "carol-marker-$RANDOM"
reply=$(send "$PORT" alice@example.net carol@example.test "$D/carol.eml")
if [[ $reply != "250 "* ]]; then
    fail send-carol "$reply"
else
    check_refused policy-bounce "$D" "$D/server.log" carol@example.test carol-marker
fi
DONE=true
