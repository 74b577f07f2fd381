#!/usr/bin/env python3
"""Raw-socket checks that swaks cannot make (it normalises line ends): a body with a bare LF
(and one with a bare CR) must be refused with 550 5.6.0 after the real end of data, an
SMTP-smuggling attempt ("\\n.\\r\\n" followed by commands) must not run the embedded
commands, and nothing of these messages may reach the sink. A clean message is sent last
on the same session as a control."""
import argparse
import os
import socket
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402


class Raw:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def reply(self):
        """One (possibly multi-line) reply: (code, full text)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                d = self.s.recv(65536)
                if not d:
                    raise ConnectionError(f"connection closed, got so far {lines!r}")
                self.buf += d
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line):
        self.s.sendall(line.encode() + b"\r\n")
        return self.reply()

    def pending(self, wait=1.0):
        """Anything more the server sent (there should be nothing)."""
        self.s.settimeout(wait)
        try:
            d = self.s.recv(65536)
        except socket.timeout:
            d = b""
        self.s.settimeout(10)
        return self.buf + d


def tx(r, rcpt, body, name):
    code, text = r.cmd("MAIL FROM:<alice@example.net>")
    if code != 250:
        c.fail(name, f"MAIL: {text}")
        return None
    code, text = r.cmd(f"RCPT TO:<{rcpt}>")
    if code != 250:
        c.fail(name, f"RCPT: {text}")
        return None
    code, text = r.cmd("DATA")
    if code != 354:
        c.fail(name, f"DATA: {text}")
        return None
    r.s.sendall(body)
    return r.reply()


def starttls_injection(port):
    """Commands pipelined after STARTTLS in plaintext must not be executed inside TLS
    (CVE-2011-0411 class)."""
    import ssl
    r = Raw(port)
    r.reply()
    r.cmd("EHLO raw.example.net")
    r.s.sendall(b"STARTTLS\r\nRSET\r\nNOOP injected\r\n")
    code, text = r.reply()
    if code != 220:
        c.fail("starttls-injection", f"STARTTLS: {text}")
        return
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    r.s = ctx.wrap_socket(r.s)
    r.buf = b""
    extra = r.pending(1.0)
    c.check(extra == b"", "starttls-injection-ignored", "no reply to plaintext commands inside TLS",
            f"server answered injected commands inside TLS: {extra!r}")
    r.s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sink-out", required=True)
    ap.add_argument("--dump-dir", help="the sink's --dump-dir, for the dot-transparency check")
    a = ap.parse_args()
    bad_ids = []
    try:
        r = Raw(a.port)
        code, text = r.reply()
        assert code == 220, text
        code, text = r.cmd("EHLO raw.example.net")
        assert code == 250, text

        for name, sep in (("bare-lf-550-5.6.0", b"\n"), ("bare-cr-550-5.6.0", b"\r")):
            mid = f"<{name}.{uuid.uuid4().hex}@raw.example.net>"
            bad_ids.append(mid)
            body = (b"From: alice@example.net\r\nTo: bob@example.test\r\nMessage-ID: "
                    + mid.encode() + b"\r\nSubject: " + name.encode() + b"\r\n\r\nline one"
                    + sep + b"line two\r\n.\r\n")
            res = tx(r, "bob@example.test", body, name)
            if res:
                code, text = res
                c.check(code == 550 and text[4:9] == "5.6.0", name, text,
                        f"expected 550 5.6.0, got {text}")
            code, text = r.cmd("RSET")
            c.check(code == 250, name + "-session-usable", "RSET after refusal: 250", text)

        # SMTP smuggling: "\n.\r\n" is not the end of data; the commands after it are data.
        name = "smuggling-not-executed"
        mid = f"<outer.{uuid.uuid4().hex}@raw.example.net>"
        smid = f"<smuggled.{uuid.uuid4().hex}@raw.example.net>"
        bad_ids += [mid, smid]
        body = (f"From: alice@example.net\r\nTo: bob@example.test\r\nMessage-ID: {mid}\r\n"
                f"Subject: smuggling\r\n\r\nhello\n.\r\nMAIL FROM:<admin@example.test>\r\n"
                f"RCPT TO:<bob@example.test>\r\nDATA\r\nMessage-ID: {smid}\r\n\r\n"
                f"smuggled\r\n.\r\n").encode()
        res = tx(r, "bob@example.test", body, name)
        if res:
            code, text = res
            extra = r.pending(1.0)
            c.check(code == 550 and text[4:9] == "5.6.0" and not extra, name,
                    f"one reply: {text}", f"reply {text!r}, then {extra!r}")

        # The same refusal for BDAT (CHUNKING) content.
        name = "bdat-bare-lf-550-5.6.0"
        mid = f"<bdat-lf.{uuid.uuid4().hex}@raw.example.net>"
        bad_ids.append(mid)
        chunk = f"Message-ID: {mid}\r\nSubject: bdat\r\n\r\nline one\nline two\r\n".encode()
        r.cmd("MAIL FROM:<alice@example.net>")
        r.cmd("RCPT TO:<bob@example.test>")
        r.s.sendall(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        code, text = r.reply()
        c.check(code == 550 and text[4:9] == "5.6.0", name, text, f"expected 550 5.6.0, got {text}")

        # Dot transparency: lines starting with "." survive relaying byte for byte.
        dots = f"<dots.{uuid.uuid4().hex}@raw.example.net>"
        dot_body = b".\r\n..\r\n.x\r\n...\r\n. \r\nend\r\n"
        stuffed = b"".join(b"." + l if l.startswith(b".") else l
                           for l in dot_body.splitlines(keepends=True))
        res = tx(r, "bob@example.test", f"Message-ID: {dots}\r\n\r\n".encode() + stuffed
                 + b".\r\n", "dot-transparency")
        if res and res[0] != 250:
            c.fail("dot-transparency", f"DATA refused: {res[1]}")
            dots = None

        # Limits and routing syntax.
        code, text = r.cmd("MAIL FROM:<alice@example.net> SIZE=999999999999")
        c.check(code == 552 and text[4:9] == "5.3.4", "size-param-552", text, text)
        code, text = r.cmd("NOOP " + "x" * 5000)
        c.check(code == 500 and text[4:9] == "5.5.6", "long-line-500-5.5.6", text, text)

        # Control: a clean message on the same session is accepted and delivered.
        good = f"<good.{uuid.uuid4().hex}@raw.example.net>"
        body = (f"From: alice@example.net\r\nTo: bob@example.test\r\nMessage-ID: {good}\r\n"
                f"Subject: clean\r\n\r\nclean body\r\n.\r\n").encode()
        res = tx(r, "bob@example.test", body, "clean-after-refusals")
        if res:
            code, text = res
            c.check(code == 250, "clean-after-refusals-250", text, text)
        r.cmd("QUIT")
        sink = c.Sink(a.sink_out, os.devnull, 0)
        got = sink.wait_for(good, timeout=15)
        c.check(bool(got), "clean-after-refusals-delivered", f"sink got {good}",
                f"{good} not delivered within 15 s")
        if dots and a.dump_dir:
            body = None
            if sink.wait_for(dots, timeout=15):
                for f in sorted(os.listdir(a.dump_dir)):
                    data = open(os.path.join(a.dump_dir, f), "rb").read()
                    if dots.encode() in data:
                        body = data.split(b"\r\n\r\n", 1)[1]
            c.check(body == dot_body, "dot-transparency", "dot lines delivered unchanged",
                    f"sent body {dot_body!r}, sink got {body!r}")
        time.sleep(0.5)
        seen = {rec.get("message_id") for rec in sink.records()}
        leaked = [m for m in bad_ids if m in seen]
        c.check(not leaked, "refused-not-delivered", "nothing of the refused messages in the sink",
                f"delivered although refused: {leaked}")
        starttls_injection(a.port)
    except Exception as e:
        c.fail("raw-harness", f"{type(e).__name__}: {e}")
    c.finish()


if __name__ == "__main__":
    main()
