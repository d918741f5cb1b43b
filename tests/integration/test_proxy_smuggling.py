"""SMTP smuggling through the proxy (issue 15, item 6): end-of-data look-alikes built from bare
CR and bare LF, sent by a raw client, relayed to a sink that reads lines as leniently as the
MTAs the attack relies on (a bare LF ends a line; with ``cr_line_ends`` a bare CR does too).

Whatever the form, the sink never sees a second transaction nor a bare CR or LF: a block with
a bare CR is refused with 550 5.5.2 and never relayed; bare LFs are made CRLF, stuffed again,
and the one message the sink queues is the one the checks saw.
"""
from __future__ import annotations

import re
import smtplib

import dkim
import pytest

from tests.mailtools import dkim_key, header_fields, message, publish_domain, signed

INJECTED = (b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
            b"From: ceo@example.org\r\nSubject: smuggled\r\n\r\nunchecked\r\n")
BARE_CR_FORMS = [b"\r.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\n", b"\r\n.\r\r\n"]
BARE_LF_FORMS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n"]


def dialogue(proxy, blocks):
    """One session: for each DATA block (the client's bytes, up to and with the end marker)
    MAIL, RCPT, DATA, the block; the replies to the blocks."""
    replies = []
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=10) as client:
        client.ehlo("client.example")
        for block in blocks:
            assert client.mail("alice@example.org")[0] == 250
            assert client.rcpt("bob@example.net")[0] == 250
            client.putcmd("DATA")
            assert client.getreply()[0] == 354
            client.send(block)
            replies.append(client.getreply())
    return replies


def smuggled_commands(sink):
    return [c for c in sink.commands if c.startswith((b"MAIL FROM:<evil", b"RCPT TO:<victim"))]


def crlf_only(data: bytes) -> bool:
    return data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")


@pytest.mark.parametrize("marker", BARE_CR_FORMS, ids=repr)
def test_bare_cr_end_of_data_forms_are_refused_and_never_relayed(zone, sink, start_proxy, marker):
    publish_domain(zone, "example.org")
    sink.cr_line_ends = True            # an upstream that would fall for it
    proxy = start_proxy()
    smuggling = signed(message(body=b"hello" + marker + INJECTED)) + b".\r\n"
    clean = signed(message(message_id="<2@example.org>")) + b".\r\n"
    first, second = dialogue(proxy, [smuggling, clean])
    assert first == (550, b"5.5.2 Error: bare <CR> received")
    assert second[0] == 250                      # the session goes on, in step with the client
    assert len(sink.messages) == 1 and b"Message-ID: <2@example.org>" in sink.messages[0].content
    assert smuggled_commands(sink) == []
    assert crlf_only(sink.messages[0].data)
    assert b"RSET" in sink.commands              # the refused transaction was abandoned


def test_bare_cr_in_a_header_cannot_add_a_field(zone, sink, start_proxy):
    """Normalizing ``Subject: x\\rFrom: ...`` to CRLF would add a From the sender never wrote:
    refused instead."""
    publish_domain(zone, "example.org")
    proxy = start_proxy()
    raw = message(subject="x\rFrom: ceo@example.org") + b".\r\n"
    assert dialogue(proxy, [raw])[0][0] == 550
    assert sink.messages == []


@pytest.mark.parametrize("marker", BARE_LF_FORMS, ids=repr)
def test_bare_lf_end_of_data_forms_go_on_as_one_crlf_message(zone, sink, start_proxy, marker):
    publish_domain(zone, "example.org")
    sink.cr_line_ends = True
    proxy = start_proxy()
    raw = signed(message(body=b"hello" + marker + INJECTED))
    assert dialogue(proxy, [raw + b".\r\n"])[0][0] == 250
    assert len(sink.messages) == 1 and smuggled_commands(sink) == []
    got = sink.messages[0]
    assert crlf_only(got.data) and b"\r\n.\r\n" not in got.data[:-3]
    # the body as the checks saw it: a "." after any LF was a stuffing dot, bare LFs are CRLF
    expected = re.sub(rb"(?<!\r)\n", b"\r\n", raw.replace(b"\n.", b"\n"))
    assert got.content.endswith(expected.split(b"\r\n\r\n", 1)[1])
    assert got.content.count(b"MAIL FROM:<evil") == 1                  # as text, in the body


def test_bare_lf_normalization_keeps_dkim_signatures_valid(zone, sink, start_proxy):
    """A message signed over CRLF and sent with bare LFs in its body: the proxy's verdict is
    dkim=pass, and the message as the sink queued it still verifies (dkimpy), because every
    verifier reads a bare LF as a line end anyway."""
    key = dkim_key()
    publish_domain(zone, "example.org", key=key)
    proxy = start_proxy()
    raw = signed(message(body=b"line one\r\nline two\r\n.dot line\r\nlast\r\n"), key=key)
    head, body = raw.split(b"\r\n\r\n", 1)
    sloppy = head + b"\r\n\r\n" + body.replace(b"\r\n", b"\n", 2)       # two bare LFs
    wire = sloppy.replace(b"\r\n.", b"\r\n..").replace(b"\n.", b"\n..") + b".\r\n"
    assert dialogue(proxy, [wire])[0][0] == 250
    delivered = sink.messages[-1].content
    ours = [v for n, v in header_fields(delivered) if n == "Authentication-Results"]
    assert "dkim=pass" in ours[0]
    assert crlf_only(delivered) and delivered.endswith(b"line one\r\nline two\r\n.dot line\r\nlast\r\n")

    def dns(name, timeout=5):
        return key.record.encode() if name == b"sel._domainkey.example.org." else None
    assert dkim.verify(delivered, dnsfunc=dns)
