"""Canonicalization (RFC 6376 section 3.4): the RFC's examples, edge cases, and equivalence with
dkimpy's implementation on many random inputs."""
import random

import pytest
from dkim.canonicalization import Relaxed, Simple
from dkim import rfc822_parse

from authfilter.dkimcore import RELAXED, SIMPLE, canonicalize_body, canonicalize_header, \
    parse_canonicalization
from authfilter.message import Message


# -- RFC 6376 section 3.4.5 ------------------------------------------------------------------
RFC_EXAMPLE = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n"


def test_rfc6376_3_4_5_relaxed():
    m = Message.parse(RFC_EXAMPLE)
    headers = b"".join(canonicalize_header(n, v, RELAXED) for n, v in m.headers)
    assert headers == b"a:X\r\nb:Y Z\r\n"
    assert canonicalize_body(m.body, RELAXED) == b" C\r\nD E\r\n"


def test_rfc6376_3_4_5_simple():
    m = Message.parse(RFC_EXAMPLE)
    assert canonicalize_header(*m.headers[0], SIMPLE) == b"A: X\r\n"
    assert canonicalize_body(m.body, SIMPLE) == b" C \r\nD \t E\r\n"


@pytest.mark.parametrize("body, simple, relaxed", [
    (b"", b"\r\n", b""),                                    # section 3.4.3 / erratum 1384
    (b"\r\n", b"\r\n", b""),
    (b"\r\n\r\n\r\n", b"\r\n", b""),
    (b" \t \r\n\r\n", b" \t \r\n", b""),                    # relaxed: a WSP-only line is empty
    (b"abc", b"abc\r\n", b"abc\r\n"),                       # no final CRLF: one is added
    (b"abc  ", b"abc  \r\n", b"abc \r\n"),                  # as dkimpy: WSP at the very end stays one SP
    (b"a\r\n\r\nb\r\n\r\n", b"a\r\n\r\nb\r\n", b"a\r\n\r\nb\r\n"),
    (b"x\r\r\n\r\n", b"x\r\r\n", b"x\r\r\n"),               # a CR inside the last line is content
    (b"x\r\n\r", b"x\r\n\r\r\n", b"x\r\n\r\r\n"),
    (b"\r\r\n", b"\r\r\n", b"\r\r\n"),
    (b"a\t\tb \t \r\n", b"a\t\tb \t \r\n", b"a b\r\n"),
    ("caf\u00e9  \u00fcber\r\n".encode(), "caf\u00e9  \u00fcber\r\n".encode(), "caf\u00e9 \u00fcber\r\n".encode()),
])
def test_body_edge_cases(body, simple, relaxed):
    assert canonicalize_body(body, SIMPLE) == simple
    assert canonicalize_body(body, RELAXED) == relaxed


def test_relaxed_header_unfolds_and_strips():
    assert canonicalize_header(b"SUBJect", b" \t hello \r\n\t  world\t \r\n", RELAXED) == \
        b"subject:hello world\r\n"
    assert canonicalize_header(b"X", b"\r\n", RELAXED) == b"x:\r\n"


@pytest.mark.parametrize("c, expected", [(None, ("simple", "simple")), ("relaxed", ("relaxed", "simple")),
                                         ("simple/relaxed", ("simple", "relaxed")),
                                         ("Relaxed/Relaxed", ("relaxed", "relaxed"))])
def test_canonicalization_tag(c, expected):
    assert parse_canonicalization(c) == expected


@pytest.mark.parametrize("c", ["", "future", "relaxed/", "/simple", "relaxed/relaxed/relaxed"])
def test_bad_canonicalization_tag(c):
    with pytest.raises(ValueError):
        parse_canonicalization(c)


def test_pathological_whitespace_is_linear():
    body = (b" " * 100_000 + b"\t" * 100_000 + b"x \r\n") * 5 + b" \r\n" * 50_000
    assert canonicalize_body(body, RELAXED) == b" x\r\n" * 5


# -- equivalence with dkimpy ------------------------------------------------------------------
PIECES = [b" ", b"  ", b"\t", b" \t ", b"a", b"word", b"\r\n", b"\r\n", b"\n", b"\r\n\r\n",
          b"\xc3\xa9", b"\xff", b"\r", b"x\r", b"  \r\n", b"\t\r\n", b"-", b":"]


def random_bytes(rng: random.Random, pieces: list[bytes]) -> bytes:
    return b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))


