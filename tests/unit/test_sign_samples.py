"""Sample messages and helpers shared by the signing tests (and a check that the samples are
what they claim to be).

The samples are the awkward cases a signer must get right: folding, long lines, 8-bit bytes,
whitespace that relaxed canonicalization changes, repeated fields, an empty body, bare LF.
"""
from __future__ import annotations

import base64
from unittest import mock

import pytest

from authfilter.config import SIGNED_HEADERS
from authfilter.message import Message
from authfilter.signing.dkim_sign import HeaderPolicy, Signer
from authfilter.signing.keys import RSA_SHA256, SigningKey
from authfilter.signing.table import SigningTable, TableKey

CANONICALIZATIONS = ["relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple"]
NOW = 1_736_157_600

_HEAD = (b"From: Alice Example <alice@example.com>\r\n"
         b"To: Bob <bob@example.org>\r\n"
         b"Subject: Quarterly figures\r\n"
         b"Date: Mon, 6 Jan 2025 10:00:00 +0000\r\n"
         b"Message-ID: <20250106100000.1@example.com>\r\n")

SAMPLES: dict[str, bytes] = {
    "plain": _HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello Bob,\r\n\r\nsee you.\r\n",
    "folded": (b"From: Alice Example\r\n <alice@example.com>\r\n"
               b"To: Bob <bob@example.org>,\r\n\tCarol <carol@example.org>,\r\n   dave@example.net\r\n"
               b"Subject: a subject that\r\n\t was folded   with  odd\t whitespace   \r\n"
               b"Date: Mon, 6 Jan 2025 10:00:00 +0000\r\n\r\nbody\r\n"),
    "long": (_HEAD.replace(b"Subject: Quarterly figures", b"Subject: " + b"long " * 180)
             + b"References: " + b" ".join(b"<m%d@example.com>" % i for i in range(60)) + b"\r\n"
             + b"\r\n" + b"x" * 990 + b"\r\n" + (b"y" * 77 + b"\r\n") * 60),
    "eightbit": (b"From: =?utf-8?q?J=C3=BCrgen?= <juergen@example.com>\r\n"
                 b"To: \xc3\xa9lodie@example.org\r\n"
                 b"Subject: Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n"
                 b"Content-Type: text/plain; charset=iso-8859-1\r\n"
                 b"Content-Transfer-Encoding: 8bit\r\n\r\n"
                 b"Sch\xf6ne Gr\xfc\xdfe \xa9\r\n\xff\xfe\x80 end\r\n"),
    "empty-body": _HEAD + b"\r\n",
    "no-body-separator": _HEAD.rstrip(b"\r\n") + b"\r\n",
    "whitespace": (_HEAD + b"X-Spaces:   lots   of \t space  \r\n\r\n"
                   b"  leading\r\ntrailing  \t\r\n\tinner \t  runs\r\n\r\n\r\n\r\n"),
    "repeated": (b"Received: from a.example.net by mx.example.com; Mon, 6 Jan 2025 10:00:00 +0000\r\n"
                 + _HEAD + b"To: second-to@example.org\r\nCc: c1@example.org\r\nCc: c2@example.org\r\n"
                 b"Reply-To: r@example.com\r\n\r\nbody\r\n"),
    "bare-lf": _HEAD.replace(b"\r\n", b"\n") + b"\nline one\nline two\n",
    "no-final-newline": _HEAD + b"\r\nlast line without CRLF",
}


def key_of(private_key) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric import rsa
    algorithm = RSA_SHA256 if isinstance(private_key, rsa.RSAPrivateKey) else "ed25519-sha256"
    return SigningKey(algorithm, private_key)


def table_key(key: SigningKey, selector: str, domain: str = "example.com",
              patterns: tuple[str, ...] | None = None, active: bool = True) -> TableKey:
    return TableKey(domain, selector, key, active, patterns or (domain,))


DEFAULT_OVERSIGN = ["from", "to", "cc", "subject", "reply-to"]
DEFAULT_OVERSIGN_IF_PRESENT = ["date", "mime-version", "content-type", "content-transfer-encoding"]


def make_signer(*entries: TableKey, canonicalization: str = "relaxed/relaxed") -> Signer:
    policy = HeaderPolicy(SIGNED_HEADERS, DEFAULT_OVERSIGN, DEFAULT_OVERSIGN_IF_PRESENT)
    return Signer(SigningTable(list(entries)), policy, canonicalization)


def dkimpy_signature(raw: bytes, key: SigningKey, selector: str, domain: str,
                     names: list[bytes], canonicalization: str, now: int) -> bytes:
    """What dkimpy's DKIM.sign writes for the same inputs (our reference output)."""
    import dkim
    from cryptography.hazmat.primitives import serialization
    canon = tuple(c.encode() for c in canonicalization.split("/"))
    signer = dkim.DKIM(raw)
    with mock.patch("time.time", return_value=now + 0.25):
        if key.algorithm == RSA_SHA256:
            pem = key.private_key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.TraditionalOpenSSL,
                                                serialization.NoEncryption())
            return signer.sign(selector.encode(), domain.encode(), pem, canonicalize=canon,
                               include_headers=names)
        seed = base64.b64encode(key.private_key.private_bytes_raw())
        return signer.sign(selector.encode(), domain.encode(), seed, canonicalize=canon,
                           include_headers=names, signature_algorithm=b"ed25519-sha256")


def txt_lookup(records: dict[str, str]):
    """A dkimpy dnsfunc over a dict, for offline checks (the DNS-backed ones are in
    tests/integration)."""
    table = {(name.rstrip(".") + ".").encode(): value.encode() for name, value in records.items()}
    return lambda name, timeout=5: table.get(name)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_have_one_from_and_parse(name):
    message = Message.parse(SAMPLES[name])
    assert message.count(b"from") == 1
    assert message.errors == ([] if name != "no-body-separator" else
                              ["no empty line between header and body"])
