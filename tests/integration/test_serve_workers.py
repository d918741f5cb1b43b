"""Worker lifecycle under `authfilter serve`: a worker killed with SIGKILL takes its helper
processes (offload pool, forkserver, resource tracker) with it, the supervisor starts a new
one, and after a stop no process of ours remains.  With several workers one metrics endpoint
counts every message, and a message the upstream refused after our accept is logged and
counted as refused."""
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from authfilter.metrics import ACTIONS, UPSTREAM_ERRORS
from tests.scrape import scrape
from tests.smtpsink import SmtpSink
from tests.support import alive, children, descendants, free_port, serve, wait_for


def test_a_killed_worker_leaves_nothing_behind_and_a_stop_leaves_nothing(tmp_path):
    port = free_port()
    proc = serve(tmp_path, f'[proxy]\nworkers = 2\noffload_workers = 1\nupstream = "127.0.0.1:{free_port()}"\n'
                           f'[milter]\nlisteners = []\n[[proxy.listeners]]\naddress = "127.0.0.1:{port}"\n')
    try:
        # two workers, each with its forkserver, pool process and resource tracker
        assert wait_for(lambda: len(descendants(proc.pid)) >= 2 * 4), descendants(proc.pid)
        workers = children(proc.pid)
        victim = min(workers)
        helpers = descendants(victim)
        assert helpers, "the worker has helper processes"
        seen = descendants(proc.pid)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: not alive(helpers)), f"left behind: {alive(helpers)}"
        assert wait_for(lambda: len(children(proc.pid) - {victim}) == 2)   # restarted
        seen |= descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert wait_for(lambda: not alive(seen), 10), f"still running: {alive(seen)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def message_lines(stderr: Path) -> list[tuple[int, str]]:
    """(worker pid, line) of every message log line so far."""
    return [(int(m.group(1)), m.group(2)) for m in
            re.finditer(r"^authfilter\[(\d+)\]: INFO authfilter\.message: (.*)$",
                        stderr.read_text(), re.MULTILINE)]


def test_one_metrics_endpoint_counts_every_message_of_every_worker(tmp_path):
    sink = SmtpSink().start()
    port, metrics_port = free_port(), free_port()
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as log:
        proc = serve(tmp_path, f'[proxy]\nworkers = 2\noffload_workers = 0\nupstream = "{sink.address}"\n'
                               f'[milter]\nlisteners = []\n[[proxy.listeners]]\naddress = "127.0.0.1:{port}"\n'
                               f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n', stderr=log)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    accepted = lambda: scrape(url)[("authfilter_messages_total", (("action", "accept"),))]

    def send(n: int = 1) -> None:
        for _ in range(n):                    # a connection each: the kernel spreads them
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("alice@example.org", ["bob@example.net"],
                                b"From: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n")
    try:
        assert wait_for(lambda: stderr.read_text().count("listening on") == 2), stderr.read_text()
        before = scrape(url)                  # every series a panel draws, at 0
        for action in ACTIONS:
            assert before[("authfilter_messages_total", (("action", action),))] == 0
        for kind in UPSTREAM_ERRORS:
            assert before[("authfilter_upstream_errors_total", (("kind", kind),))] == 0
        assert before[("authfilter_sessions_open", ())] == 0
        assert before[("process_resident_memory_bytes", ())] > 0          # the supervisor
        for slot in ("0", "1"):
            assert before[("authfilter_worker_restarts_total", (("worker", slot),))] == 0
            assert before[("process_resident_memory_bytes", (("worker", slot),))] > 0

        send(10)
        while len({pid for pid, _ in message_lines(stderr)}) < 2 and len(message_lines(stderr)) < 40:
            send()                            # until both workers have taken some
        sent = len(message_lines(stderr))
        assert len({pid for pid, _ in message_lines(stderr)}) == 2
        assert accepted() == sent and scrape(url)[("authfilter_sessions_total", ())] == sent

        sink.data_reply = b"451 4.3.0 Error: queue file write error"
        for _ in range(3):
            with pytest.raises(smtplib.SMTPDataError) as refused:
                send()
            assert refused.value.smtp_code == 451
        sink.data_reply = None
        s = scrape(url)
        assert s[("authfilter_upstream_errors_total", (("kind", "refused"),))] == 3
        assert accepted() == sent + 3         # the policy's decision, still counted as such
        lines = [line for _, line in message_lines(stderr)]
        refusals = [line for line in lines if "outcome=refused" in line]
        assert len(refusals) == 3 and all("action=accept" in line and
                                          'upstream="451 4.3.0 Error: queue file write error"' in line
                                          for line in refusals)
        assert sum("outcome=delivered" in line for line in lines) == sent

        victim = min(children(proc.pid))
        os.kill(victim, signal.SIGKILL)
        restarts = lambda: sum(v for (name, _), v in scrape(url).items()
                               if name == "authfilter_worker_restarts_total")
        assert wait_for(lambda: restarts() == 1)
        assert accepted() == sent + 3         # what the killed worker counted is kept
        send()
        assert accepted() == sent + 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sink.stop()


def test_a_busy_metrics_address_stops_the_supervisor_with_its_name(tmp_path):
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        config = tmp_path / "authfilter.toml"
        config.write_text(f'[proxy]\nworkers = 2\noffload_workers = 0\nupstream = "127.0.0.1:1"\n'
                          f'[milter]\nlisteners = []\n[[proxy.listeners]]\naddress = "127.0.0.1:{port}"\n'
                          f'[metrics]\nlisten = "127.0.0.1:{taken}"\n')
        done = subprocess.run([sys.executable, "-m", "authfilter", "serve", "--config", str(config)],
                              env=dict(os.environ, STATE_DIRECTORY=str(tmp_path)), cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot listen: " in done.stderr and f"metrics endpoint 127.0.0.1:{taken}: " in done.stderr
    assert "started 2 workers" not in done.stderr


def test_workers_stop_when_the_supervisor_is_killed(tmp_path):
    """A supervisor killed with SIGKILL cannot drain its workers; they drain themselves
    (PR_SET_PDEATHSIG) instead of keeping the ports forever."""
    port = free_port()
    proc = serve(tmp_path, f'[proxy]\nworkers = 2\noffload_workers = 0\nupstream = "127.0.0.1:{free_port()}"\n'
                           f'[milter]\nlisteners = []\n[[proxy.listeners]]\naddress = "127.0.0.1:{port}"\n')
    try:
        assert wait_for(lambda: len(children(proc.pid)) == 2)
        workers = children(proc.pid)
        proc.kill()
        proc.wait(timeout=10)
        assert wait_for(lambda: not alive(workers), 30), f"still running: {alive(workers)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
