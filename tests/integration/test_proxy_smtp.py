"""The proxy's SMTP server side against bad and unusual input, byte by byte over a socket:
wrong order, binary, over-long lines, timeouts, limits, XFORWARD, PROXY protocol, STARTTLS."""
from __future__ import annotations

import datetime
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authfilter.config import ListenerConfig
from authfilter.smtp.proxy_protocol import build_v1, build_v2
from tests.mailtools import message, publish_domain, signed
from tests.proxyrunner import proxy_config


class Dialog:
    """A raw SMTP client: send bytes, read one complete (multi-line) reply."""

    def __init__(self, port: int, *, banner: bool = True, prefix: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        if prefix:
            self.sock.sendall(prefix)
        self.banner = self.reply() if banner else None

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return b"".join(lines) or b"(closed)"
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            return self.file.readline() == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_ehlo_advertises_the_extensions_postfix_needs(start_proxy):
    d = Dialog(start_proxy().port)
    assert d.banner.startswith(b"220 mx.test ESMTP")
    ehlo = d.cmd(b"EHLO client.example").decode()
    for keyword in ("PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                    "DSN", "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"):
        assert f"250-{keyword}\r\n" in ehlo or f"250 {keyword}\r\n" in ehlo
    assert "STARTTLS" not in ehlo
    assert d.cmd(b"QUIT").startswith(b"221 2.0.0")


def test_commands_out_of_order(start_proxy):
    d = Dialog(start_proxy().port)
    assert d.cmd(b"MAIL FROM:<a@example.org>").startswith(b"503 5.5.1")   # before EHLO
    assert d.cmd(b"RCPT TO:<b@example.net>").startswith(b"503 5.5.1")
    assert d.cmd(b"DATA").startswith(b"503 5.5.1")
    d.cmd(b"EHLO client.example")
    assert d.cmd(b"RCPT TO:<b@example.net>").startswith(b"503 5.5.1 Error: need MAIL")
    assert d.cmd(b"MAIL FROM:<a@example.org>").startswith(b"250")
    assert d.cmd(b"MAIL FROM:<a@example.org>").startswith(b"503 5.5.1 Error: nested MAIL")
    assert d.cmd(b"DATA").startswith(b"554 5.5.1")                          # no recipient yet
    assert d.cmd(b"RSET").startswith(b"250")
    assert d.cmd(b"NOOP").startswith(b"250")


def test_bad_input_gets_rfc_replies_and_the_session_goes_on(start_proxy, sink):
    d = Dialog(start_proxy().port)
    assert d.cmd(b"\x00\xff\xfe\x01garbage").startswith(b"500 5.5.2")
    assert d.cmd(b"FROBNICATE now").startswith(b"500 5.5.2")
    assert d.cmd(b"BDAT 10 LAST").startswith(b"502 5.5.1")
    assert d.cmd(b"EHLO " + b"x" * 5000).startswith(b"500 5.5.2 Error: line too long")
    assert d.cmd(b"EHLO").startswith(b"501 5.5.4")
    assert d.cmd(b"EHLO client.example").startswith(b"250")
    assert d.cmd(b"MAIL FROM:<a@example.org> FROB=1").startswith(b"555 5.5.4")
    assert d.cmd(b"MAIL FROM:<a@example.org> SIZE=abc").startswith(b"501 5.5.4")
    assert d.cmd(b"MAIL FROM:<a@example.org").startswith(b"501 5.1.7")
    assert d.cmd(b"MAIL FROM:<a@example.org>").startswith(b"250")
    assert d.cmd(b"RCPT TO:<>").startswith(b"501 5.1.3")
    assert d.cmd(b"DATA now").startswith(b"501 5.5.4")
    assert d.cmd(b"QUIT").startswith(b"221")
    assert sink.messages == []


def test_too_many_errors_end_with_421(start_proxy):
    d = Dialog(start_proxy(max_errors=3).port)
    d.cmd(b"BOGUS")
    d.cmd(b"BOGUS")
    assert d.cmd(b"BOGUS").startswith(b"500")
    assert d.reply().startswith(b"421 4.7.0")
    assert d.closed()


def test_command_timeout_gets_421(start_proxy):
    config = proxy_config("127.0.0.1:1")
    config.proxy.command_timeout = 0.3
    d = Dialog(start_proxy(config).port)
    assert d.reply().startswith(b"421 4.4.2")
    assert d.closed()


def test_data_timeout_gets_421_and_nothing_is_relayed(zone, start_proxy, sink):
    publish_domain(zone, "example.org")
    config = proxy_config(sink.address)
    config.proxy.data_timeout = 0.3
    d = Dialog(start_proxy(config).port)
    d.cmd(b"EHLO client.example")
    d.cmd(b"MAIL FROM:<alice@example.org>")
    d.cmd(b"RCPT TO:<bob@example.net>")
    assert d.cmd(b"DATA").startswith(b"354")
    d.sock.sendall(b"Subject: slow\r\n\r\npart")
    assert d.reply().startswith(b"421 4.4.2")
    assert sink.messages == [] and b"DATA" not in sink.commands


def test_client_vanishing_mid_data_leaves_nothing_upstream(zone, start_proxy, sink):
    publish_domain(zone, "example.org")
    proxy = start_proxy()
    d = Dialog(proxy.port)
    d.cmd(b"EHLO client.example")
    d.cmd(b"MAIL FROM:<alice@example.org>")
    d.cmd(b"RCPT TO:<bob@example.net>")
    d.cmd(b"DATA")
    d.sock.sendall(signed(message())[:200])
    d.close()
    for _ in range(50):
        if not proxy.server.sessions:
            break
        time.sleep(0.02)
    assert not proxy.server.sessions
    assert sink.messages == [] and b"DATA" not in sink.commands


def test_pipelined_commands_are_answered_in_order(zone, start_proxy, sink):
    publish_domain(zone, "example.org")
    d = Dialog(start_proxy().port)
    d.cmd(b"EHLO client.example")
    d.sock.sendall(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
                   b"RCPT TO:<carol@example.net>\r\nDATA\r\n")
    replies = [d.reply()[:3] for _ in range(4)]
    assert replies == [b"250", b"250", b"250", b"354"]
    d.sock.sendall(signed(message()) + b".\r\nQUIT\r\n")
    assert d.reply().startswith(b"250 2.0.0 Ok: queued as")
    assert d.reply().startswith(b"221")
    assert sink.messages[-1].recipients == ["bob@example.net", "carol@example.net"]


def test_size_limits(zone, start_proxy, sink):
    publish_domain(zone, "example.org")
    d = Dialog(start_proxy(max_message_size=2048).port)
    d.cmd(b"EHLO client.example")
    assert d.cmd(b"MAIL FROM:<alice@example.org> SIZE=4096").startswith(b"552 5.3.4")
    d.cmd(b"MAIL FROM:<alice@example.org>")
    d.cmd(b"RCPT TO:<bob@example.net>")
    d.cmd(b"DATA")
    d.sock.sendall(message(body=b"x" * 70 + b"\r\n") * 60 + b".\r\n")
    assert d.reply().startswith(b"552 5.3.4")
    assert d.cmd(b"NOOP").startswith(b"250")                 # the session goes on
    assert sink.messages == [] and b"DATA" not in sink.commands


def test_recipient_limit(start_proxy):
    d = Dialog(start_proxy(max_recipients=2).port)
    d.cmd(b"EHLO client.example")
    d.cmd(b"MAIL FROM:<alice@example.org>")
    assert d.cmd(b"RCPT TO:<a@example.net>").startswith(b"250")
    assert d.cmd(b"RCPT TO:<b@example.net>").startswith(b"250")
    assert d.cmd(b"RCPT TO:<c@example.net>").startswith(b"452 4.5.3")


def test_session_limit_gets_421(start_proxy):
    proxy = start_proxy(max_sessions=1)
    first = Dialog(proxy.port)
    second = Dialog(proxy.port)
    assert first.banner.startswith(b"220")
    assert second.banner.startswith(b"421 4.3.2")
    assert second.closed()


def test_xforward_gives_the_real_client_and_is_passed_on_then_reset(zone, start_proxy, sink):
    publish_domain(zone, "example.org", spf="v=spf1 ip6:2001:db8::5 -all")
    proxy = start_proxy()
    d = Dialog(proxy.port)
    d.cmd(b"EHLO postfix.example")
    assert d.cmd(b"XFORWARD NAME=mail.client.example ADDR=IPV6:2001:db8::5 PORT=4321").startswith(b"250")
    assert d.cmd(b"XFORWARD PROTO=ESMTP HELO=helo+2Bname.example IDENT=ABC SOURCE=REMOTE").startswith(b"250")
    d.cmd(b"MAIL FROM:<alice@example.org>")
    assert d.cmd(b"XFORWARD NAME=x").startswith(b"503 5.5.1")     # not inside a transaction
    d.cmd(b"RCPT TO:<bob@example.net>")
    d.cmd(b"DATA")
    d.sock.sendall(signed(message()) + b".\r\n")
    assert d.reply().startswith(b"250")
    facts, verdict, _, _, _ = proxy.observed[-1]
    assert str(facts.client_ip) == "2001:db8::5" and facts.helo == "helo+name.example"
    assert verdict.spf.result == "pass"
    assert sink.messages[-1].xforward == {"NAME": "mail.client.example", "ADDR": "IPV6:2001:db8::5",
                                          "PORT": "4321", "PROTO": "ESMTP",
                                          "HELO": "helo+2Bname.example", "IDENT": "ABC",
                                          "SOURCE": "REMOTE"}
    # the next transaction without XFORWARD is the connection's own client again
    d.cmd(b"MAIL FROM:<alice@example.org>")
    d.cmd(b"RCPT TO:<bob@example.net>")
    d.cmd(b"DATA")
    d.sock.sendall(signed(message()) + b".\r\n")
    assert d.reply().startswith(b"250")
    assert str(proxy.observed[-1][0].client_ip) == "127.0.0.1"
    assert sink.messages[-1].xforward["ADDR"] == "127.0.0.1"


def test_xforward_unavailable_is_an_unknown_client_verified_never_trusted(zone, start_proxy):
    """Postfix sends ADDR=[UNAVAILABLE] when it cannot name the client: the message is
    verified with what there is (SPF none: no address to judge; DKIM and DMARC as usual)."""
    publish_domain(zone, "example.org")
    proxy = start_proxy()
    d = Dialog(proxy.port)
    d.cmd(b"EHLO postfix.example")
    assert d.cmd(b"XFORWARD ADDR=[unavailable] NAME=[UNAVAILABLE]").startswith(b"250")
    assert d.cmd(b"XFORWARD ADDR=not+20valid").startswith(b"501")
    assert d.cmd(b"XFORWARD COLOR=blue").startswith(b"501 5.5.4")
    d.cmd(b"MAIL FROM:<alice@example.org>")
    d.cmd(b"RCPT TO:<bob@example.net>")
    d.cmd(b"DATA")
    d.sock.sendall(signed(message()) + b".\r\n")
    assert d.reply().startswith(b"250")
    facts, verdict, action, _, _ = proxy.observed[-1]
    assert facts.client_ip is None and not facts.trusted
    assert verdict.spf.result == "none" and verdict.result("iprev") is None
    assert verdict.dmarc.result == "pass" and action.kind == "accept"    # aligned DKIM
    # unsigned, the same spoof under p=reject is refused: an unknown client earns nothing
    d.cmd(b"XFORWARD ADDR=[UNAVAILABLE]")
    d.cmd(b"MAIL FROM:<alice@example.org>")
    d.cmd(b"RCPT TO:<bob@example.net>")
    d.cmd(b"DATA")
    d.sock.sendall(message() + b".\r\n")
    assert d.reply().startswith(b"550 5.7.26")


def test_xforward_only_for_trusted_peers(start_proxy):
    d = Dialog(start_proxy(xforward_hosts=["192.0.2.0/24"]).port)
    assert b"XFORWARD" not in d.cmd(b"EHLO client.example")
    assert d.cmd(b"XFORWARD ADDR=192.0.2.9").startswith(b"550 5.7.0")


@pytest.mark.parametrize("header", [build_v1(("203.0.113.7", 5555), ("127.0.0.1", 25)),
                                    build_v2(("203.0.113.7", 5555), ("127.0.0.1", 25))])
def test_proxy_protocol_names_the_client(zone, start_proxy, sink, header):
    publish_domain(zone, "example.org", spf="v=spf1 ip4:203.0.113.7 -all")
    config = proxy_config(sink.address)
    config.proxy.listeners = [ListenerConfig(address="127.0.0.1:0", proxy_protocol=True)]
    proxy = start_proxy(config)
    d = Dialog(proxy.port, prefix=header)
    assert d.banner.startswith(b"220")
    assert b"XFORWARD" not in d.cmd(b"EHLO client.example")   # 203.0.113.7 may not XFORWARD
    d.cmd(b"MAIL FROM:<alice@example.org>")
    d.cmd(b"RCPT TO:<bob@example.net>")
    d.cmd(b"DATA")
    d.sock.sendall(message() + b".\r\n")
    assert d.reply().startswith(b"250")
    facts, verdict, _, _, _ = proxy.observed[-1]
    assert str(facts.client_ip) == "203.0.113.7" and verdict.spf.result == "pass"
    assert sink.messages[-1].xforward["ADDR"] == "203.0.113.7"


def test_proxy_protocol_from_an_untrusted_peer_is_refused(start_proxy):
    config = proxy_config("127.0.0.1:1")
    config.proxy.listeners = [ListenerConfig(address="127.0.0.1:0", proxy_protocol=True)]
    config.proxy.proxy_protocol_hosts = ["192.0.2.0/24"]
    d = Dialog(start_proxy(config).port, banner=False,
               prefix=build_v1(("203.0.113.7", 5555), ("127.0.0.1", 25)))
    assert d.closed()


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_starttls_when_a_certificate_is_configured(zone, start_proxy, sink, tmp_path):
    publish_domain(zone, "example.org")
    cert, key = _self_signed(tmp_path)
    config = proxy_config(sink.address)
    config.proxy.listeners = [ListenerConfig(address="127.0.0.1:0", tls_cert=cert, tls_key=key)]
    proxy = start_proxy(config)
    d = Dialog(proxy.port)
    assert b"STARTTLS" in d.cmd(b"EHLO client.example")
    d.sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")   # CVE-2011-0411 style
    assert d.reply().startswith(b"220 2.0.0")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    tls = context.wrap_socket(d.sock, server_hostname="mx.test")
    f = tls.makefile("rb")

    def cmd(line):
        tls.sendall(line + b"\r\n")
        out = b""
        while True:
            got = f.readline()
            out += got
            if got[3:4] != b"-":
                return out
    ehlo = cmd(b"EHLO client.example")
    assert ehlo.startswith(b"250") and b"STARTTLS" not in ehlo
    assert cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")   # no injected MAIL before
    assert cmd(b"RCPT TO:<bob@example.net>").startswith(b"250")
    assert cmd(b"DATA").startswith(b"354")
    tls.sendall(signed(message()) + b".\r\n")
    assert f.readline().startswith(b"250")
    assert len(sink.messages) == 1 and sink.messages[0].mail_from == "alice@example.org"
