"""`authfilter serve`'s log lines as a log pipeline or journald reads them: with
logging.format = "json" every line (start-up, message, reload, drain) is one JSON object with
time and level; under journald the plain lines carry the priority, not a second prefix."""
import json
import os
import signal
import smtplib
import subprocess
import sys
import time

import pytest

from tests.smtpsink import SmtpSink
from tests.support import free_port


@pytest.fixture
def sink():
    s = SmtpSink().start()
    yield s
    s.stop()


def run_serve(tmp_path, sink, log_format: str, *, journal: bool = False) -> list[str]:
    """Start serve (one worker), relay one message, reload, drain; its stderr lines."""
    port = free_port()
    config = tmp_path / "authfilter.toml"
    config.write_text(f'[logging]\nformat = "{log_format}"\n[proxy]\nworkers = 1\n'
                      f'upstream = "{sink.address}"\noffload_workers = 0\n[milter]\nlisteners = []\n'
                      f'[[proxy.listeners]]\naddress = "127.0.0.1:{port}"\n')
    read_end, write_end = os.pipe()
    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path))
    env.pop("JOURNAL_STREAM", None)
    if journal:                                   # what systemd sets for a journal stream
        st = os.fstat(write_end)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    proc = subprocess.Popen([sys.executable, "-m", "authfilter", "serve", "--config", str(config)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=write_end)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "serve did not listen"
                time.sleep(0.1)
        with client:
            client.sendmail("alice@example.org", ["bob@example.net"],
                            b"From: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with os.fdopen(read_end, "rb") as stream:
            text = stream.read().decode()
    return text.splitlines()


def test_json_logs_are_one_object_per_line_from_start_to_drain(tmp_path, sink):
    lines = run_serve(tmp_path, sink, "json")
    records = [json.loads(line) for line in lines]           # every line parses
    assert all({"time", "level", "logger", "pid"} <= r.keys() for r in records)
    assert all(r["time"].endswith("Z") for r in records)
    [message] = [r for r in records if r["logger"] == "authfilter.message"]
    assert message["action"] == "accept" and message["queue_id"] == "SINK0001"
    texts = [r.get("message", "") for r in records]
    assert any("listening on" in t for t in texts)           # start-up
    assert any("config reloaded" in t for t in texts)        # reload
    assert any("draining" in t for t in texts)               # drain


def test_under_journald_plain_lines_carry_the_priority_not_a_prefix(tmp_path, sink):
    lines = run_serve(tmp_path, sink, "kv", journal=True)
    assert lines and all(line.startswith(("<6>", "<4>", "<3>", "<7>")) for line in lines), lines
    assert not any("authfilter[" in line for line in lines)
    assert any(line.startswith("<6>INFO authfilter.message: ") and "action=accept" in line
               for line in lines)


def test_plain_lines_outside_journald_name_the_process(tmp_path, sink):
    lines = run_serve(tmp_path, sink, "kv")
    assert all(line.startswith("authfilter[") for line in lines), lines
