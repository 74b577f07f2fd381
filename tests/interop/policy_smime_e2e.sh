#!/usr/bin/env bash
# End-to-end S/MIME through the release server: a certificate and key made by `openssl req`
# are imported with `sealpost keys import cert.pem` while the server runs; a policy rule
# requires encryption for example.test with methods ["smime"] (on_unavailable bounce). Mail to
# dave@example.test must reach the sink as application/pkcs7-mime enveloped-data and
# `openssl cms -decrypt -binary` must give the original entity byte-exact (the Content-*
# fields, the empty line, the body). Mail to erin@example.test (no certificate) is bounced.
#   bash tests/interop/policy_smime_e2e.sh
set -euo pipefail
SCRIPT_NAME=policy_smime_e2e
source "$(dirname "${BASH_SOURCE[0]}")/policy_lib.sh"

need openssl python3
[[ -x $BIN ]] || { fail binary "$BIN missing (cargo build --release)"; DONE=true; exit; }
openssl version

D=$WORK
if ! openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout "$D/key.pem" -out "$D/cert.pem" \
    -subj '/CN=Dave/emailAddress=dave@example.test' \
    -addext 'subjectAltName=email:dave@example.test' \
    -addext 'keyUsage=keyEncipherment,digitalSignature' >"$D/req.log" 2>&1; then
    fail openssl-req "$(tail -3 "$D/req.log" | tr '\n' ' ')"; DONE=true; exit
fi

cat >"$D/policy.toml" <<'EOF'
[[rule]]
name = "example-test-smime"
recipient_domains = ["example.test"]
require = "encrypted"
methods = ["smime"]
on_unavailable = "bounce"
EOF
start_sink "$D" || { fail sink "did not start"; DONE=true; exit; }
PORT=$(free_port)
write_config "$D/sealpost.toml" "$D/spool" "$PORT" "$SINK_PORT"
if ! start_server "$D/sealpost.toml" "$D/server.log" "$PORT"; then
    fail server "did not start: $(tail -5 "$D/server.log")"; DONE=true; exit
fi

if out=$("$BIN" keys import "$D/cert.pem" --config "$D/sealpost.toml" 2>&1) &&
    grep -qE '^imported smime [0-9a-f]{64} dave@example.test$' <<<"$out"; then
    pass keys-import "$out"
else
    fail keys-import "exit/output: $out"
fi
if out=$("$BIN" policy explain --config "$D/sealpost.toml" dave@example.test 2>&1) &&
    grep -q '^  method: smime (certificate ' <<<"$out"; then
    pass explain "dave: smime"
else
    fail explain "$out"
fi

MID="<smime-e2e-$RANDOM$RANDOM@example.net>"
make_message "$D/dave.eml" "$MID" dave@example.test "dave-marker-$RANDOM"
reply=$(send "$PORT" alice@example.net dave@example.test "$D/dave.eml")
if [[ $reply != "250 "* ]]; then
    fail send-dave "$reply"
else
    dump=$(dump_of "$D" "$MID" 30)
    if [[ -z $dump ]]; then
        fail smime-delivered "no message $MID at the sink: $(grep -F dave@ "$D/server.log" | tail -2 | tr '\n' ' ')"
    elif ! python3 - "$dump" <<'EOF' 2>"$D/mime.err"; then
import email, email.policy, sys
raw = open(sys.argv[1], "rb").read()
m = email.message_from_bytes(raw, policy=email.policy.compat32)
assert m.get_content_type() == "application/pkcs7-mime", m.get_content_type()
assert m.get_param("smime-type") == "enveloped-data", m.get_param("smime-type")
assert m.get_param("name") == "smime.p7m", m.get_param("name")
assert m["Content-Transfer-Encoding"].strip().lower() == "base64"
assert all(b < 128 for b in raw), "not 7-bit clean"
EOF
        fail smime-mime "not an S/MIME enveloped-data message: $(tail -1 "$D/mime.err")"
    else
        pass smime-mime "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m, base64 ($dump)"
        if grep -qF dave-marker "$dump"; then
            fail smime-no-plaintext "the body text is visible in $dump"
        fi
        if ! openssl cms -decrypt -binary -recip "$D/cert.pem" -inkey "$D/key.pem" \
            -in "$dump" -out "$D/dave.dec" 2>"$D/cms.err"; then
            fail openssl-decrypt "$(tr '\n' ' ' <"$D/cms.err")"
        elif cmp -s "$D/dave.dec" "$D/dave.eml.inner-smime"; then
            pass openssl-decrypt "openssl cms recovers the original entity byte-exact ($(wc -c <"$D/dave.dec") bytes)"
        else
            fail openssl-decrypt "decrypted bytes differ from the expected entity (see $D/dave.dec vs $D/dave.eml.inner-smime)"
        fi
    fi
fi

MID="<smime-nocert-$RANDOM$RANDOM@example.net>"
make_message "$D/erin.eml" "$MID" erin@example.test "erin-marker-$RANDOM"
reply=$(send "$PORT" alice@example.net erin@example.test "$D/erin.eml")
if [[ $reply != "250 "* ]]; then
    fail send-erin "$reply"
else
    check_refused policy-bounce "$D" "$D/server.log" erin@example.test erin-marker
fi
DONE=true
