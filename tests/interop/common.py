"""Shared helpers for the interop tests: ports, configs, a sealpost server process, the
Python sink, and PASS/FAIL reporting (one line per check, counted by run.sh)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_BIN = os.path.join(ROOT, "target", "release", "sealpost")

_procs = []
failures = 0


def _on_term(signum, frame):
    raise SystemExit(128 + signum)


def install_signal_handlers():
    """SIGTERM (sent by run.sh's trap) unwinds through finally blocks, so children die too."""
    signal.signal(signal.SIGTERM, _on_term)


def ok(name, why=""):
    print(f"PASS {name}" + (f": {why}" if why else ""), flush=True)


def fail(name, why):
    global failures
    failures += 1
    print(f"FAIL {name}: {why}", flush=True)


def check(cond, name, why_ok, why_fail):
    if cond:
        ok(name, why_ok)
    else:
        fail(name, why_fail)
    return cond


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_banner(port, timeout=15.0, proc=None):
    """Wait until 127.0.0.1:port answers with a 220 greeting."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered 220 on 127.0.0.1:{port} within {timeout}s")


def hash_password(bin_path, password):
    r = subprocess.run([bin_path, "users", "hash"], input=password.encode(),
                       capture_output=True, check=True)
    return r.stdout.decode().strip()


def toml_str(s):
    return json.dumps(s)  # a JSON string is a valid TOML basic string for our inputs


def write_config(path, spool_dir, listeners, local_domains=(), trusted_networks=(),
                 routes=(), users=(), extra=""):
    """listeners: [(port, mode)]; routes: [(domain, port)]; users: [(name, hash)]."""
    lines = ["[server]", 'hostname = "mx.example.test"', f"spool_dir = {toml_str(spool_dir)}", ""]
    for port, mode in listeners:
        lines += ["[[listener]]", f'address = "127.0.0.1:{port}"', f'mode = "{mode}"', ""]
    lines += ["[relay]",
              f"local_domains = {json.dumps(list(local_domains))}",
              f"trusted_networks = {json.dumps(list(trusted_networks))}", ""]
    for name, h in users:
        lines += ["[[user]]", f"name = {toml_str(name)}", f"password_hash = {toml_str(h)}", ""]
    for domain, port in routes:
        lines += ["[[route]]", f"domain = {toml_str(domain)}", 'host = "127.0.0.1"',
                  f"port = {port}", ""]
    # Any MX lookup (e.g. for a bounce to a sender domain without a route) goes to a dead
    # loopback resolver, so a test can never send mail off this machine.
    lines += ["[dns]", 'nameservers = ["127.0.0.1:9"]', ""]
    lines.append(extra)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Proc:
    """A child process with its output appended to a log file."""

    def __init__(self, argv, log_path):
        self.argv = argv
        self.log_path = log_path
        self.p = None

    def start(self):
        log = open(self.log_path, "ab")
        self.p = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        log.close()
        _procs.append(self)
        return self

    def kill9(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()

    def stop(self, grace=10):
        if self.p and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill9()


class Server(Proc):
    def __init__(self, bin_path, config, log_path, port):
        super().__init__([bin_path, "serve", "--config", config], log_path)
        self.bin_path = bin_path
        self.config = config
        self.port = port

    def start(self, timeout=20):
        super().start()
        wait_banner(self.port, timeout, self.p)
        return self

    def queue(self):
        """The queued messages (list) from `queue list --json`, or None if it failed."""
        r = subprocess.run([self.bin_path, "queue", "list", "--json", "--config", self.config],
                           capture_output=True, timeout=20)
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout).get("messages")
        except ValueError:
            return None

    def wait_queue_empty(self, timeout=60):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = self.queue()
            if last == []:
                return True, last
            time.sleep(0.5)
        return False, last

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class Sink(Proc):
    def __init__(self, out, log_path, port):
        super().__init__([sys.executable, os.path.join(HERE, "sink.py"),
                          "--listen", f"127.0.0.1:{port}", "--out", out], log_path)
        self.out = out
        self.port = port

    def start(self):
        super().start()
        wait_banner(self.port, 15, self.p)
        return self

    def records(self):
        try:
            with open(self.out) as f:
                return [json.loads(l) for l in f if l.strip()]
        except FileNotFoundError:
            return []

    def wait_for(self, message_id, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            recs = [r for r in self.records() if r.get("message_id") == message_id]
            if recs:
                return recs
            time.sleep(0.1)
        return []


def stop_all():
    for p in reversed(_procs):
        try:
            p.stop(grace=5)
        except Exception:
            pass


def finish():
    stop_all()
    sys.exit(1 if failures else 0)
