"""The bulk receive buffer: command lines, DATA blocks, limits, dot-stuffing."""
from __future__ import annotations

import pytest

from authfilter.message import MAX_HEADER_BYTES, header_limit_problem
from authfilter.smtp.receiver import (BareCR, DataTooBig, HeaderTooBig, LineTooLong, ReceiveBuffer,
                                      stuff, unstuff)


def feed(*chunks: bytes) -> ReceiveBuffer:
    buf = ReceiveBuffer()
    for c in chunks:
        buf.feed(c)
    return buf


def test_lines_with_crlf_and_bare_lf():
    buf = feed(b"EHLO a\r\nNOOP\nQU")
    assert buf.take_line(512) == b"EHLO a"
    assert buf.take_line(512) == b"NOOP"
    assert buf.take_line(512) is None
    buf.feed(b"IT\r\n")
    assert buf.take_line(512) == b"QUIT"


def test_overlong_line_is_discarded_then_reported_once():
    buf = feed(b"x" * 600)                       # no line end yet: memory stays bounded
    assert buf.take_line(512) is None and len(buf) == 0
    buf.feed(b"y" * 600 + b"\r\nNOOP\r\n")
    with pytest.raises(LineTooLong):
        buf.take_line(512)
    assert buf.take_line(512) == b"NOOP"
    buf.feed(b"z" * 513 + b"\r\n")              # complete but too long
    with pytest.raises(LineTooLong):
        buf.take_line(512)


def data(*chunks: bytes, limit: int = 1 << 20) -> bytes | None:
    buf = ReceiveBuffer()
    buf.begin_data()
    out = None
    for c in chunks:
        buf.feed(c)
        out = buf.take_data(limit)
        if out is not None:
            break
    return out


