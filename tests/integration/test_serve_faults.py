"""Faults under a real `authfilter serve`, as an SMTP client and the next MTA (the sink) see
them: a worker killed in the middle of DATA, the report store down, a DNS server that does not
answer.  In each, nothing is lost (the client never hears 250 for mail the sink does not have)
and nothing is doubled (the retry arrives once)."""
from __future__ import annotations

import os
import signal
import smtplib
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from authfilter.reports.backends import open_store
from tests.e2e.stack import delivered
from tests.integration.test_proxy import results_headers
from tests.integration.test_proxy_smtp import Dialog
from tests.integration.test_report_fixtures import pg_url  # noqa: F401  (fixture)
from tests.mailtools import message, publish_domain, signed
from tests.support import children, free_port, serve, wait_for


def config(sink, nameserver: str, port: int, *, workers: int = 1, extra: str = "",
           dns: str = "", policy: str = "") -> str:
    """One inbound listener on ``port`` relaying to the sink, DNS from ``nameserver`` (IP:PORT),
    nothing trusted, no milter."""
    return (f'[general]\nauthserv_id = "mx.test"\n'
            f'[dns]\nnameservers = ["{nameserver}"]\n{dns}'
            f'[policy]\ntrusted_networks = []\n{policy}'
            f'[proxy]\nworkers = {workers}\noffload_workers = 0\nupstream = "{sink.address}"\n'
            f'[[proxy.listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[milter]\nlisteners = []\n' + extra)


