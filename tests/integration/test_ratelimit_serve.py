"""Rate limits as an operator runs them: two ``authfilter serve`` instances (two MX nodes, two
workers each) sharing the real Redis on 127.0.0.1:6379; and one whose Redis is down."""
from __future__ import annotations

import socket
import urllib.request
import uuid

import pytest

from tests.e2e.stack import Authfilter
from tests.integration.test_proxy_smtp import Dialog
from tests.mailtools import message, publish_domain, signed
from tests.support import free_port, wait_for

REDIS = ("127.0.0.1", 6379)


def redis_running() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not redis_running(),
                                reason="no Redis on 127.0.0.1:6379 (.ci/run starts one)")


def serve(tmp_path, zone, sink, name: str, redis: str, prefix: str, *,
          metrics_port: int | None = None) -> Authfilter:
    port = free_port()
    config = tmp_path / f"{name}.toml"
    metrics = f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n' if metrics_port else ""
    config.write_text(
        f'[general]\nauthserv_id = "mx.test"\n'
        f'[dns]\nnameservers = ["{zone.address}"]\n'
        f'[policy]\ntrusted_networks = []\n'
        f'[proxy]\nworkers = 2\noffload_workers = 0\nupstream = "{sink.address}"\n'
        f'[[proxy.listeners]]\naddress = "127.0.0.1:{port}"\n'
        f'[milter]\nlisteners = []\n'
        f'[ratelimit]\nredis = "{redis}"\nkey_prefix = "{prefix}"\n'
        f'[[ratelimit.rules]]\nkey = "client_ip"\nlimit = 10\nperiod = 3600\n' + metrics)
    instance = Authfilter(config, port, tmp_path / f"{name}.log")
    instance.start()
    return instance


def send(port: int, client_ip: str) -> tuple[bytes, bytes | None]:
    """One message as Postfix hands it to a before-queue filter: RCPT's reply, DATA's."""
    d = Dialog(port)
    try:
        d.cmd(b"EHLO postfix.example")
        d.cmd(b"XFORWARD NAME=client.example ADDR=" + client_ip.encode())
        d.cmd(b"MAIL FROM:<alice@example.org>")
        rcpt = d.cmd(b"RCPT TO:<bob@example.net>")
        if not rcpt.startswith(b"250"):
            return rcpt, None
        d.cmd(b"DATA")
        d.sock.sendall(signed(message()) + b".\r\n")
        return rcpt, d.reply()
    finally:
        d.close()


@pytest.fixture
def instances():
    started: list[Authfilter] = []
    yield started
    for instance in started:
        instance.stop()


def test_two_nodes_share_one_limit(tmp_path, zone, sink, instances):
    publish_domain(zone, "example.org")
    prefix = f"test:{uuid.uuid4().hex}:"
    a = serve(tmp_path, zone, sink, "a", "redis://127.0.0.1:6379/0", prefix)
    b = serve(tmp_path, zone, sink, "b", "redis://127.0.0.1:6379/0", prefix)
    instances += [a, b]
    replies = [send((a if i % 2 else b).port, "192.0.2.50") for i in range(15)]
    accepted = [r for r in replies if r[0].startswith(b"250")]
    limited = [r for r in replies if not r[0].startswith(b"250")]
    assert len(accepted) == 10 and all(data.startswith(b"250") for _, data in accepted)
    assert len(limited) == 5
    assert all(rcpt.startswith(b"451 4.7.28 ") for rcpt, _ in limited), limited[0]
    assert b"try again in" in limited[0][0]
    assert send(a.port, "192.0.2.51")[0].startswith(b"250")        # another client
    assert len(sink.messages) == 11
    assert "defence=ratelimit" in a.log_text() + b.log_text()


def test_with_redis_down_mail_flows_and_the_limiter_says_so(tmp_path, zone, sink, instances):
    publish_domain(zone, "example.org")
    metrics_port = free_port()
    down = serve(tmp_path, zone, sink, "down", f"redis://127.0.0.1:{free_port()}/0", "x:",
                 metrics_port=metrics_port)
    instances.append(down)
    replies = [send(down.port, "192.0.2.52") for _ in range(12)]
    assert all(rcpt.startswith(b"250") and data.startswith(b"250") for rcpt, data in replies)
    assert wait_for(lambda: "redis" in down.log_text().lower(), timeout=5), down.log_text()[-2000:]

    def redis_up() -> str:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                      timeout=5).read().decode()
        return "".join(line for line in text.splitlines()
                       if line.startswith("authfilter_ratelimit_redis_up"))
    assert wait_for(lambda: redis_up().endswith(" 0.0"), timeout=5), redis_up()
