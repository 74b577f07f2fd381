"""The audit log checked with Python alone, as a compliance officer would: every line's
hash recomputed from canonical JSON (sorted keys, no spaces, UTF-8), each prev the hash
before it, seq gap-free, the head file naming the last record; `sealpost audit verify`
agrees; the CSV export parses with Python's csv module; no secret appears in the file."""
import csv
import hashlib
import io
import json
import os
import subprocess

import common as c


def check_audit(bin_path, config, log, secrets, want_actions):
    """PASS/FAIL lines for the audit log `log` of the server configured by `config`."""
    lines = open(log, encoding="utf-8").read().splitlines()
    prev, problems, actions = "0" * 64, [], set()
    for no, line in enumerate(lines, 1):
        rec = json.loads(line)
        got = rec.pop("hash")
        canon = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if hashlib.sha256(canon.encode()).hexdigest() != got:
            problems.append(f"line {no}: hash")
        if rec["prev"] != prev or rec["seq"] != no:
            problems.append(f"line {no}: prev/seq")
        prev = got
        actions.add(rec["action"])
    head = json.load(open(log + ".head"))
    c.check(not problems and lines and head == {"seq": len(lines), "hash": prev},
            "audit-chain-python", f"{len(lines)} records, head {prev[:16]}",
            f"{problems[:3]} head={head}")
    r = subprocess.run([bin_path, "audit", "verify", "--config", config],
                       capture_output=True, text=True)
    c.check(r.returncode == 0 and f"{len(lines)} record(s)" in r.stdout, "audit-verify",
            r.stdout.strip(), f"rc={r.returncode} {r.stdout} {r.stderr}")
    missing = set(want_actions) - actions
    c.check(not missing, "audit-actions", ", ".join(sorted(want_actions)),
            f"missing {sorted(missing)}; have {sorted(actions)}")
    text = open(log, encoding="utf-8").read()
    leaked = [s for s in secrets if s in text]
    c.check(not leaked, "audit-no-secrets", f"{len(secrets)} secrets absent", f"leaked {leaked}")
    r = subprocess.run([bin_path, "audit", "export", "--format", "csv", "--config", config],
                       capture_output=True, text=True)
    rows = list(csv.DictReader(io.StringIO(r.stdout, newline="")))
    c.check(r.returncode == 0 and len(rows) == len(lines)
            and all(json.loads(row["details"]) == json.loads(l)["details"]
                    for row, l in zip(rows, lines)),
            "audit-export-csv", f"{len(rows)} rows", f"rc={r.returncode} rows={len(rows)}")
    r = subprocess.run([bin_path, "audit", "export", "--since", "tomorrow", "--config", config],
                       capture_output=True, text=True)
    c.check(r.returncode == 2, "audit-export-bad-argument", "exit 2", f"rc={r.returncode}")
    # A copy with one record removed from the middle must fail verification.
    if len(lines) >= 3:
        d = os.path.join(os.path.dirname(log), "tampered")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "audit.jsonl"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines[:1] + lines[2:]) + "\n")
        with open(os.path.join(d, "audit.jsonl.head"), "w") as f:
            json.dump(head, f)
        cfg = os.path.join(d, "sealpost.toml")
        with open(cfg, "w") as f:
            f.write('[[listener]]\naddress = "127.0.0.1:0"\n[audit]\nfile = "audit.jsonl"\n')
        r = subprocess.run([bin_path, "audit", "verify", "--config", cfg],
                           capture_output=True, text=True)
        c.check(r.returncode == 1 and "line 2:" in r.stderr, "audit-verify-detects-deletion",
                r.stderr.strip(), f"rc={r.returncode} {r.stderr}")