def test_data_block_and_what_follows():
    buf = feed(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    buf.begin_data()
    assert buf.take_data(1000) == b"Subject: x\r\n\r\nbody\r\n"
    assert buf.take_line(512) == b"QUIT"


def test_end_marker_split_over_chunks_at_every_position():
    message = b"a\r\nb\r\n.\r\n"
    for cut in range(1, len(message)):
        assert data(message[:cut], message[cut:]) == b"a\r\nb\r\n", cut


def test_empty_message_even_byte_by_byte():
    assert data(b".\r\n") == b""
    assert data(b".", b"\r", b"\n") == b""


def test_dot_unstuffing():
    assert data(b"..leading\r\nmid\r\n..\r\n.x\r\n.\r\n") == b".leading\r\nmid\r\n.\r\nx\r\n"


def test_dot_lines_are_counted_and_plain_blocks_come_back_as_read():
    buf = feed(b".a\r\nb\r\n..c\r\n.\r\n")
    buf.begin_data()
    assert buf.take_data(1000) == b"a\r\nb\r\n.c\r\n" and buf.dot_lines == 2
    buf.feed(b"plain\r\n.\r\n")
    buf.begin_data()
    assert buf.take_data(1000) == b"plain\r\n" and buf.dot_lines == 0


def test_dot_line_split_over_chunks_is_counted_once():
    raw = b"a\r\n.b\r\nc\r\n.\r\n"
    for cut in range(1, len(raw)):
        buf = ReceiveBuffer()
        buf.begin_data()
        buf.feed(raw[:cut])
        assert buf.take_data(1000) is None
        buf.feed(raw[cut:])
        assert buf.take_data(1000) == b"a\r\nb\r\nc\r\n" and buf.dot_lines == 1, cut


def test_only_crlf_dot_crlf_ends_data():
    # bare-LF "." lines do not end the block (SMTP smuggling); a "." after a bare LF or after
    # CRLF, not followed by CRLF, is a stuffing dot; then every bare LF becomes CRLF
    raw = b"a\n.\nb\r\n.\nc\n.\r\nd\r\n..\ne\n..f\r\n.\r\n"
    assert data(raw) == b"a\r\n\r\nb\r\n\r\nc\r\n\r\nd\r\n.\r\ne\r\n.f\r\n"


SMUGGLING = [b"\r.\r\n", b"\r.\r", b"\r\n.\r", b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\n.\r",
             b"\r.\n", b"\r\n.\r\r\n"]
"""End-of-data look-alikes a lenient next hop might take for CRLF "." CRLF (SMTP smuggling)."""


@pytest.mark.parametrize("marker", SMUGGLING)
def test_smuggled_end_of_data_is_normalized_or_refused(marker):
    """The block goes on to its real end; a bare CR refuses it (consumed, so the next command
    is read as one), bare LFs become CRLF and the block is stuffed again, so what would go
    upstream has no CR or LF outside CRLF and no end of data before its end."""
    injected = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
    block = b"Subject: x\r\n\r\nhello" + marker + injected + b"forged\r\n"
    buf = feed(block + b".\r\nQUIT\r\n")
    buf.begin_data()
    if b"\r" in marker.replace(b"\r\n", b""):
        with pytest.raises(BareCR):
            buf.take_data(1 << 20)
    else:
        content = buf.take_data(1 << 20)
        wire = buf.release_block()
        assert buf.bare_lf and content.endswith(injected + b"forged\r\n")
        assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
        assert b"\r\n.\r\n" not in b"\r\n" + wire and unstuff(wire) == content
    assert buf.take_line(512) == b"QUIT"


def test_bare_cr_anywhere_refuses_the_block_at_any_cut():
    raw = b"Subject: a\rFrom: evil@example.org\r\n\r\nbody\r\n.\r\nNOOP\r\n"
    for cut in range(1, len(raw)):
        buf = ReceiveBuffer()
        buf.begin_data()
        refused = False
        for part in (raw[:cut], raw[cut:]):
            buf.feed(part)
            if not refused:
                try:
                    assert buf.take_data(1000) is None
                except BareCR:
                    refused = True
        assert refused, cut
        assert buf.take_line(512) == b"NOOP"


def test_cr_before_crlf_and_at_the_block_end():
    assert data(b"a\r\n\r\n.\r\n") == b"a\r\n\r\n"          # CRLF CRLF: no bare CR
    with pytest.raises(BareCR):
        data(b"a\r\r\n.\r\n")                                # CR CR LF: one is bare


def test_oversize_data_is_read_to_the_end_and_discarded():
    buf = ReceiveBuffer()
    buf.begin_data()
    for _ in range(100):
        buf.feed(b"x" * 998 + b"\r\n")
        assert buf.take_data(10_000) is None
        assert len(buf) <= 10_000 + 1002           # bounded
    buf.feed(b".\r\nNOOP\r\n")
    with pytest.raises(DataTooBig) as big:
        buf.take_data(10_000)
    assert big.value.size == 100_000
    assert buf.take_line(512) == b"NOOP"


def test_message_at_the_limit_is_accepted():
    body = b"x" * 8 + b"\r\n"
    assert data(body + b".\r\n", limit=len(body)) == body
    with pytest.raises(DataTooBig):
        data(body + b".\r\n", limit=len(body) - 1)


@pytest.mark.parametrize("content", [b"", b"plain\r\n", b".a\r\n..b\r\n.\r\nc\r\n", b"x\r\n.\r\n"])
def test_stuff_then_unstuff_is_identity(content):
    assert unstuff(stuff(content)) == content
    if content:
        assert b"\r\n.\r\n" not in b"\r\n" + stuff(content)[:-2]


def test_any_block_in_any_chunks_comes_back_unstuffed_with_what_was_seen():
    """For any block (dot lines, bare LFs, dots after bare LFs, stray CRs) cut anywhere: a bare
    CR refuses it; otherwise the content is the RFC 5321 s. 4.5.2 unstuffing of what was
    received (a bare LF starting a line too) with bare LFs made CRLF, ``wire`` is that exactly when it had no bare LF (else the
    content stuffed again), and ``bare_lf`` says whether it had an LF without a CR before it."""
    import random
    import re
    rng = random.Random(5321)
    pieces = [b"a", b"x y", b".", b"..", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n."]
    refused = 0
    for _ in range(3000):
        block = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30))) + b"\r\n"
        if b"\r\n.\r\n" in block or block.startswith(b".\r\n"):
            continue
        received = block + b".\r\nQUIT\r\n"
        cuts = sorted(rng.sample(range(1, len(received)), min(3, len(received) - 1)))
        buf = ReceiveBuffer()
        buf.begin_data()
        content, bare_cr = None, False
        for start, end in zip([0] + cuts, cuts + [len(received)]):
            buf.feed(received[start:end])
            if content is None and not bare_cr and buf.data_complete(1 << 20):
                try:
                    content = buf.take_data(1 << 20)
                except BareCR:
                    bare_cr = True
        has_bare_lf = bool(re.search(rb"(?<!\r)\n", block))
        assert bare_cr == bool(re.search(rb"\r(?!\n)", block)), block
        if bare_cr:
            refused += 1
        else:
            unstuffed = re.sub(rb"(\A|\n)\.", rb"\1", block)
            assert content == re.sub(rb"(?<!\r)\n", b"\r\n", unstuffed), block
            assert buf.wire == (stuff(content) if has_bare_lf else block)
            assert buf.dot_lines == len(buf.wire) - len(content)
            assert buf.bare_lf == has_bare_lf, block
        assert buf.take_line(512) == b"QUIT"
    assert 100 < refused < 2900


