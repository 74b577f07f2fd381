"""Verify DKIM signatures with dkimpy (an independent implementation), answering its DNS
queries from the TXT records `sealpost dkim keygen` printed, so nothing leaves the machine.

    python3 dkim_verify.py MESSAGE.eml 'NAME IN TXT ( "v=DKIM1; ..." )' [...]

Exit 0 and "ok d=DOMAIN s=SELECTOR a=ALG" when the first DKIM-Signature verifies, else 1.
"""
import re
import sys

import dkim


def main() -> int:
    path, records = sys.argv[1], sys.argv[2:]
    zone = {}
    for rec in records:
        name, _, rest = rec.partition(" IN TXT ")
        zone[name.rstrip(".").lower()] = "".join(re.findall(r'"([^"]*)"', rest)).encode()

    def dnsfunc(name, timeout=5):
        key = name.decode() if isinstance(name, bytes) else name
        return zone.get(key.rstrip(".").lower())

    msg = open(path, "rb").read()
    m = re.search(rb"^DKIM-Signature:.*?(?=^\S)", msg, re.S | re.M)
    if not m:
        print(f"no DKIM-Signature in {path}")
        return 1
    sig = m.group(0)
    tags = dict(
        (k.strip().decode(), v.strip().decode())
        for k, _, v in (t.partition(b"=") for t in re.sub(rb"\s+", b"", sig[len(b"DKIM-Signature:"):]).split(b";"))
        if k.strip()
    )
    ok = dkim.verify(msg, dnsfunc=dnsfunc)
    print(("ok" if ok else "BAD") + f" d={tags.get('d')} s={tags.get('s')} a={tags.get('a')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
