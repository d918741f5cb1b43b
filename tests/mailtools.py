"""Test mail: a DKIM key pair, its DNS records, and messages signed with dkimpy (an independent
signer, so the proxy's verification is checked against a different implementation)."""
from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class DkimKey:
    private_pem: bytes
    public_b64: str

    @property
    def record(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"


@functools.lru_cache(maxsize=None)
def dkim_key(bits: int = 2048) -> DkimKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return DkimKey(pem, base64.b64encode(der).decode())


def publish_spf_include_chain(zone, domain: str, client: str | None = None, *, includes: int = 9,
                              terms: int = 2600) -> None:
    """An SPF record of ``includes`` includes of ~40 KB each (``terms`` ip4: terms): pyspf takes
    100 ms and more per pass over them.  ``client``, if given, is in the last one."""
    zone.add(domain, "TXT", "v=spf1 " + " ".join(f"include:_s{i}.{domain}" for i in range(includes))
             + " -all")
    for i in range(includes):
        record = "v=spf1 " + " ".join(f"ip4:10.{i}.{j // 256}.{j % 256}" for j in range(terms))
        last = f" ip4:{client}" if client and i == includes - 1 else ""
        zone.add(f"_s{i}.{domain}", "TXT", record + last + " ~all")


def publish_domain(zone, domain: str, *, spf: str | None = "v=spf1 ip4:127.0.0.0/8 -all",
                   dmarc: str | None = "v=DMARC1; p=reject", selector: str = "sel",
                   key: DkimKey | None = None) -> None:
    """SPF, DMARC and the DKIM key record of a sending domain in the loopback DNS zone."""
    if spf:
        zone.add(domain, "TXT", spf)
    if dmarc:
        zone.add(f"_dmarc.{domain}", "TXT", dmarc)
    zone.add(f"{selector}._domainkey.{domain}", "TXT", (key or dkim_key()).record)


def message(from_addr: str = "alice@example.org", to: str = "bob@example.net",
            subject: str = "hello", body: bytes = b"Hello.\r\n", extra_headers: bytes = b"",
            message_id: str = "<1@example.org>") -> bytes:
    head = (f"From: {from_addr}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: {message_id}\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n").encode()
    return head + extra_headers + b"\r\n" + body


def signed(raw: bytes, domain: str = "example.org", selector: str = "sel",
           key: DkimKey | None = None) -> bytes:
    signature = dkim.sign(raw, selector.encode(), domain.encode(), (key or dkim_key()).private_pem,
                          canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") + raw


def body_of_size(size: int, line_length: int = 76) -> bytes:
    line = (b"x" * (line_length - 2)) + b"\r\n"
    return line * max(1, size // len(line))


def header_fields(content: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) of each header field of a delivered message, top first."""
    head = content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    fields: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name, value.strip()))
    return fields
