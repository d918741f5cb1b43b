"""The proxy's end of data: the pipeline's header edits applied to the received bytes, the body
passed on untouched."""
from __future__ import annotations

import random

from authfilter.authres import authserv_id_of
from authfilter.message import Message, remove_from_head, removal_of
from authfilter.pipeline import Disposition
from authfilter.policy import Action
from authfilter.smtp.message_flow import header_block_end, upstream_form
from authfilter.smtp.receiver import ReceiveBuffer, stuff, unstuff

BODY = b"body line\r\n.dot\r\n"


def test_header_block_end():
    assert header_block_end(b"A: 1\r\n\r\nbody") == 8
    assert header_block_end(b"\r\nbody") == 2
    assert header_block_end(b"A: 1\r\n") == 6                   # no body at all


def test_remove_from_head_with_continuations_any_case():
    head = b"X-Mark: one\r\n\tcontinued\r\nSubject: s\r\nx-mark : two\r\nNot a field\r\n\r\n"
    assert remove_from_head(head, [("X-Mark", 2), ("X-Mark", 1)]) == b"Subject: s\r\nNot a field\r\n\r\n"
    assert remove_from_head(head, [("x-mark", 2)]) == \
        b"X-Mark: one\r\n\tcontinued\r\nSubject: s\r\nNot a field\r\n\r\n"
    assert remove_from_head(head, []) is head


def disposition(content: bytes, authserv_id: str = "mx.test") -> Disposition:
    """What the pipeline answers for an accepted message: our results on top, forged ones out."""
    message = Message.parse(content, crlf_only=True)
    forged = [i for i in message.positions.get(b"authentication-results", ())
              if authserv_id_of(message.headers[i][1]) == authserv_id]
    return Disposition("accept", None, tuple(removal_of(message, forged)),
                       (("Authentication-Results", f"{authserv_id}; none"),), None,
                       Action("accept", "test"), message)


def received(wire: bytes) -> tuple[bytes, bytes, bool]:
    buf = ReceiveBuffer()
    buf.begin_data()
    buf.feed(wire + b".\r\n")
    content = buf.take_data(1 << 20)
    return content, buf.release_block(), buf.bare_lf


def test_upstream_form_reuses_the_received_body_and_means_the_same_message():
    """Whatever the header work removed, the pieces sent upstream unstuff to exactly the
    message the disposition describes, never contain an end of data, and are what stuffing it
    would give when the client stuffed correctly; without dot lines the body is not copied."""
    rng = random.Random(2920)
    forged = b"Authentication-Results: mx.test; dkim=pass\r\n"
    heads = [b"From: a@example.org\r\n", forged, b".Odd: field\r\n", b"Subject: x\r\n\tfolded\r\n"]
    lines = [b"text\r\n", b".dot\r\n", b"..two\r\n", b".\r\n", b"\r\n", b" x\r\n"]
    top = b"Authentication-Results: mx.test; none\r\n"
    for _ in range(500):
        chosen = [rng.choice(heads) for _ in range(rng.randrange(0, 4))]
        body = b"".join(rng.choice(lines) for _ in range(rng.randrange(0, 12)))
        content = b"".join(chosen) + b"\r\n" + body
        expected = top + b"".join(h for h in chosen if h != forged) + b"\r\n" + body
        correct = stuff(content)
        sloppy = correct.replace(b"\r\n..dot", b"\r\n.dot")      # a dot the client left off
        for wire_sent in (correct, sloppy):
            got, wire, bare_lf = received(wire_sent)
            assert wire == wire_sent and not bare_lf
            d = disposition(got)
            parts = upstream_form(d, got, wire)
            sent = b"".join(parts)
            assert b"\r\n.\r\n" not in b"\r\n" + sent[:-2]
            if wire_sent is correct:
                assert got == content and unstuff(sent) == expected and sent == stuff(expected)
            if wire == got and not d.remove:
                assert parts == [top, got]                      # the received bytes, uncopied


def test_upstream_form_with_a_bare_lf_is_crlf_and_stuffed_again():
    """Bare LFs arrive normalized (the receiver's work) and a "." after one was a stuffing
    dot: the upstream gets CRLF lines only, stuffed, and it is the message the checks saw."""
    content, wire, bare_lf = received(b"Subject: x\r\n\r\na\n.\r\nb\r\n..c\nd\n..\ne\r\n")
    assert bare_lf and content == b"Subject: x\r\n\r\na\r\n\r\nb\r\n.c\r\nd\r\n.\r\ne\r\n"
    d = disposition(content)
    sent = b"".join(upstream_form(d, content, wire))
    assert sent == b"Authentication-Results: mx.test; none\r\nSubject: x\r\n\r\n" \
                   b"a\r\n\r\nb\r\n..c\r\nd\r\n..\r\ne\r\n"
    assert unstuff(sent) == b"Authentication-Results: mx.test; none\r\n" + d.message.raw
    assert sent.count(b"\n") == sent.count(b"\r\n") == sent.count(b"\r")
