#!/usr/bin/env bash
# DKIM end to end through the release server, verified by dkimpy (PyPI, an independent
# implementation): `sealpost dkim keygen` makes an RSA-2048 key for example.net and an
# Ed25519 key for example.org; mail from each domain reaches the sink signed by its key; a
# message the policy encrypts with PGP/MIME is signed after encryption, over the bytes sent;
# a From domain with no key goes out unsigned; a bad key file is refused by check-config.
#   bash tests/interop/dkim_e2e.sh
set -euo pipefail
SCRIPT_NAME=dkim_e2e
source "$(dirname "${BASH_SOURCE[0]}")/policy_lib.sh"

need gpg python3
if ! python3 -c 'import dkim, nacl' 2>/dev/null; then
    if [[ $CI == true ]]; then
        fail dkimpy "python modules dkim and nacl (pip install dkimpy pynacl) are missing (CI=true)"
    else
        echo "SKIP dkim_e2e: pip install dkimpy pynacl"
    fi
    DONE=true; exit
fi
[[ -x $BIN ]] || { fail binary "$BIN missing (cargo build --release)"; DONE=true; exit; }
D=$WORK
cd "$D"

RSA_TXT=$("$BIN" dkim keygen example.net s1 --out "$D/rsa.pem" 2>"$D/keygen.err")
ED_TXT=$("$BIN" dkim keygen example.org s2 --algorithm ed25519 --out "$D/ed.pem" 2>>"$D/keygen.err")
if [[ $RSA_TXT == 's1._domainkey.example.net. IN TXT ( "v=DKIM1; k=rsa; p='* &&
    $ED_TXT == 's2._domainkey.example.org. IN TXT ( "v=DKIM1; k=ed25519; p='* &&
    $(stat -c %a "$D/rsa.pem") == 600 ]]; then
    pass keygen "TXT records printed, keys written 0600"
else
    fail keygen "$RSA_TXT / $ED_TXT / $(cat "$D/keygen.err")"
fi
if out=$(openssl pkey -in "$D/ed.pem" -noout 2>&1) && out2=$(openssl pkey -in "$D/rsa.pem" -noout 2>&1); then
    pass keygen-openssl "openssl reads both private keys"
else
    fail keygen-openssl "$out $out2"
fi
if "$BIN" dkim keygen example.net s1 --out "$D/rsa.pem" >/dev/null 2>&1; then
    fail keygen-no-overwrite "an existing key file was overwritten"
else
    pass keygen-no-overwrite "existing key file kept"
fi

export GNUPGHOME="$D/gnupg"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --passphrase '' --quick-gen-key 'Bob <bob@example.test>' default default never >/dev/null 2>&1
gpg --batch --armor --export bob@example.test >"$D/bob.asc"
cat >"$D/policy.toml" <<'EOP'
[[rule]]
name = "bob-encrypted"
recipients = ["bob@example.test"]
require = "encrypted"
methods = ["pgp"]
on_unavailable = "bounce"
EOP
start_sink "$D" || { fail sink "did not start"; DONE=true; exit; }
PORT=$(free_port)
write_config "$D/sealpost.toml" "$D/spool" "$PORT" "$SINK_PORT"
cat >>"$D/sealpost.toml" <<EOC
[[dkim]]
domain = "example.net"
selector = "s1"
key_file = "rsa.pem"
[[dkim]]
domain = "example.org"
selector = "s2"
key_file = "ed.pem"
EOC
printf 'not a key\n' >"$D/bad.pem"
sed 's/key_file = "ed.pem"/key_file = "bad.pem"/' "$D/sealpost.toml" >"$D/bad.toml"
if out=$("$BIN" check-config --config "$D/bad.toml" 2>&1); then
    fail check-config-bad-key "accepted: $out"
else
    pass check-config-bad-key "$(tail -1 <<<"$out")"
fi
"$BIN" keys import "$D/bob.asc" --config "$D/sealpost.toml" >/dev/null
if ! start_server "$D/sealpost.toml" "$D/server.log" "$PORT"; then
    fail server "did not start: $(tail -5 "$D/server.log")"; DONE=true; exit
fi

msg() { # FILE FROM TO MESSAGE_ID
    printf 'From: Alice <%s>\r\nTo: <%s>\r\nSubject: dkim interop\r\nMessage-ID: %s\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nList-Unsubscribe: <https://example.net/u/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nHello   \r\n\r\n..a dotted line\r\n\r\n\r\n' \
        "$2" "$3" "$4" >"$1"
}
check() { # NAME FROM TO MESSAGE_ID EXPECT(signed-rsa|signed-ed|unsigned) [encrypted]
    local name=$1 f="$D/$1.eml" dump out
    msg "$f" "$2" "$3" "$4"
    out=$(send "$PORT" "$2" "$3" "$f")
    [[ $out == 250* ]] || { fail "$name" "send: $out"; return; }
    dump=$(dump_of "$D" "$4" 20)
    [[ -n $dump ]] || { fail "$name" "never reached the sink"; return; }
    if [[ ${6:-} == encrypted ]] && ! grep -q '^Content-Type: multipart/encrypted' "$dump"; then
        fail "$name" "not PGP/MIME: $(grep -m1 '^Content-Type' "$dump")"; return
    fi
    case $5 in
    unsigned)
        if grep -q '^DKIM-Signature:' "$dump"; then fail "$name" "signed without a key for the domain"; else pass "$name" "no key for the From domain: unsigned"; fi ;;
    *)
        if out=$(python3 "$HERE/dkim_verify.py" "$dump" "$RSA_TXT" "$ED_TXT" 2>&1); then
            local want="a=rsa-sha256"; [[ $5 == signed-ed ]] && want="a=ed25519-sha256"
            if [[ $out == *"$want"* ]]; then pass "$name" "dkimpy: $out"; else fail "$name" "wrong algorithm: $out"; fi
        else
            fail "$name" "dkimpy: $out ($dump)"
        fi ;;
    esac
}
check rsa-plain alice@example.net carol@example.test '<dkim-1@example.net>' signed-rsa
check ed25519-plain alice@example.org carol@example.test '<dkim-2@example.org>' signed-ed
check rsa-pgp alice@example.net bob@example.test '<dkim-3@example.net>' signed-rsa encrypted
check unsigned alice@example.com carol@example.test '<dkim-4@example.com>' unsigned
DONE=true
