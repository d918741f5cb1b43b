"""Shared pieces of the benchmarks: test messages, a DKIM key, a loopback DNS server."""
from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from tests.dnsserver import DnsTestServer  # noqa: E402

DOMAIN = "bench.example"
SELECTOR = "sel2048"
SIZES = {"4k": 4 * 1024, "100k": 100 * 1024, "2m": 2 * 1024 * 1024}


def rsa_key(bits: int = 2048):
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(pub).decode()


def text_body(size: int, seed: int = 1) -> bytes:
    """Ordinary text: 72-character lines of words."""
    words = [b"lorem", b"ipsum", b"dolor", b"sit", b"amet", b"consectetur", b"adipiscing", b"elit",
             b"sed", b"do", b"eiusmod", b"tempor", b"incididunt", b"ut", b"labore", b"et", b"dolore"]
    lines, line, total, i = [], [], 0, seed
    while total < size:
        w = words[i % len(words)]
        i = i * 1103515245 + 12345 & 0x7FFFFFFF
        if sum(len(x) + 1 for x in line) + len(w) > 72:
            text = b" ".join(line) + b"\r\n"
            lines.append(text)
            total += len(text)
            line = []
        line.append(w)
    return b"".join(lines)


def whitespace_body(size: int) -> bytes:
    """Built to be slow for relaxed canonicalization: runs of mixed spaces and tabs, trailing WSP."""
    line = b"a \t \t  \t b" + b" \t" * 30 + b"\r\n"
    return line * (size // len(line))


def message(body: bytes, pem: bytes) -> bytes:
    import dkim
    head = (f"From: Someone <someone@{DOMAIN}>\r\nTo: user@sink.example\r\n"
            f"Subject: benchmark message\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <bench-{os.getpid()}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    raw = head + body
    sig = dkim.sign(raw, SELECTOR.encode(), DOMAIN.encode(), pem,
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + raw


def dns_server(pub_b64: str) -> DnsTestServer:
    """SPF with two includes, the DKIM key and a p=reject DMARC record."""
    server = DnsTestServer().start()
    server.add(DOMAIN, "TXT", f"v=spf1 include:_spf1.{DOMAIN} include:_spf2.{DOMAIN} -all")
    server.add(f"_spf1.{DOMAIN}", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    server.add(f"_spf2.{DOMAIN}", "TXT", "v=spf1 ip4:127.0.0.0/8 ip6:::1 -all")
    server.add(f"{SELECTOR}._domainkey.{DOMAIN}", "TXT", f"v=DKIM1; k=rsa; p={pub_b64}")
    server.add(f"_dmarc.{DOMAIN}", "TXT", f"v=DMARC1; p=reject; rua=mailto:dmarc@{DOMAIN}")
    server.add(DOMAIN, "A", "127.0.0.1")
    return server