def test_data_complete_is_false_until_the_end_marker_and_then_stays_true():
    buf = ReceiveBuffer()
    buf.begin_data()
    buf.feed(b"Subject: x\r\n\r\nline\r\n.")
    assert not buf.data_complete(1000) and not buf.data_complete(1000)
    buf.feed(b"\r\n")
    assert buf.data_complete(1000) and buf.data_complete(1000)
    assert buf.take_data(1000) == b"Subject: x\r\n\r\nline\r\n"


def test_released_block_is_forgotten():
    buf = feed(b"..a\r\n.\r\n")
    buf.begin_data()
    assert buf.take_data(1000) == b".a\r\n"
    assert buf.release_block() == b"..a\r\n"
    assert buf.wire == b""


def test_a_header_over_the_limit_is_skipped_as_soon_as_that_is_certain():
    """A fold bomb (1.6 MB of header) is not buffered nor scanned line by line past
    MAX_HEADER_BYTES: the rest is skipped like an over-size block, then refused."""
    bomb = b"Subject: x" + b"\r\n x" * 400_000 + b"\r\n\r\nbody\r\n.\r\nNOOP\r\n"
    buf = ReceiveBuffer()
    buf.begin_data()
    for i in range(0, len(bomb), 65536):
        buf.feed(bomb[i:i + 65536])
        if not buf.data_complete(10 << 20):
            assert len(buf) < MAX_HEADER_BYTES + 2 * 65536           # bounded
    with pytest.raises(HeaderTooBig) as refused:
        buf.take_data(10 << 20)
    assert refused.value.reply == f"552 5.3.4 Error: message header over {MAX_HEADER_BYTES} bytes\r\n".encode()
    assert buf.take_line(512) == b"NOOP"


def test_the_early_header_test_counts_the_header_unstuffed():
    """Stuffing dots make the header longer on the wire than in the message: a header at the
    limit once unstuffed is not refused early (the front-end's exact test decides)."""
    line = b".X-Dotted: " + b"y" * 50 + b"\r\n"
    head = line * ((MAX_HEADER_BYTES - 100) // len(line))
    head += b"Z: " + b"z" * (MAX_HEADER_BYTES - len(head) - 7) + b"\r\n\r\n"
    assert len(head) == MAX_HEADER_BYTES
    wire = stuff(head + b"body\r\n" * 20_000)
    assert len(wire) > MAX_HEADER_BYTES + 4000
    buf = ReceiveBuffer()
    buf.begin_data()
    content = None
    for i in range(0, len(wire) + 3, 1000):
        buf.feed((wire + b".\r\n")[i:i + 1000])
        content = buf.take_data(10 << 20)
        if content is not None:
            break
    assert content == head + b"body\r\n" * 20_000 and header_limit_problem(content) is None
    # and one byte more is refused, early, whatever the chunks
    over = stuff(b"A: b\r\n" + head + b"body\r\n" * 20_000) + b".\r\n"
    buf.begin_data()
    with pytest.raises(HeaderTooBig):
        for i in range(0, len(over), 1000):
            buf.feed(over[i:i + 1000])
            assert buf.take_data(10 << 20) is None


def test_after_a_bare_lf_the_header_is_left_to_the_exact_test():
    head = b"Subject: x" + b"\n x" * 100_000 + b"\r\n\r\n"
    buf = feed(head + b"body\r\n.\r\n")
    buf.begin_data()
    content = buf.take_data(10 << 20)
    assert header_limit_problem(content) == f"message header over {MAX_HEADER_BYTES} bytes"
