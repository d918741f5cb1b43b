"""The message goes upstream with BDAT (RFC 3030) when the upstream offers CHUNKING, as
Postfix's reinjection smtpd does: same content as with DATA, one round trip less."""
from __future__ import annotations

import smtplib

from tests.mailtools import header_fields, message, publish_domain, signed


def send_data(proxy, raw: bytes) -> tuple[int, bytes]:
    """DATA with ``raw`` exactly as given (no line-end fixing by smtplib)."""
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=10) as client:
        client.ehlo("client.example")
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        stuffed = raw.replace(b"\r\n.", b"\r\n..")
        client.send((b"." + stuffed if stuffed.startswith(b".") else stuffed) + b".\r\n")
        return client.getreply()


def bdat_commands(sink) -> list[bytes]:
    return [c for c in sink.commands if c.upper().startswith(b"BDAT")]


def test_one_bdat_last_carries_the_message_unchanged(zone, sink, start_proxy):
    publish_domain(zone, "example.org")
    sink.chunking = True
    proxy = start_proxy()
    raw = signed(message(body=b"Hello.\r\n.a line that starts with a dot\r\n..two\r\n.\r\n"))
    assert send_data(proxy, raw) == (250, b"2.0.0 Ok: queued as SINK0001")
    delivered = sink.messages[-1].content
    name, value = header_fields(delivered)[0]
    assert name == "Authentication-Results" and "dkim=pass" in value and "dmarc=pass" in value
    assert delivered.endswith(raw)                 # dots as the author wrote them
    assert bdat_commands(sink) == [b"BDAT %d LAST" % len(delivered)]
    assert b"DATA" not in sink.commands


def test_a_message_with_a_bare_lf_goes_with_data_even_so(zone, sink, start_proxy):
    publish_domain(zone, "example.org")
    sink.chunking = True
    proxy = start_proxy()
    assert send_data(proxy, message(body=b"one\ntwo\r\n"))[0] == 250
    assert bdat_commands(sink) == [] and b"DATA" in sink.commands


def test_bdat_can_be_turned_off(zone, sink, start_proxy):
    publish_domain(zone, "example.org")
    sink.chunking = True
    proxy = start_proxy(upstream_bdat=False)
    assert send_data(proxy, signed(message()))[0] == 250
    assert bdat_commands(sink) == [] and b"DATA" in sink.commands


def test_a_refused_chunk_is_the_clients_reply_and_the_next_message_still_goes(zone, sink,
                                                                              start_proxy):
    publish_domain(zone, "example.org")
    sink.chunking = True
    sink.data_reply = b"452 4.3.1 Insufficient system storage"
    proxy = start_proxy()
    assert send_data(proxy, signed(message())) == (452, b"4.3.1 Insufficient system storage")
    assert sink.messages == []
    sink.data_reply = None
    assert send_data(proxy, signed(message(message_id="<2@example.org>")))[0] == 250
    assert len(sink.messages) == 1
    after_refusal = sink.commands[sink.commands.index(bdat_commands(sink)[0]) + 1:]
    assert after_refusal[0] == b"RSET"             # the failed transaction was reset first
