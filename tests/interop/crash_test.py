#!/usr/bin/env python3
"""kill -9 crash test: a 250 after DATA must mean the message survives a crash.

Several smtplib connections send continuously (unique Message-IDs) while the server is
killed with SIGKILL at random moments and restarted on the same spool. Every Message-ID
that got a 250 is recorded. At the end the server is restarted once more, the queue must
drain, and every acknowledged Message-ID must be in the sink's log. Duplicates (delivered
more than once, e.g. delivered just before a crash and retried after it) are counted and
printed but are allowed (at-least-once); missing ones are a failure."""
import argparse
import collections
import os
import random
import smtplib
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402


class Sender(threading.Thread):
    def __init__(self, n, port, stop, acked, lock):
        super().__init__(daemon=True)
        self.n, self.port, self.stop, self.acked, self.lock = n, port, stop, acked, lock
        self.attempts = 0
        self.errors = 0

    def run(self):
        s = None
        while not self.stop.is_set():
            try:
                if s is None:
                    s = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
                    s.ehlo("crash.example.net")
                mid = f"<{uuid.uuid4().hex}.{self.n}@crash.example.net>"
                body = (f"From: alice@example.net\r\nTo: bob@example.test\r\n"
                        f"Subject: crash test\r\nMessage-ID: {mid}\r\n\r\n"
                        + "payload line\r\n" * 40).encode()
                self.attempts += 1
                code, _ = s.mail("alice@example.net")
                if code != 250:
                    raise smtplib.SMTPException(f"MAIL {code}")
                code, _ = s.rcpt("bob@example.test")
                if code != 250:
                    raise smtplib.SMTPException(f"RCPT {code}")
                code, _ = s.data(body)
                if code == 250:
                    with self.lock:
                        self.acked.append(mid)
                else:
                    raise smtplib.SMTPException(f"DATA {code}")
            except (OSError, smtplib.SMTPException):
                self.errors += 1
                try:
                    if s is not None:
                        s.close()
                except Exception:
                    pass
                s = None
                time.sleep(0.05)
        if s is not None:
            try:
                s.quit()
            except Exception:
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=c.DEFAULT_BIN)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    c.install_signal_handlers()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    print(f"crash test: seed={seed} kills={a.kills} senders={a.senders}", flush=True)
    w = a.workdir
    os.makedirs(w, exist_ok=True)
    port, sink_port = c.free_port(), c.free_port()
    stop = threading.Event()
    senders = []
    try:
        sink = c.Sink(os.path.join(w, "sink.jsonl"), os.path.join(w, "sink.log"), sink_port).start()
        cfg = os.path.join(w, "sealpost.toml")
        c.write_config(cfg, os.path.join(w, "spool"), listeners=[(port, "relay")],
                       local_domains=["example.test"], trusted_networks=["127.0.0.1/32"],
                       routes=[("example.test", sink_port)])
        log = os.path.join(w, "server.log")
        srv = c.Server(a.bin, cfg, log, port).start()
        acked, lock = [], threading.Lock()
        senders = [Sender(i, port, stop, acked, lock) for i in range(a.senders)]
        for t in senders:
            t.start()
        restart_ok = True
        for k in range(a.kills):
            delay = rnd.uniform(0.3, 2.0)
            time.sleep(delay)
            with lock:
                n_acked = len(acked)
            srv.kill9()
            print(f"  kill -9 #{k + 1} after {delay:.2f}s ({n_acked} acknowledged so far)", flush=True)
            if k < a.kills - 1:
                try:
                    srv.start()
                except RuntimeError as e:
                    c.fail("crash-restart", f"restart #{k + 1} failed: {e}")
                    restart_ok = False
                    break
        stop.set()
        for t in senders:
            t.join(30)
        if not restart_ok:
            raise RuntimeError("server did not come back after a kill -9")
        # Final restart on the same spool: everything acknowledged must now be delivered.
        srv.start()
        empty, last = srv.wait_queue_empty(timeout=60)
        time.sleep(0.5)  # let the sink finish appending its last line
        delivered = collections.Counter(r["message_id"] for r in sink.records())
        acked_set = set(acked)
        missing = sorted(m for m in acked_set if delivered[m] == 0)
        dups = {m: n for m, n in delivered.items() if n > 1}
        unacked_delivered = [m for m in delivered if m not in acked_set]
        attempts = sum(t.attempts for t in senders)
        print(f"  attempted={attempts} acknowledged={len(acked_set)} "
              f"delivered(distinct)={sum(1 for m in delivered if m in acked_set)} "
              f"deliveries(total)={sum(delivered.values())} duplicates={len(dups)} "
              f"(extra copies {sum(n - 1 for n in dups.values())}) "
              f"delivered-but-unacknowledged={len(unacked_delivered)} missing={len(missing)}",
              flush=True)
        c.check(len(acked_set) > 0, "crash-some-acknowledged", f"{len(acked_set)} acknowledged",
                "no message was acknowledged at all")
        c.check(len(acked_set) == len(acked), "crash-unique-ids", "",
                "a Message-ID was acknowledged twice (test bug)")
        c.check(empty, "crash-queue-drained", "queue empty after final restart",
                f"queue not empty after 60 s: {str(last)[:800]}")
        c.check(not missing, "crash-no-acknowledged-message-lost",
                f"all {len(acked_set)} acknowledged messages delivered",
                f"{len(missing)} acknowledged but never delivered, e.g. {missing[:5]}")
        if dups:
            print(f"  note: {len(dups)} message(s) delivered more than once (allowed), "
                  f"e.g. {list(dups.items())[:3]}", flush=True)
    except Exception as e:
        c.fail("crash-harness", f"{type(e).__name__}: {e}")
    finally:
        stop.set()
        c.stop_all()
    c.finish()


if __name__ == "__main__":
    main()
