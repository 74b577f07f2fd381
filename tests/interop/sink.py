#!/usr/bin/env python3
"""A small receiving SMTP server for interop and crash tests.

Accepts every message and appends one JSON line per message to --out:
{"mail_from": ..., "rcpts": [...], "message_id": ..., "size": n, "peer": ip}.
With --dump-dir each message body is also written there verbatim (for byte comparisons).
Written here (not smtpd/aiosmtpd) so the tests depend on nothing but Python itself.
"""
import argparse
import asyncio
import json
import os
import re


class Sink:
    def __init__(self, out, dump_dir, hostname):
        self.out = out
        self.dump_dir = dump_dir
        self.hostname = hostname
        # The --out file is appended to across restarts; keep numbering in step with its
        # lines (line N <-> dump N), so a restarted sink never overwrites an earlier dump.
        try:
            with open(out) as f:
                self.count = sum(1 for line in f if line.strip())
        except FileNotFoundError:
            self.count = 0

    async def handle(self, reader, writer):
        peer = writer.get_extra_info("peername")[0]
        w = lambda s: writer.write(s.encode() + b"\r\n")
        w(f"220 {self.hostname} ESMTP sink")
        mail_from, rcpts = None, []
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                cmd = line.decode("utf-8", "replace").rstrip("\r\n")
                verb = cmd[:4].upper()
                if verb in ("EHLO", "HELO"):
                    w(f"250-{self.hostname}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 0")
                elif verb == "MAIL":
                    m = re.match(r"MAIL FROM:\s*<([^>]*)>", cmd, re.I)
                    mail_from, rcpts = (m.group(1) if m else cmd), []
                    w("250 2.1.0 ok")
                elif verb == "RCPT":
                    m = re.match(r"RCPT TO:\s*<([^>]*)>", cmd, re.I)
                    rcpts.append(m.group(1) if m else cmd)
                    w("250 2.1.5 ok")
                elif verb == "DATA":
                    w("354 go ahead")
                    await writer.drain()
                    body = bytearray()
                    while True:
                        l = await reader.readline()
                        if not l:
                            return
                        if l == b".\r\n":
                            break
                        if l.startswith(b"."):
                            l = l[1:]
                        body += l
                    self.record(mail_from, rcpts, bytes(body), peer)
                    w("250 2.0.0 ok: stored")
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    w("250 2.0.0 ok")
                elif verb == "QUIT":
                    w("221 2.0.0 bye")
                    await writer.drain()
                    break
                else:
                    w("250 2.0.0 ok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def record(self, mail_from, rcpts, body, peer):
        self.count += 1
        m = re.search(rb"^Message-ID:\s*(<[^>\r\n]*>)", body, re.I | re.M)
        entry = {
            "mail_from": mail_from,
            "rcpts": rcpts,
            "message_id": m.group(1).decode("utf-8", "replace") if m else None,
            "size": len(body),
            "peer": peer,
        }
        with open(self.out, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.dump_dir:
            with open(os.path.join(self.dump_dir, f"{self.count:06d}.eml"), "wb") as f:
                f.write(body)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:2526")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dump-dir")
    ap.add_argument("--hostname", default="sink.example.test")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    sink = Sink(a.out, a.dump_dir, a.hostname)
    server = await asyncio.start_server(sink.handle, host, int(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
