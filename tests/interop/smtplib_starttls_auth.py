#!/usr/bin/env python3
"""Python smtplib against sealpost: STARTTLS + AUTH on a submission listener, AUTH refused
before TLS, wrong password, implicit TLS (submissions), and relay refusal for an untrusted,
unauthenticated client (trusted_networks is empty in this server's config); then the audit
log those sessions left, checked with Python alone (audit_check.py)."""
import argparse
import base64
import os
import smtplib
import ssl
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402
from audit_check import check_audit  # noqa: E402

USER, PASSWORD = "app@example.test", "correct horse battery staple"


def insecure_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed
    return ctx


def message(mid, rcpt):
    return (f"From: {USER}\r\nTo: {rcpt}\r\nSubject: smtplib interop\r\n"
            f"Message-ID: {mid}\r\n\r\nhello from smtplib\r\n").encode()


def send_tx(s, rcpt):
    """MAIL/RCPT/DATA by hand so the DATA reply (code, text) can be checked."""
    mid = f"<{uuid.uuid4().hex}@interop.example.net>"
    code, msg = s.mail(USER)
    if code != 250:
        return mid, code, msg
    code, msg = s.rcpt(rcpt)
    if code != 250:
        return mid, code, msg
    code, msg = s.data(message(mid, rcpt))
    return mid, code, msg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=c.DEFAULT_BIN)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    c.install_signal_handlers()
    w = a.workdir
    os.makedirs(w, exist_ok=True)
    sub_port, subs_port, relay_port, sink_port = (c.free_port() for _ in range(4))
    try:
        sink = c.Sink(os.path.join(w, "sink.jsonl"), os.path.join(w, "sink.log"), sink_port).start()
        cfg = os.path.join(w, "sealpost.toml")
        c.write_config(
            cfg, os.path.join(w, "spool"),
            listeners=[(sub_port, "submission"), (subs_port, "submissions"), (relay_port, "relay")],
            local_domains=["example.test"], trusted_networks=[],
            routes=[("example.test", sink_port), ("remote.example", sink_port)],
            users=[(USER, c.hash_password(a.bin, PASSWORD))])
        srv = c.Server(a.bin, cfg, os.path.join(w, "server.log"), sub_port).start()
        c.wait_banner(relay_port, 10, srv.p)

        # 1. AUTH before STARTTLS: not advertised, and refused when sent anyway.
        with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as s:
            s.ehlo("client.example.net")
            c.check(not s.has_extn("auth"), "auth-not-offered-before-tls",
                    "EHLO without TLS does not advertise AUTH",
                    f"AUTH advertised before TLS: {s.esmtp_features.get('auth')!r}")
            try:
                s.login(USER, PASSWORD)
                c.fail("auth-before-starttls-refused", "login() succeeded without TLS")
            except smtplib.SMTPNotSupportedError:
                c.ok("auth-before-starttls-refused", "smtplib refuses: AUTH not supported")
            creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            code, msg = s.docmd("AUTH", "PLAIN " + creds)
            c.check(code in (530, 538), "auth-plain-before-starttls-code",
                    f"{code} {msg.decode()}", f"expected 530/538, got {code} {msg.decode()}")
            code, msg = s.mail(USER)
            c.check(code == 530, "mail-without-auth-on-submission",
                    f"{code} {msg.decode()}", f"expected 530, got {code} {msg.decode()}")

        # 2. STARTTLS, wrong password -> 535.
        with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as s:
            s.starttls(context=insecure_ctx())
            s.ehlo("client.example.net")
            try:
                s.login(USER, "wrong password")
                c.fail("wrong-password-535", "login() with a wrong password succeeded")
            except smtplib.SMTPAuthenticationError as e:
                c.check(e.smtp_code == 535, "wrong-password-535", f"{e.smtp_code} {e.smtp_error.decode()}",
                        f"expected 535, got {e.smtp_code} {e.smtp_error!r}")

        # 2b. AUTH LOGIN works; AUTH PLAIN with an authzid other than the user is refused.
        with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as s:
            s.starttls(context=insecure_ctx())
            s.ehlo("client.example.net")
            s.user, s.password = USER, PASSWORD
            code, msg = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
            c.check(code == 235, "auth-login", f"{code} {msg.decode()}", f"{code} {msg.decode()}")
        with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as s:
            s.starttls(context=insecure_ctx())
            s.ehlo("client.example.net")
            creds = base64.b64encode(f"boss@example.test\0{USER}\0{PASSWORD}".encode()).decode()
            code, msg = s.docmd("AUTH", "PLAIN " + creds)
            c.check(code == 535, "auth-plain-foreign-authzid-refused", f"{code} {msg.decode()}",
                    f"authzid boss@ with {USER}'s password: {code} {msg.decode()}")

        # 3. STARTTLS + AUTH + send to a routed, non-local domain (auth allows relaying).
        with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as s:
            code, msg = s.starttls(context=insecure_ctx())
            c.check(code == 220, "starttls", f"{code} {msg.decode()}", f"{code} {msg.decode()}")
            s.ehlo("client.example.net")
            c.check(s.has_extn("auth"), "auth-offered-after-tls", s.esmtp_features.get("auth", ""),
                    "AUTH not advertised after STARTTLS")
            code, msg = s.login(USER, PASSWORD)
            c.check(code == 235, "login", f"{code} {msg.decode()}", f"{code} {msg.decode()}")
            mid, code, msg = send_tx(s, "bob@remote.example")
            if c.check(code == 250 and b"queued as" in msg, "submission-send-250",
                       f"{code} {msg.decode()}", f"{code} {msg.decode()}"):
                got = sink.wait_for(mid)
                c.check(len(got) == 1 and got[0]["rcpts"] == ["bob@remote.example"]
                        and got[0]["mail_from"] == USER,
                        "submission-delivered", f"sink got {mid}", f"sink records for {mid}: {got}")

        # 4. Implicit TLS (submissions) + AUTH + send.
        with smtplib.SMTP_SSL("127.0.0.1", subs_port, timeout=10, context=insecure_ctx()) as s:
            s.ehlo("client.example.net")
            code, msg = s.login(USER, PASSWORD)
            mid, code, msg = send_tx(s, "bob@example.test")
            if c.check(code == 250, "submissions-send-250", f"{code} {msg.decode()}",
                       f"{code} {msg.decode()}"):
                got = sink.wait_for(mid)
                c.check(len(got) == 1, "submissions-delivered", f"sink got {mid}",
                        f"sink records for {mid}: {got}")

        # 5. Relay listener, untrusted client (trusted_networks = []), no auth.
        with smtplib.SMTP("127.0.0.1", relay_port, timeout=10) as s:
            s.ehlo("client.example.net")
            code, msg = s.mail("mallory@example.net")
            c.check(code == 250, "relay-mail-from", f"{code}", f"{code} {msg.decode()}")
            code, msg = s.rcpt("victim@remote.example")
            c.check(code == 550 and msg.startswith(b"5.7.1"), "relay-denied-550-5.7.1",
                    f"{code} {msg.decode()}", f"expected 550 5.7.1, got {code} {msg.decode()}")
            # A source route through a local domain must not turn a foreign rcpt local.
            code, msg = s.docmd("RCPT", "TO:<@example.test:victim@remote.example>")
            c.check(code == 550 and msg.startswith(b"5.7.1"), "relay-denied-source-route",
                    f"{code} {msg.decode()}", f"expected 550 5.7.1, got {code} {msg.decode()}")
            code, msg = s.rcpt("bob@example.test")
            c.check(code == 250, "relay-local-domain-accepted", f"{code} {msg.decode()}",
                    f"local domain refused: {code} {msg.decode()}")
            s.rset()
    except Exception as e:  # a crash of the test itself is a failure, not a traceback only
        c.fail("smtplib-harness", f"{type(e).__name__}: {e}")
    finally:
        c.stop_all()
    try:
        check_audit(a.bin, cfg, os.path.join(w, "spool", "audit.jsonl"),
                    secrets=[PASSWORD, "wrong password", "hello from smtplib"],
                    want_actions=["server.started", "auth.failed", "auth.succeeded",
                                  "message.accepted", "server.stopped"])
    except Exception as e:
        c.fail("audit-harness", f"{type(e).__name__}: {e}")
    c.finish()


if __name__ == "__main__":
    main()
