"""The early defences through both front-ends, DNS from the loopback DNS server: a client on a
DNS blocklist is refused 554 at RCPT by the proxy (the upstream never sees the recipient) and
by the milter (SMFIR_REPLYCODE at RCPT); a client not listed goes through."""
from __future__ import annotations

import pytest

from authfilter.milter.codec import SMFIP_NR_RCPT, SMFIR_CONTINUE, SMFIR_REPLYCODE
from authfilter.config import DnsblListConfig
from tests.integration.test_milter_session import MilterThread, milter_config, session
from tests.integration.test_proxy_smtp import Dialog
from tests.mailtools import message, publish_domain, signed
from tests.proxyrunner import proxy_config

LISTED_IP, CLEAN_IP = "192.0.2.66", "192.0.2.67"
ZONE = "bl.test"


def blocklist(config, **list_settings):
    config.dnsbl.lists = [DnsblListConfig(zone=ZONE, listed=["127.0.0.2-127.0.0.11"],
                                          **list_settings)]
    return config


def list_client(zone, ip: str, answer: str = "127.0.0.2") -> None:
    zone.add(".".join(reversed(ip.split("."))) + "." + ZONE, "A", answer)


# -- the proxy --------------------------------------------------------------------------------
def proxy_transaction(proxy, client_ip: str) -> tuple[bytes, bytes]:
    """As Postfix's smtpd talks to a before-queue filter: XFORWARD names the real client."""
    d = Dialog(proxy.port)
    try:
        d.cmd(b"EHLO postfix.example")
        assert d.cmd(b"XFORWARD NAME=client.example ADDR=" + client_ip.encode()).startswith(b"250")
        assert d.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")
        rcpt = d.cmd(b"RCPT TO:<bob@example.net>")
        data = d.cmd(b"DATA")
        if data.startswith(b"354"):
            d.sock.sendall(signed(message()) + b".\r\n")
            data = d.reply()
        return rcpt, data
    finally:
        d.close()


def test_the_proxy_refuses_a_listed_client_at_rcpt(zone, sink, start_proxy):
    publish_domain(zone, "example.org")
    list_client(zone, LISTED_IP)
    proxy = start_proxy(blocklist(proxy_config(sink.address)))
    rcpt, data = proxy_transaction(proxy, LISTED_IP)
    assert rcpt == (b"554 5.7.1 Service unavailable; client [192.0.2.66] blocked using "
                    b"bl.test\r\n")
    assert data.startswith(b"554 5.5.1")                   # no valid recipients
    assert b"RCPT" not in sink.commands and sink.messages == []
    rcpt, data = proxy_transaction(proxy, CLEAN_IP)
    assert rcpt.startswith(b"250") and data.startswith(b"250")
    assert len(sink.messages) == 1


def test_a_refused_lookup_code_is_not_a_listing(zone, sink, start_proxy):
    publish_domain(zone, "example.org")
    list_client(zone, LISTED_IP, "127.255.255.254")       # Spamhaus: query refused
    proxy = start_proxy(blocklist(proxy_config(sink.address)))
    rcpt, data = proxy_transaction(proxy, LISTED_IP)
    assert rcpt.startswith(b"250") and data.startswith(b"250")


# -- the milter -------------------------------------------------------------------------------
@pytest.fixture
def milter(zone, tmp_path):
    started = []

    def start(config):
        from authfilter.milter.listener import MilterListener
        m = MilterThread(config, zone.address,
                         [MilterListener(f"unix:{tmp_path}/m{len(started)}.sock", role="inbound")])
        started.append(m)
        return m
    yield start
    for m in started:
        m.stop()


def test_the_milter_refuses_a_listed_client_at_rcpt(zone, milter):
    publish_domain(zone, "example.org")
    list_client(zone, LISTED_IP)
    m = milter(blocklist(milter_config()))
    with session(m, ip=LISTED_IP.encode()) as client:
        assert not client.mta.negotiation.protocol & SMFIP_NR_RCPT    # RCPT is answered
        outcome = client.message(signed(message()), b"<alice@example.org>",
                                 [b"<bob@example.net>"])
        client.quit()
    assert outcome.final == SMFIR_REPLYCODE
    assert outcome.reply == (b"554 5.7.1 Service unavailable; client [192.0.2.66] blocked "
                             b"using bl.test")
    with session(m, ip=CLEAN_IP.encode()) as client:
        outcome = client.message(signed(message()), b"<alice@example.org>",
                                 [b"<bob@example.net>", b"<carol@example.net>"])
        client.quit()
    assert outcome.delivered is not None
    [event] = m.events(1)
    assert event.facts.recipients == ("bob@example.net", "carol@example.net")
    assert event.verdict.result("dnsbl").result == "none"


def test_without_early_defences_the_milter_does_not_wait_at_rcpt(zone, milter):
    m = milter(milter_config())
    with session(m, ip=CLEAN_IP.encode()) as client:
        assert client.mta.negotiation.protocol & SMFIP_NR_RCPT
        client.quit()


def test_a_listed_client_keeps_its_session_for_the_next_message(zone, milter):
    """Every RCPT of the session is refused the same way; the lookups are made once."""
    publish_domain(zone, "example.org")
    list_client(zone, LISTED_IP)
    m = milter(blocklist(milter_config()))
    with session(m, ip=LISTED_IP.encode()) as client:
        replies = [client.message(signed(message()), b"<alice@example.org>",
                                  [b"<bob@example.net>"]).final for _ in range(3)]
        client.quit()
    assert replies == [SMFIR_REPLYCODE] * 3
    asked = [q for q in zone.queries if q[0].endswith(ZONE)]
    assert len(asked) == 1
    assert SMFIR_CONTINUE not in replies


def test_the_milter_tempfails_a_sasl_user_over_its_rate_limit_at_rcpt(zone, milter):
    """An auth_user rule counts the SASL login ({auth_authen}) however trusted it is: a
    stolen account cannot send on and on."""
    import socket
    import uuid
    from authfilter.config import RateRuleConfig
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("no Redis on 127.0.0.1:6379 (.ci/run starts one)")
    config = milter_config()
    config.ratelimit.key_prefix = f"test:{uuid.uuid4().hex}:"
    config.ratelimit.rules = [RateRuleConfig(key="auth_user", limit=2, period=3600)]
    m = milter(config)
    finals = []
    for _ in range(3):
        with session(m, ip=CLEAN_IP.encode(), macros={b"{auth_authen}": b"alice"}) as client:
            outcome = client.message(message(), b"<alice@example.org>", [b"<bob@example.net>"])
            client.quit()
        finals.append((outcome.delivered is not None, outcome.reply))
    assert [delivered for delivered, _ in finals] == [True, True, False]
    assert finals[2][1].startswith(b"451 4.7.28 ")