class Served:
    """`authfilter serve` (tests.support.serve) with its stderr kept in a file."""

    def __init__(self, tmp_path: Path, config_text: str, listening: int = 1) -> None:
        self.log = tmp_path / "stderr"
        with self.log.open("wb") as stderr:
            self.proc = serve(tmp_path, config_text, stderr=stderr)
        if not wait_for(lambda: self.text().count("listening on") >= listening
                        or self.proc.poll() is not None, 30) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError(f"serve did not start:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (a drain) and its exit status; SIGKILL if it does not stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def started():
    running: list[Served] = []

    def start(*args, **kwargs) -> Served:
        running.append(Served(*args, **kwargs))
        return running[-1]
    yield start
    for s in running:
        s.stop()


def send(port: int, raw: bytes, mail_from: str = "alice@example.org") -> tuple[int, bytes]:
    """One message in one session; the reply to its data (or to the first refused command)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        for reply in (client.mail(mail_from), client.rcpt("bob@example.net")):
            if reply[0] != 250:
                return reply
        return client.data(raw)


# -- a worker killed mid-DATA --------------------------------------------------------------------
def server_end(client: socket.socket, pids: set[int]) -> int:
    """Which of ``pids`` holds the server end of ``client``'s loopback TCP connection
    (/proc/net/tcp: the socket's inode; /proc/PID/fd: who has it open)."""
    ours, theirs = client.getsockname()[1], client.getpeername()[1]
    local, remote = f"0100007F:{theirs:04X}", f"0100007F:{ours:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    inodes = {f[9] for f in rows if f[1] == local and f[2] == remote}
    assert len(inodes) == 1, inodes
    target = f"socket:[{inodes.pop()}]"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no process of {pids} holds {target}")


def reply_or_close(d: Dialog) -> bytes:
    try:
        return d.reply()
    except ConnectionResetError:
        return b"(reset)"


def test_a_worker_killed_during_data_loses_nothing_and_the_retry_arrives_once(
        tmp_path, zone, sink, started):
    """Two workers; the one holding the client's connection is SIGKILLed after DATA and half
    the message.  The client sees the connection close (never a 250), the sink got MAIL and
    RCPT but no DATA, the supervisor starts a new worker, and the client's retry of the same
    message is accepted with 250 and arrives whole, once."""
    publish_domain(zone, "example.org")
    sink.reset()
    port = free_port()
    served = started(tmp_path, config(sink, zone.address, port, workers=2), listening=2)
    raw = signed(message(message_id="<killed@example.org>", body=b"Hello.\r\n" * 2000))
    d = Dialog(port)
    try:
        assert d.cmd(b"EHLO client.example").startswith(b"250")
        assert d.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")
        assert d.cmd(b"RCPT TO:<bob@example.net>").startswith(b"250")
        assert d.cmd(b"DATA").startswith(b"354")
        d.sock.sendall(raw[:len(raw) // 2])                      # no end of data
        workers = children(served.proc.pid)
        victim = server_end(d.sock, workers)
        os.kill(victim, signal.SIGKILL)
        answer = reply_or_close(d)
        assert answer in (b"(closed)", b"(reset)") or answer[:1] == b"4", answer
    finally:
        d.close()
    assert wait_for(lambda: f"worker {victim} exited with -9" in served.text()), served.text()
    assert sink.messages == [] and b"DATA" not in sink.commands     # the next MTA has nothing
    # the supervisor starts a new worker in the victim's place
    assert wait_for(lambda: served.text().count("listening on") == 3), served.text()
    assert len(children(served.proc.pid) - {victim}) == 2
    assert send(port, raw)[0] == 250                                # the client's retry
    [copy] = delivered(sink, "<killed@example.org>")
    assert copy.content.endswith(b"Hello.\r\n" * 2000)             # whole, once
    assert served.stop() == 0
    assert len(sink.messages) == 1


# -- the report store down -----------------------------------------------------------------------
class PortForward:
    """A TCP relay from 127.0.0.1:``port`` to ``target``: the store "comes back" when it starts."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.target = target
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a = self.listener.accept()[0]
            except OSError:
                return
            b = socket.create_connection(self.target)
            self.sockets += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def test_with_the_report_store_down_mail_flows_and_the_rows_follow_when_it_is_back(
        tmp_path, zone, sink, started, pg_url):
    """PostgreSQL (the shared store of several nodes) unreachable: connection refused at a
    loopback port; later the port forwards to the real server.  Mail is relayed with 250 all
    along, serve warns once (no traceback), and the buffered rows are written once the store
    answers: one per message, none twice."""
    publish_domain(zone, "example.org")
    sink.reset()
    store_port, port = free_port(), free_port()
    real = urlsplit(pg_url)
    user = real.netloc.rpartition("@")[0]
    down_url = urlunsplit(real._replace(netloc=f"{user}@127.0.0.1:{store_port}" if user
                                        else f"127.0.0.1:{store_port}"))
    reports = f'[reports]\nstore = "{down_url}"\nflush_interval = 0.1\n'
    served = started(tmp_path, config(sink, zone.address, port, extra=reports))
    for i in range(3):
        assert send(port, signed(message(message_id=f"<r{i}@example.org>")))[0] == 250
    assert wait_for(lambda: "report store unavailable" in served.text(), 10), served.text()
    assert len(sink.messages) == 3
    forward = PortForward(store_port, (real.hostname, real.port or 5432))
    try:
        store = open_store(pg_url)
        try:
            assert wait_for(lambda: store.count_rows(0, 2 ** 40) == 3, 20)
            assert send(port, signed(message(message_id="<r3@example.org>")))[0] == 250
            assert served.stop() == 0                      # flushes the last row
            assert store.count_rows(0, 2 ** 40) == 4
        finally:
            store.close()
    finally:
        forward.close()
    text = served.text()
    [warning] = [line for line in text.splitlines() if "report store" in line]
    assert " WARNING authfilter.reports: report store unavailable, " in warning
    assert f"127.0.0.1:{store_port}" in warning and "cannot connect" in warning
    assert "Traceback" not in text and "rows lost" not in text
    assert "\n\t" not in text                      # psycopg's multi-line text on one line
    assert len(sink.messages) == 4


# -- DNS that does not answer --------------------------------------------------------------------
FAST_DNS = "timeout = 0.2\nlifetime = 0.5\n"


def test_dns_timeouts_under_p_reject_are_451_and_dry_run_delivers(tmp_path, zone, sink, started):
    """example.org publishes p=reject, but its SPF record and DKIM key do not answer (serve's
    own resolver, built from [dns]): DMARC cannot be concluded, the client gets 451 (never 550)
    within a few DNS lifetimes and the sink nothing.  The same message after a reload to
    dry_run is delivered once, tagged dmarc=temperror."""
    publish_domain(zone, "example.org")
    zone.misbehave("example.org", "timeout")
    zone.misbehave("sel._domainkey.example.org", "timeout")
    sink.reset()
    port = free_port()
    served = started(tmp_path, config(sink, zone.address, port, dns=FAST_DNS))
    raw = signed(message(message_id="<dns@example.org>"))
    began = time.monotonic()
    code, text = send(port, raw)
    assert code == 451 and text.startswith(b"4."), (code, text)
    assert time.monotonic() - began < 10
    assert sink.messages == []
    assert "dmarc=temperror" in served.text()

    (tmp_path / "authfilter.toml").write_text(config(sink, zone.address, port, dns=FAST_DNS,
                                                     policy="dry_run = true\n"))
    served.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "config reloaded" in served.text()), served.text()
    assert send(port, raw)[0] == 250
    [copy] = delivered(sink, "<dns@example.org>")
    [ours] = results_headers(copy.content)
    assert "dmarc=temperror" in ours, ours
    assert served.stop() == 0


def test_a_nameserver_that_never_answers_is_no_5xx_and_no_hang(tmp_path, zone, sink, started):
    """The configured nameserver is dead (a UDP port nobody reads): no DMARC record can be
    read, so the p=reject example.org publishes is unknown; the default policy accepts that
    temperror (temperror = "accept": "no record read") and tags it.  The reply comes within
    the DNS lifetimes, never a 5xx, and the message is relayed once."""
    publish_domain(zone, "example.org")
    sink.reset()
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{silent.getsockname()[1]}"
        served = started(tmp_path, config(sink, dead, port, dns=FAST_DNS))
        began = time.monotonic()
        code, text = send(port, signed(message(message_id="<dead@example.org>")))
        elapsed = time.monotonic() - began
        assert served.stop() == 0
    assert code == 250, (code, text)
    assert elapsed < 10
    [copy] = delivered(sink, "<dead@example.org>")
    [ours] = results_headers(copy.content)
    assert "dmarc=temperror" in ours and "dkim=temperror" in ours, ours
    assert zone.queries == []                       # the loopback zone was never asked
