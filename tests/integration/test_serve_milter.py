"""`authfilter serve` runs the milter beside the proxy: `[[milter.listeners]]` on a socket (unix
or TCP) shared by two workers, the same pipeline, policy and log line.  A Postfix-like MTA side
(tests/miltermta.py) talks to it; DNS through the loopback server."""
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from authfilter.milter.codec import SMFIR_ACCEPT, SMFIR_REPLYCODE
from authfilter.milter.acceptor import BUSY_WINDOW
from tests.mailtools import header_fields, message, publish_domain, signed
from tests.miltermta import MilterClient
from tests.support import free_port, wait_for

MACROS = {b"{daemon_name}": b"mx.test", b"j": b"mx.test", b"v": b"Postfix 3.7.11"}


def deliver(address: str, raw: bytes, mail_from: bytes, queue_id: bytes):
    with MilterClient(address, macros=MACROS) as client:
        client.negotiate()
        client.connect(b"mail.example.org", b"127.0.0.1")
        client.helo(b"mail.example.org")
        outcome = client.message(raw, mail_from, [b"<bob@example.net>"], queue_id)
        client.quit()
    return outcome


def serve_two_workers(zone, tmp_path, milter_address: str, stdout,
                      extra: str = "") -> subprocess.Popen:
    """`authfilter serve`, 2 workers: an idle proxy listener and the milter on
    ``milter_address`` (``unix:PATH``, mode 0600, or ``HOST:PORT``)."""
    config = tmp_path / "authfilter.toml"
    config.write_text(f'[general]\nauthserv_id = "mx.test"\n[dns]\nnameservers = ["{zone.address}"]\n'
                      f'[policy]\ntrusted_networks = []\n'
                      f'[proxy]\nworkers = 2\n{extra}upstream = "127.0.0.1:{free_port()}"\n'
                      f'[[proxy.listeners]]\naddress = "127.0.0.1:{free_port()}"\n'
                      f'[[milter.listeners]]\naddress = "{milter_address}"\n'
                      + ('socket_mode = 0o600\n' if milter_address.startswith("unix:") else ""))
    return subprocess.Popen([sys.executable, "-m", "authfilter", "serve", "--config", str(config)],
                            env=dict(os.environ, STATE_DIRECTORY=str(tmp_path)), cwd=tmp_path,
                            stdout=stdout, stderr=subprocess.STDOUT)


def test_serve_answers_milter_and_proxy_side_by_side(zone, tmp_path):
    publish_domain(zone, "example.org")
    sock = tmp_path / "run" / "milter.sock"
    sock.parent.mkdir()
    proc = serve_two_workers(zone, tmp_path, f"unix:{sock}", subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no milter socket"
            time.sleep(0.1)
        time.sleep(0.5)                                     # both workers up
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        address = f"unix:{sock}"
        passed = deliver(address, signed(message()), b"<alice@example.org>", b"4QA1")
        assert passed.final == SMFIR_ACCEPT
        first = header_fields(passed.delivered)[0]
        assert first[0] == "Authentication-Results" and first[1].startswith("mx.test;")
        assert "dmarc=pass" in first[1]
        spoof = deliver(address, message(), b"<x@elsewhere.example>", b"4QA2")
        assert spoof.final == SMFIR_REPLYCODE
        assert spoof.reply.startswith(b"550 5.7.26 ")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    assert "; milter on unix:" in out
    lines = [line for line in out.splitlines() if "authfilter.message:" in line]
    assert any("action=accept" in line and "queue_id=4QA1" in line for line in lines), lines
    assert any("action=reject" in line for line in lines), lines
    assert not sock.exists()                                 # removed at the end


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_two_workers_fill_the_first_and_the_second_serves_when_it_stalls(zone, tmp_path,
                                                                        transport):
    """At a light load every connection goes to one worker (cheaper than spreading them); a
    worker that stops answering (SIGSTOP) does not strand them: the other takes over.  The
    same on TCP, where each worker's own SO_REUSEPORT socket would spread them evenly and
    strand those the kernel gave the stopped one."""
    publish_domain(zone, "example.org")
    address = (f"unix:{tmp_path / 'milter.sock'}" if transport == "unix"
               else f"127.0.0.1:{free_port()}")
    log = tmp_path / "out"
    with log.open("wb") as out:
        proc = serve_two_workers(zone, tmp_path, address, out, extra="offload_workers = 0\n")

    def handled_by() -> list[int]:
        """The worker of each message so far, from its session id (pid in hex)."""
        return [int(line.split("session=")[1].split(".")[0], 16)
                for line in log.read_text().splitlines() if "authfilter.message:" in line]

    stopped = None
    try:
        assert wait_for(lambda: log.read_text().count("listening on") >= 2), log.read_text()
        for n in range(2):          # warm up: a first message's CPU can make a worker "busy"
            deliver(address, signed(message()), b"<alice@example.org>", b"4QW%d" % n)
        time.sleep(BUSY_WINDOW + 0.2)
        for n in range(20):
            assert deliver(address, signed(message()), b"<alice@example.org>",
                           b"4QB%02d" % n).final == SMFIR_ACCEPT
        assert wait_for(lambda: len(handled_by()) == 22)
        workers = handled_by()[2:]
        first = max(set(workers), key=workers.count)
        # one worker took nearly all (spread evenly it was 10 of 20; a loaded machine may keep
        # the first from its loop past the spill delay once or twice)
        assert workers.count(first) >= 16, workers
        stopped = first
        os.kill(first, signal.SIGSTOP)
        started = time.monotonic()
        assert deliver(address, signed(message()), b"<alice@example.org>",
                       b"4QB99").final == SMFIR_ACCEPT
        assert time.monotonic() - started < 5
        assert wait_for(lambda: len(handled_by()) == 23)
        assert handled_by()[-1] != first
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()
