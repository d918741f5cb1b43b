"""Header work at end of data: forged results and marks removed, mailing lists recognised,
the body passed on untouched."""
from __future__ import annotations

import random

from authfilter.smtp.message_flow import header_block_end, prepare_inbound, remove_fields, upstream_form
from authfilter.smtp.receiver import ReceiveBuffer, stuff, unstuff

BODY = b"body line\r\n.dot\r\n"


def test_header_block_end():
    assert header_block_end(b"A: 1\r\n\r\nbody") == 8
    assert header_block_end(b"\r\nbody") == 2
    assert header_block_end(b"A: 1\r\n") == 6                   # no body at all


def test_remove_fields_with_continuations_any_case():
    raw = b"X-Mark: one\r\n\tcontinued\r\nSubject: s\r\nx-mark : two\r\n\r\nX-Mark: in body\r\n"
    assert remove_fields(raw, "X-Mark") == b"Subject: s\r\n\r\nX-Mark: in body\r\n"
    unchanged = b"Subject: s\r\n\r\n" + BODY
    assert remove_fields(unchanged, "X-Mark") is unchanged


def test_prepare_inbound_strips_forgeries_and_keeps_the_body_object():
    head = (b"Authentication-Results: mx.test; dmarc=pass\r\n"
            b"Authentication-Results: other.example; spf=pass\r\n"
            b"X-Authfilter-Quarantine: forged\r\nList-Id: <list.example.org>\r\n\r\n")
    raw, mailing_list = prepare_inbound(head + BODY, "mx.test", "X-Authfilter-Quarantine")
    assert raw == b"Authentication-Results: other.example; spf=pass\r\nList-Id: <list.example.org>\r\n\r\n" + BODY
    assert mailing_list
    clean = b"From: a@example.org\r\n\r\n" + BODY
    raw, mailing_list = prepare_inbound(clean, "mx.test", "X-Authfilter-Quarantine")
    assert raw is clean and not mailing_list                     # no copy of a big body


def test_list_headers_only_count_in_the_header():
    raw, mailing_list = prepare_inbound(b"From: a@example.org\r\n\r\nList-Post: <mailto:x>\r\n",
                                        "mx.test", "X-Authfilter-Quarantine")
    assert not mailing_list


def received(wire: bytes) -> tuple[bytes, bytes, bool]:
    buf = ReceiveBuffer()
    buf.begin_data()
    buf.feed(wire + b".\r\n")
    content = buf.take_data(1 << 20)
    return (content, *buf.release_block())


def test_upstream_form_reuses_the_received_body_and_means_the_same_message():
    """Whatever the header work removed, the pieces sent upstream unstuff to exactly the
    checked message, never contain an end of data, and are what stuffing it would give when
    the client stuffed correctly; without dot lines nothing is copied at all."""
    rng = random.Random(2920)
    heads = [b"From: a@example.org\r\n", b"Authentication-Results: mx.test; dkim=pass\r\n",
             b".Odd: field\r\n", b"Subject: x\r\n\tfolded\r\n"]
    lines = [b"text\r\n", b".dot\r\n", b"..two\r\n", b".\r\n", b"\r\n", b" x\r\n"]
    for _ in range(500):
        content = (b"".join(rng.choice(heads) for _ in range(rng.randrange(0, 4))) + b"\r\n"
                   + b"".join(rng.choice(lines) for _ in range(rng.randrange(0, 12))))
        correct = stuff(content)
        sloppy = correct.replace(b"\r\n..dot", b"\r\n.dot")      # a dot the client left off
        for wire_sent in (correct, sloppy):
            got, wire, bare_lf = received(wire_sent)
            assert wire == wire_sent and not bare_lf
            raw, _ = prepare_inbound(got, "mx.test", "X-Authfilter-Quarantine")
            parts = upstream_form(raw, got, wire, bare_lf)
            sent = b"".join(parts)
            assert unstuff(sent) == raw and b"\r\n.\r\n" not in b"\r\n" + sent[:-2]
            if wire_sent is correct:
                assert got == content and sent == stuff(raw)
            if wire == got:
                assert parts == [raw]


def test_upstream_form_with_a_bare_lf_stuffs_every_dot_after_an_lf():
    content, wire, bare_lf = received(b"Subject: x\r\n\r\na\n.\r\nb\r\n..c\r\n")
    assert bare_lf and content == b"Subject: x\r\n\r\na\n.\r\nb\r\n.c\r\n"
    assert upstream_form(content, content, wire, bare_lf) == \
        [b"Subject: x\r\n\r\na\n..\r\nb\r\n..c\r\n"]
