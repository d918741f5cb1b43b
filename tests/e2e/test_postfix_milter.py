"""End to end with a real Postfix wired to authfilter as a milter, as the README's "Milter
wiring" says:  smtplib (from 127.0.0.5) -> Postfix smtpd with smtpd_milters = unix socket of
`authfilter serve` (2 workers) -> queue -> Postfix smtp -> SmtpSink.
"""
from __future__ import annotations

import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest

from tests.e2e.stack import POSTFIX_DAEMONS, Authfilter, Postfix, delivered, postfix_unusable
from tests.mailtools import header_fields, message, publish_domain, signed
from tests.smtpsink import SmtpSink
from tests.support import free_port, wait_for

pytestmark = pytest.mark.skipif(postfix_unusable() is not None,
                                reason=f"e2e: {postfix_unusable()}")

CLIENT_IP = "127.0.0.5"
AUTHSERV_ID = "mx.e2e.test"


class MilterPostfix(Postfix):
    """The public smtpd with authfilter in smtpd_milters, no before-queue proxy."""

    def __init__(self, base: Path, *, front_port: int, relay_port: int, socket: Path) -> None:
        super().__init__(base, front_port=front_port, proxy_port=free_port(),
                         reinject_port=free_port(), relay_port=relay_port,
                         submission_port=free_port(), submission_proxy_port=free_port())
        self.socket = socket

    def master_cf(self, *, reinjection: bool = True) -> str:
        return (f"127.0.0.1:{self.front_port} inet n - n - 100 smtpd\n"
                f"  -o {{ smtpd_milters = {{ unix:{self.socket}, default_action=tempfail }} }}\n"
                + POSTFIX_DAEMONS)

    def write_config(self) -> None:
        super().write_config()
        with (self.etc / "main.cf").open("a") as main:
            main.write("milter_protocol = 6\n")


@pytest.fixture(scope="module")
def stack(dns_server):
    base = Path(tempfile.mkdtemp(prefix="authfilter-e2e-milter-"))
    base.chmod(0o755)                 # Postfix's smtpd (user postfix) reaches the socket here
    sink = SmtpSink().start()
    socket = base / "milter.sock"
    postfix = MilterPostfix(base / "postfix", front_port=free_port(), relay_port=sink.port,
                            socket=socket)
    proxy_port = free_port()
    config = base / "authfilter.toml"
    config.write_text(f"""
[general]
authserv_id = "{AUTHSERV_ID}"
[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
lifetime = 1.0
[proxy]
workers = 2
offload_workers = 0
upstream = "127.0.0.1:{free_port()}"
[[proxy.listeners]]
address = "127.0.0.1:{proxy_port}"
[[milter.listeners]]
address = "unix:{socket}"
[reports]
store = "sqlite:///{base}/reports.sqlite"
[policy]
trusted_networks = []
""")
    authfilter = Authfilter(config, proxy_port, base / "authfilter.log")
    try:
        authfilter.start()
        postfix.start()
        yield postfix, authfilter, sink
    finally:
        postfix.stop()
        authfilter.stop()
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)


def send(stack, raw: bytes, mail_from: str, rcpt: str = "bob@e2e-remote.example"):
    postfix = stack[0]
    with smtplib.SMTP("127.0.0.1", postfix.front_port, timeout=30,
                      source_address=(CLIENT_IP, 0)) as client:
        client.ehlo("client.example")
        return client.sendmail(mail_from, [rcpt], raw)


def test_dmarc_pass_is_delivered_with_our_results_above_postfixs_received(stack, dns_server):
    publish_domain(dns_server, "m1.e2e.example",
                   spf="v=spf1 ip4:127.0.0.5 -all", dmarc="v=DMARC1; p=reject")
    raw = signed(message(from_addr="alice@m1.e2e.example", message_id="<m1@e2e>",
                         extra_headers=f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass\r\n"
                                       f"Authentication-Results: {AUTHSERV_ID.upper()}; spf=pass\r\n"
                                       .encode()),
                 domain="m1.e2e.example")
    send(stack, raw, "alice@m1.e2e.example")
    sink = stack[2]
    assert wait_for(lambda: delivered(sink, "<m1@e2e>"))
    fields = header_fields(delivered(sink, "<m1@e2e>")[0].content)
    assert [n for n, _ in fields][:2] == ["Authentication-Results", "Received"]
    ours = [v for n, v in fields if n == "Authentication-Results"]
    assert len(ours) == 1, ours                               # both forged ones deleted
    assert ours[0].startswith(f"{AUTHSERV_ID};") and "dmarc=pass" in ours[0]
    assert "client 127.0.0.5" in ours[0]                      # the real client, from CONNECT


def test_a_spoof_under_p_reject_is_refused_with_the_policys_text(stack, dns_server):
    publish_domain(dns_server, "m2.e2e.example",
                   spf="v=spf1 ip4:192.0.2.0/24 -all", dmarc="v=DMARC1; p=reject")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(stack, message(from_addr="ceo@m2.e2e.example", message_id="<m2@e2e>"),
             "ceo@m2.e2e.example")
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.26 Unauthenticated email from m2.e2e.example")


def test_quarantine_goes_to_the_hold_queue(stack, dns_server):
    publish_domain(dns_server, "m3.e2e.example",
                   spf="v=spf1 ip4:192.0.2.0/24 -all", dmarc="v=DMARC1; p=quarantine")
    postfix = stack[0]
    before = len(postfix.queued("hold"))
    send(stack, message(from_addr="news@m3.e2e.example", message_id="<m3@e2e>"),
         "news@m3.e2e.example")
    assert wait_for(lambda: len(postfix.queued("hold")) == before + 1)


def test_two_messages_in_one_session_get_their_own_verdicts(stack, dns_server):
    publish_domain(dns_server, "m4.e2e.example",
                   spf="v=spf1 ip4:127.0.0.5 -all", dmarc="v=DMARC1; p=reject")
    publish_domain(dns_server, "m5.e2e.example",
                   spf="v=spf1 ip4:192.0.2.0/24 -all", dmarc="v=DMARC1; p=reject")
    postfix, _, sink = stack
    with smtplib.SMTP("127.0.0.1", postfix.front_port, timeout=30,
                      source_address=(CLIENT_IP, 0)) as client:
        client.ehlo("client.example")
        client.sendmail("a@m4.e2e.example", ["bob@e2e-remote.example"],
                        message(from_addr="a@m4.e2e.example", message_id="<m4@e2e>"))
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail("b@m5.e2e.example", ["bob@e2e-remote.example"],
                            message(from_addr="b@m5.e2e.example", message_id="<m5@e2e>"))
    assert wait_for(lambda: delivered(sink, "<m4@e2e>"))
    assert not delivered(sink, "<m5@e2e>")


def test_authfilter_down_means_4xx_and_the_sender_keeps_the_mail(stack, dns_server):
    publish_domain(dns_server, "m6.e2e.example",
                   spf="v=spf1 ip4:127.0.0.5 -all", dmarc="v=DMARC1; p=reject")
    _, authfilter, _ = stack
    authfilter.stop()
    try:
        with pytest.raises(smtplib.SMTPException) as deferred:
            send(stack, message(from_addr="a@m6.e2e.example", message_id="<m6@e2e>"),
                 "a@m6.e2e.example")
        code = getattr(deferred.value, "smtp_code", None) or \
            min(c for c, _ in deferred.value.recipients.values())
        assert 400 <= code < 500
    finally:
        authfilter.start()
