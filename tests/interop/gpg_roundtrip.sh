#!/usr/bin/env bash
# GnuPG interop for PGP/MIME: a fresh GNUPGHOME makes Bob's key with gpg's defaults, sealpost
# (via the ignored test `gpg_interop_encrypt` in tests/pgp.rs) imports the exported public key
# into a PgpKeyring and encrypts C25 plus a few corpus messages; gpg --decrypt must return the
# inner entity byte-exact. Prints PASS/FAIL per message and exits non-zero on any failure.
#   bash tests/interop/gpg_roundtrip.sh
# With CI=true a missing gpg is a failure, otherwise the script skips.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CORPUS="$ROOT/../shared/corpus/eml"
CI=${CI:-false}

if ! command -v gpg >/dev/null; then
    if [[ $CI == true ]]; then echo "FAIL gpg: not installed"; exit 1; fi
    echo "SKIP gpg: not installed"; exit 0
fi

WORK=$(mktemp -d /tmp/sealpost-gpg.XXXXXX)
export GNUPGHOME="$WORK/gnupg"
mkdir -m 700 "$GNUPGHOME"
cleanup() {
    gpgconf --kill all >/dev/null 2>&1 || true
    if [[ ${KEEP_WORKDIR:-false} == true || ${FAILED:-0} -gt 0 ]]; then
        echo "(work dir kept: $WORK)" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

gpg --version | head -1
gpg --batch --passphrase '' --quick-gen-key 'Bob <bob@example.com>' default default never 2>/dev/null
gpg --batch --armor --export bob@example.com >"$WORK/bob.asc"

MESSAGES=()
if [[ -d $CORPUS ]]; then
    for f in "$CORPUS"/rfc/000.eml "$CORPUS"/rfc/005.eml "$CORPUS"/legacy/001.eml \
             "$CORPUS"/legacy/020.eml "$CORPUS"/malformed/017.eml; do
        [[ -f $f ]] && MESSAGES+=("$f")
    done
elif [[ $CI == true ]]; then
    echo "FAIL corpus: missing at $CORPUS"; exit 1
fi

OUT="$WORK/out"
mkdir "$OUT"
(
    cd "$ROOT"
    SEALPOST_GPG_PUBKEY="$WORK/bob.asc" SEALPOST_OUT="$OUT" \
        SEALPOST_MESSAGES="$(IFS=:; echo "${MESSAGES[*]:-}")" \
        cargo test --quiet --test pgp gpg_interop_encrypt -- --ignored --exact >"$WORK/cargo.log" 2>&1
) || { echo "FAIL sealpost: encrypt step failed (see $WORK/cargo.log)"; FAILED=1; exit 1; }

PASSED=0
FAILED=0
for eml in "$OUT"/*.eml; do
    name=$(basename "$eml" .eml)
    # The armored block of the second MIME part.
    sed -n '/^-----BEGIN PGP MESSAGE-----/,/^-----END PGP MESSAGE-----/p' "$eml" >"$OUT/$name.asc"
    if ! gpg --batch --status-fd 3 --decrypt "$OUT/$name.asc" >"$OUT/$name.dec" \
        2>"$OUT/$name.err" 3>"$OUT/$name.status"; then
        echo "FAIL $name: gpg --decrypt failed: $(tr '\n' ' ' <"$OUT/$name.err")"
        FAILED=$((FAILED + 1)); continue
    fi
    if ! grep -q 'DECRYPTION_OKAY' "$OUT/$name.status" || ! grep -q 'GOODMDC' "$OUT/$name.status"; then
        echo "FAIL $name: gpg did not report DECRYPTION_OKAY with GOODMDC"
        FAILED=$((FAILED + 1)); continue
    fi
    if cmp -s "$OUT/$name.dec" "$OUT/$name.expected"; then
        echo "PASS $name: gpg decrypts to the inner entity byte-exact ($(wc -c <"$OUT/$name.dec") bytes)"
        PASSED=$((PASSED + 1))
    else
        echo "FAIL $name: decrypted bytes differ from the expected inner entity"
        FAILED=$((FAILED + 1))
    fi
done
if [[ $PASSED -eq 0 && $FAILED -eq 0 ]]; then
    echo "FAIL harness: nothing was encrypted"; FAILED=1
fi
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