def test_body_matches_dkimpy_on_random_inputs():
    rng = random.Random(6376)
    for _ in range(3000):
        raw = b"From: a@example.com\r\n\r\n" + random_bytes(rng, PIECES)
        ours = Message.parse(raw).body
        _, theirs = rfc822_parse(raw)
        assert canonicalize_body(ours, SIMPLE) == Simple.canonicalize_body(theirs), raw
        assert canonicalize_body(ours, RELAXED) == Relaxed.canonicalize_body(theirs), raw


def test_headers_match_dkimpy_on_random_inputs():
    # dkimpy strips every ASCII whitespace (bytes.strip()) around a relaxed value where the
    # RFC says WSP, so the pieces here leave out the characters where the two differ (VT, FF
    # and a bare CR at an edge); both agree on everything else.
    rng = random.Random(8616)
    value_pieces = [b" ", b"  ", b"\t", b"a", b"b c", b"\r\n ", b"\r\n\t", b"\xc3\xa9", b";", b"="]
    for _ in range(3000):
        value = b" " + random_bytes(rng, value_pieces) + b"x\r\n"
        raw = b"Subject:" + value + b"To: b@example.net\r\n\r\nbody\r\n"
        ours = Message.parse(raw).headers[0]
        theirs = rfc822_parse(raw)[0][0]
        assert canonicalize_header(*ours, SIMPLE) == theirs[0] + b":" + theirs[1], raw
        name, rvalue = Relaxed.canonicalize_headers([theirs])[0]
        assert canonicalize_header(*ours, RELAXED) == name + b":" + rvalue, raw


def test_wsp_before_the_colon_simple_keeps_it_relaxed_drops_it():
    """RFC 5322 s. 4.5.8 obsolete syntax: 'Subject : x' (RFC 6376 s. 3.4.1 / 3.4.2)."""
    from authfilter.dkimcore import canonicalize_header
    from authfilter.message import Message
    name, value = Message.parse(b"Subject \t: Hi  there \r\n\r\n").headers[0]
    assert canonicalize_header(name, value, "simple") == b"Subject \t: Hi  there \r\n"
    assert canonicalize_header(name, value, "relaxed") == b"subject:Hi there\r\n"


def test_body_matches_dkimpy_on_long_random_inputs():
    """Long bodies take the other paths: WSP runs found by one split when they are few, by
    halving passes when they are many (more than one per 64 bytes), and trailing empty lines
    longer than the first tail window that is looked at."""
    rng = random.Random(3030)
    sparse = [b"word", b"words", b"x", b"\r\n", b"-"] * 40 + PIECES
    for pieces in (sparse, PIECES):
        for _ in range(60):
            body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(50, 3000)))
            body += rng.choice([b"", b"\r\n" * rng.randrange(100, 3000), b" \t\r\n" * 300])
            raw = b"From: a@example.com\r\n\r\n" + body
            ours = Message.parse(raw).body
            _, theirs = rfc822_parse(raw)
            assert canonicalize_body(ours, SIMPLE) == Simple.canonicalize_body(theirs), raw
            assert canonicalize_body(ours, RELAXED) == Relaxed.canonicalize_body(theirs), raw


def test_a_body_sp_sparse_at_the_start_and_dense_later_matches_dkimpy():
    """SP is judged rare on the first 4 KB; past that many SPs to drop (more than one per 64
    bytes) the one-pass drop stops and the general passes finish the job."""
    rng = random.Random(4096)
    for _ in range(20):
        start = b"".join(rng.choice([b"word", b"x", b"-", b"\r\n"]) for _ in range(2000))
        dense = b"".join(rng.choice([b"a  ", b" \t ", b"b \r\n", b"  \r\n", b"c"])
                         for _ in range(rng.randrange(2000, 6000)))
        raw = b"From: a@example.com\r\n\r\n" + start + dense + b"\r\n"
        ours = Message.parse(raw).body
        _, theirs = rfc822_parse(raw)
        assert canonicalize_body(ours, RELAXED) == Relaxed.canonicalize_body(theirs)


@pytest.mark.parametrize("length", [None, 0, 1, 7, 8, 9, 1000])
def test_body_hash_with_length_limit_is_the_hash_of_the_prefix(length):
    import hashlib

    from authfilter.dkimcore import BodyHashes
    body = b"abc  \r\n" * 2 + b"\r\n\r\n"                  # relaxed: b"abc\r\nabc\r\n" (8 bytes)
    for algorithm in (SIMPLE, RELAXED):
        canon = canonicalize_body(body, algorithm)
        expected = canon if length is None else canon[:length]
        assert BodyHashes(body).hash(algorithm, "sha256", length) == hashlib.sha256(expected).digest()
    assert BodyHashes(b"no final line end").hash(RELAXED, "sha256", 18) == \
        hashlib.sha256(b"no final line end\r").digest()
