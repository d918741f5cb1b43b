"""End to end with a real Postfix wired to authfilter as a milter exactly as
contrib/postfix/main.cf.milter, master.cf.milter and the [[milter.listeners]] of
contrib/authfilter.toml say (sockets in a temporary directory instead of /run/authfilter):

    smtplib (from 127.0.0.5) -> Postfix smtpd, smtpd_milters = milter.sock (inbound)
    smtplib -> Postfix submission smtpd, -o smtpd_milters = submission.sock (submission)
    sendmail(1) -> postdrop -> pickup -> cleanup, non_smtpd_milters = local.sock (local)
        ... -> queue -> Postfix smtp -> SmtpSink

with `authfilter serve` (2 workers) on the three sockets.  DNS comes from the loopback test
server (not reset between the tests of this module: each test uses its own domains).
"""
from __future__ import annotations

import re
import shutil
import smtplib
import tempfile
from pathlib import Path

import dkim
import pytest

from tests.dnsserver import dkimpy_dnsfunc
from tests.e2e.stack import (Authfilter, MilterPostfix, contrib_milter_listeners, delivered,
                             postfix_unusable)
from tests.mailtools import dkim_key, header_fields, message, publish_domain, signed
from tests.smtpsink import SmtpSink
from tests.support import free_port, wait_for

pytestmark = pytest.mark.skipif(postfix_unusable() is not None,
                                reason=f"e2e: {postfix_unusable()}")

CLIENT_IP = "127.0.0.5"
AUTHSERV_ID = "mx.e2e.test"
SIGNING_DOMAIN = "msign.e2e.example"       # the signing table's one domain
SIGNING_KEY = dkim_key()


@pytest.fixture(scope="module")
def stack(dns_server):
    base = Path(tempfile.mkdtemp(prefix="authfilter-e2e-milter-"))
    base.chmod(0o755)                 # Postfix's smtpd and cleanup (user postfix) reach the sockets here
    sink = SmtpSink().start()
    postfix = MilterPostfix(base / "postfix", front_port=free_port(),
                            submission_port=free_port(), relay_port=sink.port, socket_dir=base)
    proxy_port = free_port()          # only so that the test knows when serve is up
    key_file = base / f"{SIGNING_DOMAIN}.s1.key"
    key_file.write_bytes(SIGNING_KEY.private_pem)
    key_file.chmod(0o600)
    dns_server.add(f"s1._domainkey.{SIGNING_DOMAIN}", "TXT", SIGNING_KEY.record)
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
[[signing.keys]]
from_domains = ["{SIGNING_DOMAIN}"]
domain = "{SIGNING_DOMAIN}"
selector = "s1"
key_file = "{key_file}"
[reports]
store = "sqlite:///{base}/reports.sqlite"
[policy]
trusted_networks = []
""" + contrib_milter_listeners(base))
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


def test_authfilter_down_means_4xx_at_smtp_and_local_mail_leaving_unsigned(stack, dns_server):
    """main.cf.milter's default actions: tempfail for SMTP clients (they keep the mail),
    accept for sendmail(1) (cron mail is not held back by the filter that signs it)."""
    publish_domain(dns_server, "m6.e2e.example",
                   spf="v=spf1 ip4:127.0.0.5 -all", dmarc="v=DMARC1; p=reject")
    postfix, authfilter, sink = stack
    authfilter.stop()
    try:
        with pytest.raises(smtplib.SMTPException) as deferred:
            send(stack, message(from_addr="a@m6.e2e.example", message_id="<m6@e2e>"),
                 "a@m6.e2e.example")
        code = getattr(deferred.value, "smtp_code", None) or \
            min(c for c, _ in deferred.value.recipients.values())
        assert 400 <= code < 500
        postfix.sendmail(message(from_addr=f"alice@{SIGNING_DOMAIN}", message_id="<l6@e2e>"),
                         f"alice@{SIGNING_DOMAIN}", ["bob@e2e-remote.example"])
        assert wait_for(lambda: delivered(sink, "<l6@e2e>")), postfix.log_text()[-3000:]
        assert b"DKIM-Signature:" not in delivered(sink, "<l6@e2e>")[0].content
    finally:
        authfilter.start()


def dkimpy_verifies(content: bytes, dns_server) -> bool:
    """dkimpy's verdict on the first DKIM-Signature, the key from the loopback DNS server."""
    return dkim.verify(content, dnsfunc=dkimpy_dnsfunc(dns_server.address))


