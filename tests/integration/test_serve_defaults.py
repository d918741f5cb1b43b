"""The README's first command: `authfilter serve` with no config file at all (embedded
defaults: 127.0.0.1:10025, relay to 127.0.0.1:10026, system resolver, SQLite store)."""
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serve_runs_on_embedded_defaults_and_drains_on_sigterm(tmp_path):
    if port_in_use(10025) or port_in_use(10026):
        pytest.skip("127.0.0.1:10025 or :10026 is in use (a filter or Postfix runs here)")
    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path))      # the report store goes there
    proc = subprocess.Popen([sys.executable, "-m", "authfilter", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not port_in_use(10025):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "authfilter serve did not listen on 10025"
            time.sleep(0.1)
        with smtplib.SMTP("127.0.0.1", 10025, timeout=10) as client:
            code, features = client.ehlo("client.example")
            assert code == 250 and b"XFORWARD" in features and b"SMTPUTF8" in features
            # nothing listens on 127.0.0.1:10026 here: the client must get a 4xx, not a 250
            code, _ = client.mail("a@example.org")
            if code == 250:
                code, _ = client.rcpt("b@example.net")
            assert 400 <= code < 500
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert "listening on 127.0.0.1:10025 (inbound), relaying to 127.0.0.1:10026" in out
