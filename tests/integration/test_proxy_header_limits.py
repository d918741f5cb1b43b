"""Header limits in the proxy (issue 15, item 1): a header over MAX_HEADER_BYTES, a field of
more than MAX_FIELD_LINES lines or more than MAX_HEADER_FIELDS fields is refused with 552 5.3.4
before anything parses it; the upstream never sees it, and other sessions are not held up."""
from __future__ import annotations

import smtplib
import threading
import time

from authfilter.message import MAX_FIELD_LINES, MAX_HEADER_BYTES, MAX_HEADER_FIELDS
from tests.mailtools import message, publish_domain, signed

FOLD_BOMB = b"Subject: x" + b"\r\n x" * 400_000 + b"\r\n"          # 1.6 MB, 400,000 folds


def send_raw(proxy, raw: bytes) -> tuple[int, bytes]:
    """One message, not stuffed by smtplib (the test messages have no line starting with ".")."""
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        client.send(raw + b".\r\n")
        return client.getreply()


def test_over_the_limits_gets_552_and_nothing_reaches_the_upstream(zone, sink, start_proxy):
    publish_domain(zone, "example.org")
    proxy = start_proxy()
    cases = {
        FOLD_BOMB: f"5.3.4 Error: message header over {MAX_HEADER_BYTES} bytes",
        b"Subject: x" + b"\r\n x" * MAX_FIELD_LINES + b"\r\n":
            f"5.3.4 Error: message header field with more than {MAX_FIELD_LINES} lines",
        b"X-A: b\r\n" * MAX_HEADER_FIELDS:
            f"5.3.4 Error: message header with more than {MAX_HEADER_FIELDS} fields",
    }
    for extra, text in cases.items():
        assert send_raw(proxy, message(extra_headers=extra)) == (552, text.encode())
    assert sink.messages == [] and b"DATA" not in sink.commands
    at_limit = b"Subject: x" + b"\r\n x" * (MAX_FIELD_LINES - 1) + b"\r\n"
    assert send_raw(proxy, signed(message(extra_headers=at_limit)))[0] == 250
    assert len(sink.messages) == 1


def test_a_fold_bomb_does_not_hold_up_another_session(zone, sink, start_proxy):
    """While one client sends a 1.6 MB header folded 400,000 times, another client's 4 KB
    messages go through as usual (before the parse was linear, one waited 11.9 s)."""
    publish_domain(zone, "example.org")
    proxy = start_proxy()
    small = signed(message(body=b"a line of about seventy characters of text, as mail has\r\n" * 70))
    send_raw(proxy, small)                                   # warm: DNS cache, connections
    bomb_reply = []
    bomber = threading.Thread(target=lambda: bomb_reply.append(
        send_raw(proxy, message(extra_headers=FOLD_BOMB * 2))))
    bomber.start()
    latencies = []
    while bomber.is_alive() or len(latencies) < 5:
        start = time.perf_counter()
        assert send_raw(proxy, small)[0] == 250
        latencies.append(time.perf_counter() - start)
    bomber.join()
    assert bomb_reply[0] == (552, f"5.3.4 Error: message header over {MAX_HEADER_BYTES} bytes".encode())
    assert max(latencies) < 2.0, latencies                 # generous: CI machines are slow