def test_sendmail_mail_of_a_signing_table_domain_leaves_signed(stack, dns_server):
    """sendmail(1) -> non_smtpd_milters -> the local role: signed above Postfix's Received:,
    and dkimpy verifies the signature over the message as Postfix delivered it."""
    postfix, authfilter, sink = stack
    postfix.sendmail(message(from_addr=f"alice@{SIGNING_DOMAIN}", message_id="<l1@e2e>",
                             body=b"Nightly backup done.\r\n"),
                     f"alice@{SIGNING_DOMAIN}", ["bob@e2e-remote.example"])
    assert wait_for(lambda: delivered(sink, "<l1@e2e>")), postfix.log_text()[-3000:]
    content = delivered(sink, "<l1@e2e>")[0].content
    names = [n for n, _ in header_fields(content)]
    assert names[:2] == ["DKIM-Signature", "Received"]      # signed above Postfix's Received
    assert "Authentication-Results" not in names             # local mail is not verified
    assert dkimpy_verifies(content, dns_server)
    signature = dict(header_fields(content))["DKIM-Signature"]
    assert f"d={SIGNING_DOMAIN};" in signature and "s=s1;" in signature
    # the queue id ({i}, from cleanup) is in our log line
    queue_id = re.search(r"([0-9A-F]{6,}): message-id=<l1@e2e>", postfix.log_text()).group(1)
    line = next(l for l in authfilter.log_text().splitlines()
                if "role=local" in l and f"queue_id={queue_id}" in l)
    assert "action=accept" in line


def test_sendmail_mail_is_never_refused_even_when_inbound_checks_would_refuse_it(stack,
                                                                                  dns_server):
    """The same spoof (p=reject, SPF -all, no signature) that the public smtpd refuses leaves
    unsigned and unrefused when it is submitted locally: the local role neither verifies nor
    refuses, and signs only for the signing table."""
    publish_domain(dns_server, "l2.e2e.example", spf="v=spf1 -all", dmarc="v=DMARC1; p=reject")
    spoof = message(from_addr="ceo@l2.e2e.example", message_id="<l2@e2e>")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(stack, spoof, "ceo@l2.e2e.example")
    assert refused.value.smtp_code == 550
    postfix, _, sink = stack
    postfix.sendmail(spoof, "ceo@l2.e2e.example", ["bob@e2e-remote.example"])
    assert wait_for(lambda: delivered(sink, "<l2@e2e>")), postfix.log_text()[-3000:]
    names = [n for n, _ in header_fields(delivered(sink, "<l2@e2e>")[0].content)]
    assert "DKIM-Signature" not in names and "Authentication-Results" not in names


def submit(stack, raw: bytes, mail_from: str) -> None:
    postfix = stack[0]
    with smtplib.SMTP("127.0.0.1", postfix.submission_port, timeout=30) as client:
        assert client.sendmail(mail_from, ["bob@e2e-remote.example"], raw) == {}


def test_the_submission_service_signs_signing_table_domains_only(stack, dns_server):
    """master.cf.milter's submission service -> submission.sock (role submission)."""
    _, _, sink = stack
    submit(stack, message(from_addr=f"user@{SIGNING_DOMAIN}", message_id="<s1@e2e>"),
           f"user@{SIGNING_DOMAIN}")
    submit(stack, message(from_addr="user@s2.e2e.example", message_id="<s2@e2e>"),
           "user@s2.e2e.example")
    assert wait_for(lambda: delivered(sink, "<s1@e2e>") and delivered(sink, "<s2@e2e>"))
    content = delivered(sink, "<s1@e2e>")[0].content
    assert [n for n, _ in header_fields(content)][:2] == ["DKIM-Signature", "Received"]
    assert dkimpy_verifies(content, dns_server)
    other = [n for n, _ in header_fields(delivered(sink, "<s2@e2e>")[0].content)]
    assert "DKIM-Signature" not in other and "Authentication-Results" not in other



def test_a_bare_body_from_a_script_is_signed_with_the_headers_postfix_adds(stack, dns_server):
    """`echo text | sendmail -f alice@...`: cleanup adds From: (from the envelope) and Date:
    before non_smtpd_milters see the message, so they are signed too."""
    postfix, _, sink = stack
    postfix.sendmail(b"Message-ID: <l3@e2e>\n\ndisk full\n", f"alice@{SIGNING_DOMAIN}",
                     ["bob@e2e-remote.example"])
    assert wait_for(lambda: delivered(sink, "<l3@e2e>")), postfix.log_text()[-3000:]
    content = delivered(sink, "<l3@e2e>")[0].content
    fields = dict(header_fields(content))
    assert fields["From"].endswith(f"<alice@{SIGNING_DOMAIN}>") and "Date" in fields
    tags = dict(t.strip().split("=", 1) for t in fields["DKIM-Signature"].split(";") if t.strip())
    assert {"from", "date"} <= {h.strip() for h in tags["h"].split(":")}
    assert dkimpy_verifies(content, dns_server)
