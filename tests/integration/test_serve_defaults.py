"""The README's first command: `authfilter serve` with no config file at all (embedded
defaults: 127.0.0.1:10025, relay to 127.0.0.1:10026, system resolver, SQLite store), run
from this interpreter and as the README writes it, in a fresh clone."""
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.test_readme import QUICK_START

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = Path("/usr/bin/python3")


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def serves_on_embedded_defaults(proc: subprocess.Popen, timeout: float = 20,
                                serve_pid=lambda proc: proc.pid) -> str:
    """Wait for the listener, check it answers as the embedded defaults say, stop it with
    SIGTERM (a drain) and return its output.  ``serve_pid``: which process is the server."""
    try:
        deadline = time.monotonic() + timeout
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
        os.kill(serve_pid(proc), signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert "listening on 127.0.0.1:10025 (inbound), relaying to 127.0.0.1:10026" in out
    return out


def child_of(proc: subprocess.Popen) -> int:
    """The shell's running command (the last of the README line: authfilter serve); the shell
    exits with its status."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == proc.pid:
            return int(stat.parent.name)
    return proc.pid


@pytest.fixture
def default_ports_free():
    if port_in_use(10025) or port_in_use(10026):
        pytest.skip("127.0.0.1:10025 or :10026 is in use (a filter or Postfix runs here)")


def test_serve_runs_on_embedded_defaults_and_drains_on_sigterm(tmp_path, default_ports_free):
    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path))      # the report store goes there
    serves_on_embedded_defaults(subprocess.Popen(
        [sys.executable, "-m", "authfilter", "serve"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))


def test_the_readme_install_line_works_in_a_fresh_clone_with_debians_python(tmp_path,
                                                                            default_ports_free):
    """The quick-start line as written (its apt-get step is .ci/run's, already done), with
    the distribution's Python first on PATH: a virtual environment, pip install, serve."""
    if not DEBIAN_PYTHON.exists() or subprocess.run([DEBIAN_PYTHON, "-c", "import ensurepip"],
                                                    capture_output=True).returncode != 0:
        pytest.skip("no /usr/bin/python3 with venv here (Debian package python3-venv)")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone = tmp_path / "authfilter"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    apt, _, rest = QUICK_START.partition(" && ")
    assert apt == "apt-get install -y python3-venv"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STATE_DIRECTORY": str(tmp_path),
           "LANG": "C.UTF-8"}
    out = serves_on_embedded_defaults(subprocess.Popen(
        ["/bin/sh", "-c", rest], cwd=clone, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT), timeout=600, serve_pid=child_of)
    venv_python = (clone / ".venv" / "bin" / "python3").resolve()
    assert venv_python == DEBIAN_PYTHON.resolve(), out       # Debian's interpreter, in a venv
