"""Cross-check with dkimpy: what it signs we verify, and tampering gives the same verdict in both
(except where we are deliberately stricter: content appended after l= is policy, not pass)."""
import asyncio
import itertools

import dkim
import pytest

from authfilter.checks.dkim import verify_dkim
from authfilter.config import DkimConfig
from authfilter.message import Message
from tests.integration.test_dkim_verify import MESSAGE, rsa_pem_and_record

BODIES = [b"", b"\r\n\r\n", b"one line", b"tabs\t\tand  spaces \t\r\n\r\n \r\nend  \r\n\r\n\r\n",
          "8-bit \u00e9t\u00e9 \r\n".encode(), b"dots\r\n.\r\n..\r\n"]
TAMPER = {
    "none": lambda raw: raw,
    "body word": lambda raw: raw.replace(b"noon", b"nine"),
    "body whitespace": lambda raw: raw.replace(b"meet  at", b"meet \t  at"),
    "trailing empty lines": lambda raw: raw + b"\r\n\r\n",
    "header whitespace": lambda raw: raw.replace(b"Subject: lunch?", b"Subject:  lunch? "),
    "header case": lambda raw: raw.replace(b"Subject: lunch?", b"SUBJECT: lunch?"),
    "header value": lambda raw: raw.replace(b"lunch?", b"dinner?"),
    "extra From": lambda raw: raw.replace(b"\r\n\r\n", b"\r\nFrom: mallory@evil.example\r\n\r\n", 1),
    "appended": lambda raw: raw + b"P.S. click here\r\n",
}


@pytest.fixture(scope="module")
def keys():
    return {b"r1": rsa_pem_and_record(2048), b"r2": rsa_pem_and_record(1024)}


def publish(zone, keys):
    for selector, (_, record) in keys.items():
        zone.add(f"{selector.decode()}._domainkey.example.com", "TXT", record)
    records = {f"{s.decode()}._domainkey.example.com.".encode(): r for s, (_, r) in keys.items()}
    return lambda name, timeout=5: records.get(name)


def ours(raw: bytes, resolver) -> list[str]:
    return [r.result for r in asyncio.run(verify_dkim(Message.parse(raw), resolver, DkimConfig()))]


@pytest.mark.parametrize("canon", list(itertools.product((b"simple", b"relaxed"), repeat=2)))
def test_tampering_gives_the_same_verdict(zone, resolver, keys, canon):
    dnsfunc = publish(zone, keys)
    for length in (False, True):
        signed = dkim.sign(MESSAGE, b"r1", b"example.com", keys[b"r1"][0], canonicalize=canon,
                           length=length) + MESSAGE
        for what, tamper in TAMPER.items():
            raw = tamper(signed)
            theirs = dkim.verify(raw, dnsfunc=dnsfunc)
            got = ours(raw, resolver)
            if length and what == "appended":
                assert theirs and got == ["policy"]               # dkimpy passes appended content
            else:
                assert got == (["pass"] if theirs else ["fail"]), (canon, length, what, got)


def test_bodies_and_multiple_signatures(zone, resolver, keys):
    dnsfunc = publish(zone, keys)
    for body in BODIES:
        message = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
        raw = dkim.sign(message, b"r2", b"example.com", keys[b"r2"][0],
                        canonicalize=(b"simple", b"simple")) + message
        raw = dkim.sign(raw, b"r1", b"example.com", keys[b"r1"][0],
                        canonicalize=(b"relaxed", b"relaxed")) + raw
        assert dkim.DKIM(raw).verify(dnsfunc=dnsfunc) and dkim.DKIM(raw).verify(idx=1, dnsfunc=dnsfunc)
        assert ours(raw, resolver) == ["pass", "pass"], body


def test_ed25519_signed_by_dkimpy(zone, resolver):
    seed = b"nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="          # RFC 8032 7.1 test key 1
    zone.add("ed._domainkey.example.com", "TXT",
             "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    for canon in itertools.product((b"simple", b"relaxed"), repeat=2):
        raw = dkim.sign(MESSAGE, b"ed", b"example.com", seed, signature_algorithm=b"ed25519-sha256",
                        canonicalize=canon) + MESSAGE
        assert ours(raw, resolver) == ["pass"]
        assert ours(raw.replace(b"noon", b"nine"), resolver) == ["fail"]
