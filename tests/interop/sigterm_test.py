#!/usr/bin/env python3
"""Graceful stop: SIGTERM while a client is in the middle of DATA. The open transaction
must still get its 250, new connections must be refused, the server must exit 0 within
shutdown_grace_secs, and the message must be delivered (at the latest after a restart)."""
import argparse
import os
import socket
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402
from raw_bare_lf import Raw  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=c.DEFAULT_BIN)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    c.install_signal_handlers()
    w = a.workdir
    os.makedirs(w, exist_ok=True)
    port, sink_port = c.free_port(), c.free_port()
    try:
        sink = c.Sink(os.path.join(w, "sink.jsonl"), os.path.join(w, "sink.log"), sink_port).start()
        cfg = os.path.join(w, "sealpost.toml")
        c.write_config(cfg, os.path.join(w, "spool"), listeners=[(port, "relay")],
                       local_domains=["example.test"], trusted_networks=["127.0.0.1/32"],
                       routes=[("example.test", sink_port)],
                       extra="")
        srv = c.Server(a.bin, cfg, os.path.join(w, "server.log"), port).start()
        mid = f"<sigterm.{uuid.uuid4().hex}@interop.example.net>"
        r = Raw(port)
        r.reply()
        r.cmd("EHLO client.example.net")
        r.cmd("MAIL FROM:<alice@example.test>")
        r.cmd("RCPT TO:<bob@example.test>")
        code, text = r.cmd("DATA")
        assert code == 354, text
        r.s.sendall(f"Message-ID: {mid}\r\nSubject: sigterm\r\n\r\nfirst half\r\n".encode())
        time.sleep(0.3)
        srv.p.terminate()
        time.sleep(1.0)
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            banner = s.recv(200)
            s.close()
            refused = not banner.startswith(b"220")
            why = f"new connection got {banner!r}"
        except OSError as e:
            refused, why = True, str(e)
        c.check(refused, "sigterm-stops-accepting", why, why)
        r.s.sendall(b"second half\r\n.\r\n")
        code, text = r.reply()
        c.check(code == 250, "sigterm-open-transaction-250", text,
                f"open transaction after SIGTERM got {text}")
        try:
            rc = srv.p.wait(35)
            c.check(rc == 0, "sigterm-exit-0", "server exited 0", f"exit status {rc}")
        except Exception:
            c.fail("sigterm-exit-0", "server still running 35 s after SIGTERM")
            srv.kill9()
        if code == 250:
            got = sink.wait_for(mid, timeout=2)
            if not got:  # not delivered before the stop: it must be in the spool
                srv.start()
                got = sink.wait_for(mid, timeout=20)
            c.check(len(got) == 1, "sigterm-message-delivered", f"{mid} delivered once",
                    f"sink records: {got}")
    except Exception as e:
        c.fail("sigterm-harness", f"{type(e).__name__}: {e}")
    finally:
        c.stop_all()
    c.finish()


if __name__ == "__main__":
    main()
