"""Header work at end of data: forged results and marks removed, mailing lists recognised,
the body passed on untouched."""
from __future__ import annotations

from authfilter.smtp.message_flow import header_block_end, prepare_inbound, remove_fields

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
