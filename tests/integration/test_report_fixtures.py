"""Shared parts of the report tests (no tests here): stores, real evaluations, an SMTP sink.

* ``sqlite_url`` / ``pg_url`` / ``store_url`` (both): a fresh store per test.  PostgreSQL is the
  real server on 127.0.0.1:5432 (``AUTHFILTER_TEST_PG`` to change it); each test gets its own
  schema, dropped afterwards.  Without a server the PostgreSQL tests skip, except under CI,
  where they fail (``.ci/run`` starts one).
* :func:`evaluate_mail`: messages run through the real engine against the loopback DNS server,
  with DKIM signatures made by dkimpy.
* ``smtp_sink``: an aiosmtpd server on loopback with STARTTLS (a certificate made for
  127.0.0.1) and AUTH PLAIN/LOGIN, keeping every message it accepts.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import os
import ssl
import uuid
from dataclasses import dataclass, field

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from authfilter.config import Config
from authfilter.engine import Engine
from authfilter.results import SessionFacts
from tests.support import free_port

PG_DSN = os.environ.get("AUTHFILTER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


# -- stores ------------------------------------------------------------------------------------
@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite://{tmp_path / 'reports.sqlite'}"


@pytest.fixture
def pg_url():
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_DSN} is not answering: {exc}")
        pytest.skip(f"PostgreSQL at {PG_DSN} is not answering (set AUTHFILTER_TEST_PG)")
    schema = f"authfilter_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_DSN else "?"
    try:
        yield f"{PG_DSN}{sep}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


# -- real evaluations ----------------------------------------------------------------------------
def _rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(public).decode()


_KEYS: dict[str, tuple[bytes, str]] = {}


def dkim_key(name: str) -> tuple[bytes, str]:
    if name not in _KEYS:
        _KEYS[name] = _rsa_key()
    return _KEYS[name]


def publish_domains(zone) -> None:
    """example.com: p=reject with sp=quarantine, SPF for 192.0.2.0/24 and 2001:db8::/32, a DKIM
    key; partner.example signs for it; reports for example.com go to the same org domain and
    to an external host that authorizes them."""
    zone.add("_dmarc.example.com", "TXT",
             "v=DMARC1; p=reject; sp=quarantine; adkim=r; aspf=r; "
             "rua=mailto:dmarc@example.com,mailto:reports@collector.example")
    zone.add("example.com", "TXT", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all")
    zone.add("sub.example.com", "A", "192.0.2.80")
    zone.add("s1._domainkey.example.com", "TXT", f"v=DKIM1; k=rsa; p={dkim_key('example.com')[1]}")
    zone.add("s2._domainkey.partner.example", "TXT",
             f"v=DKIM1; k=rsa; p={dkim_key('partner.example')[1]}")
    zone.add("_dmarc.testing.example", "TXT", "v=DMARC1; p=reject; t=y; rua=mailto:r@testing.example")
    zone.add("testing.example", "TXT", "v=spf1 -all")
    zone.add("example.com._report._dmarc.collector.example", "TXT", "v=DMARC1")


def message(from_domain: str, *, sign: list[tuple[str, str]] = (), subject: str = "hello") -> bytes:
    raw = (f"From: Someone <someone@{from_domain}>\r\nTo: user@receiver.example\r\n"
           f"Subject: {subject}\r\nDate: Mon, 04 May 2026 10:00:00 +0000\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@{from_domain}>\r\n\r\nBody text.\r\n").encode()
    for domain, selector in sign:
        signature = dkim.sign(raw, selector.encode(), domain.encode(), dkim_key(domain)[0],
                              include_headers=[b"from", b"to", b"subject", b"date"])
        raw = signature + raw
    return raw


@dataclass
class Evaluated:
    facts: SessionFacts
    verdict: object
    disposition: str
    raw: bytes = field(repr=False, default=b"")


# (client IP, MAIL FROM, From domain, signatures) of the mail the report tests receive.
MAIL = [
    ("192.0.2.10", "a@example.com", "example.com", [("example.com", "s1")]),     # pass both
    ("192.0.2.10", "a@example.com", "example.com", [("example.com", "s1")]),     # same row
    ("192.0.2.11", "b@example.com", "example.com", []),                          # SPF pass only
    ("203.0.113.5", "x@example.com", "example.com", []),                         # fail -> reject
    ("203.0.113.5", "x@example.com", "example.com", []),
    ("2001:db8::5", "c@example.com", "example.com", [("partner.example", "s2")]),  # SPF pass
    ("203.0.113.9", "", "example.com", [("partner.example", "s2")]),            # fail, null sender
    ("203.0.113.9", "y@sub.example.com", "sub.example.com", []),                # sp=quarantine
    ("198.51.100.7", "t@testing.example", "testing.example", []),               # t=y
]


def disposition_applied(verdict) -> str:
    """What a receiver honouring the policy does (as the proxy's default policy would)."""
    return verdict.dmarc.disposition if verdict.dmarc.result == "fail" else "none"


def evaluate_mail(zone, mail=MAIL) -> list[Evaluated]:
    publish_domains(zone)
    config = Config()
    from authfilter.dns import Resolver

    async def run():
        engine = Engine(config, Resolver([zone.address], timeout=0.5, lifetime=1.0))
        out = []
        for ip, mail_from, from_domain, signatures in mail:
            raw = message(from_domain, sign=signatures)
            facts = SessionFacts.create(ip, helo="mx.sender.example", mail_from=mail_from,
                                        recipients=["user@receiver.example"])
            verdict = await engine.evaluate(facts, raw)
            out.append(Evaluated(facts, verdict, disposition_applied(verdict), raw))
        return out

    return asyncio.run(run())


# -- an SMTP server that keeps what it receives ---------------------------------------------------
def self_signed(tmp_path) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "relay.crt", tmp_path / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class SinkHandler:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, bool, str | None]] = []
        self.reject: dict[str, str] = {}      # recipient -> reply to give at RCPT

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.reject:
            return self.reject[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                              session.ssl is not None, getattr(session, "login_data", None)))
        return "250 Message accepted"


USER, PASSWORD = "reporter", "s3cret"


@dataclass
class Sink:
    handler: SinkHandler
    port: int
    ca_file: str
    logins: list[str]


@pytest.fixture
def smtp_sink(tmp_path):
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = SinkHandler()
    logins: list[str] = []

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        if ok:
            logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)

    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=context,
                            require_starttls=True, authenticator=authenticate,
                            auth_required=True, auth_require_tls=True)
    controller.start()
    try:
        yield Sink(handler, port, cert, logins)
    finally:
        controller.stop()
