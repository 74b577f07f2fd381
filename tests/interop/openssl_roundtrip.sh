#!/usr/bin/env bash
# S/MIME interop: Sealpost encrypts, OpenSSL decrypts, the result must be byte-identical to the
# expected inner entity (the original's Content-* fields, the empty line, the body).
#
# 1. openssl makes an RSA-2048 key and a self-signed certificate for bob@example.com
#    (subject emailAddress + SAN email, KeyUsage keyEncipherment,digitalSignature).
# 2. The ignored test `openssl_interop` in tests/smime.rs imports that certificate into an
#    SmimeStore, looks bob up, and encrypts each input message twice (PKCS #1 v1.5 and OAEP),
#    writing NAME.p7m.eml (the whole S/MIME message) and NAME.inner (what decryption must give).
# 3. `openssl cms -decrypt -binary -in NAME.p7m.eml` (input format SMIME: the whole message)
#    decrypts each, and the output is compared with cmp.
#
# Why -binary: without it OpenSSL treats the decrypted content as text and may rewrite line
# ends (CRLF is what we put in; text mode is free to translate it), so the comparison would
# test OpenSSL's text canonicalisation rather than our bytes. With -binary the content is
# written exactly as decrypted. The script also records, for information, whether the
# default (text) mode happens to give the same bytes.
#
# Inputs: a C25-style message, a message without Content-* fields (inner entity starts with the
# empty line), one with an 8-bit body and no final line end, and a few corpus messages if
# ../shared/corpus/eml exists (CI=true makes a missing corpus a failure).
# Prints PASS/FAIL per message and "N passed, M failed"; exits non-zero on any failure.
#   bash tests/interop/openssl_roundtrip.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CORPUS="$ROOT/../shared/corpus/eml"
CI=${CI:-false}
WORK=$(mktemp -d /tmp/sealpost-smime.XXXXXX)
KEEP=${KEEP_WORKDIR:-false}
PASSED=0
FAILED=0

cleanup() {
    if [[ $KEEP == true ]]; then
        echo "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }

command -v openssl >/dev/null || { echo "FAIL openssl not installed"; exit 1; }
mkdir -p "$WORK/in" "$WORK/out"

openssl req -x509 -newkey rsa:2048 -nodes -days 2 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" \
    -subj '/CN=Bob/emailAddress=bob@example.com' \
    -addext 'subjectAltName=email:bob@example.com' \
    -addext 'keyUsage=keyEncipherment,digitalSignature' 2>"$WORK/req.log" \
    || { cat "$WORK/req.log"; echo "FAIL openssl req"; exit 1; }
# The bundle handed to the store holds the private key too: import must ignore it.
cat "$WORK/key.pem" "$WORK/cert.pem" >"$WORK/bundle.pem"

printf 'MIME-Version: 1.0\r\nFrom: alice@example.net\r\nTo: bob@example.com\r\nSubject: Q3 numbers\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsecret\r\n' \
    >"$WORK/in/c25.eml"
printf 'From: alice@example.net\r\nTo: bob@example.com\r\nSubject: plain\r\n\r\nno content fields\r\n  trailing spaces  \r\n\r\n' \
    >"$WORK/in/no-content-type.eml"
printf 'From: alice@example.net\r\nTo: bob@example.com\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n.\r\nno final line end' \
    >"$WORK/in/8bit-no-eol.eml"
if [[ -d $CORPUS ]]; then
    for f in rfc/000 rfc/008 legacy/000 legacy/029 malformed/015 malformed/019 malformed/021; do
        [[ -f $CORPUS/$f.eml ]] && cp "$CORPUS/$f.eml" "$WORK/in/${f//\//-}.eml"
    done
elif [[ $CI == true ]]; then
    fail "corpus $CORPUS missing under CI"
else
    echo "SKIP corpus messages: $CORPUS not found"
fi

echo "building and running openssl_interop (cargo test --test smime -- --ignored)"
if ! (cd "$ROOT" && SEALPOST_SMIME_CERT="$WORK/bundle.pem" SEALPOST_IN="$WORK/in" \
    SEALPOST_OUT="$WORK/out" cargo test --quiet --test smime openssl_interop -- \
    --ignored --exact >"$WORK/cargo.log" 2>&1); then
    cat "$WORK/cargo.log"
    fail "openssl_interop test (encryption side)"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi

text_mode_same=0
text_mode_differs=0
for smime in "$WORK"/out/*.p7m.eml; do
    name=$(basename "$smime" .p7m.eml)
    expected="$WORK/out/$name.inner"
    got="$WORK/out/$name.decrypted"
    if ! openssl cms -decrypt -binary -in "$smime" -recip "$WORK/cert.pem" \
        -inkey "$WORK/key.pem" -out "$got" 2>"$WORK/out/$name.err"; then
        fail "$name: openssl cms -decrypt: $(head -c 300 "$WORK/out/$name.err")"
        continue
    fi
    if cmp -s "$expected" "$got"; then
        pass "$name ($(wc -c <"$got") bytes byte-identical)"
    else
        fail "$name: decrypted entity differs from the expected inner entity"
        cmp "$expected" "$got" | head -1 || true
    fi
    openssl cms -decrypt -in "$smime" -recip "$WORK/cert.pem" -inkey "$WORK/key.pem" \
        -out "$got.text" 2>/dev/null || true
    if cmp -s "$expected" "$got.text"; then
        text_mode_same=$((text_mode_same + 1))
    else
        text_mode_differs=$((text_mode_differs + 1))
    fi
done

echo "info: without -binary, $text_mode_same outputs identical, $text_mode_differs differ"
if [[ $PASSED -eq 0 ]]; then fail "no messages decrypted"; fi
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
