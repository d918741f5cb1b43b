"""End to end with a real Postfix configured exactly as contrib/postfix/ (the README) says:

    smtplib (from 127.0.0.5) -> Postfix smtpd -> authfilter serve (2 workers) ->
    Postfix reinjection smtpd -> queue -> Postfix smtp -> SmtpSink

DNS comes from the loopback test server; each test uses its own domains, so answers the
running authfilter cached for an earlier test cannot leak into a later one.
"""
from __future__ import annotations

import os
import shutil
import signal
import smtplib
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from authfilter.reports.backends import open_store
from tests.e2e.stack import Authfilter, Postfix, delivered, postfix_unusable
from tests.mailtools import dkim_key, header_fields, message, publish_domain, signed
from tests.smtpsink import SmtpSink
from tests.support import free_port, wait_for

pytestmark = pytest.mark.skipif(postfix_unusable() is not None,
                                reason=f"e2e: {postfix_unusable()}")

CLIENT_IP = "127.0.0.5"          # Postfix connects to authfilter from 127.0.0.1, not from here
AUTHSERV_ID = "mx.e2e.test"
SIGNING_KEY = dkim_key()


@pytest.fixture(scope="module")
def stack(dns_server):
    # Not under pytest's tmp_path: Postfix's unprivileged daemons must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="authfilter-e2e-"))
    base.chmod(0o755)
    sink = SmtpSink().start()
    ports = {name: free_port() for name in ("front", "proxy", "reinject", "submission",
                                            "submission_proxy")}
    postfix = Postfix(base / "postfix", front_port=ports["front"], proxy_port=ports["proxy"],
                      reinject_port=ports["reinject"], relay_port=sink.port,
                      submission_port=ports["submission"],
                      submission_proxy_port=ports["submission_proxy"])
    key_file = base / "sign.e2e.example.s1.key"
    key_file.write_bytes(SIGNING_KEY.private_pem)
    key_file.chmod(0o600)
    config = base / "authfilter.toml"
    config.write_text(f"""
[general]
authserv_id = "{AUTHSERV_ID}"

[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
lifetime = 1.0

[proxy]
upstream = "127.0.0.1:{ports['reinject']}"
workers = 2
offload_workers = 1

[[proxy.listeners]]
address = "127.0.0.1:{ports['proxy']}"

[[proxy.listeners]]
address = "127.0.0.1:{ports['submission_proxy']}"
role = "submission"

[[signing.keys]]
from_domains = ["sign.e2e.example"]
domain = "sign.e2e.example"
selector = "s1"
key_file = "{key_file}"

[reports]
store = "sqlite:///{base}/reports.sqlite"
flush_interval = 0.2

[policy]
trusted_networks = []
""")
    authfilter = Authfilter(config, ports["proxy"], base / "authfilter.log")
    try:
        postfix.start()
        authfilter.start()
        yield postfix, authfilter, sink
    finally:
        authfilter.stop()
        postfix.stop()
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)


def client(stack) -> smtplib.SMTP:
    postfix = stack[0]
    return smtplib.SMTP("127.0.0.1", postfix.front_port, timeout=30, source_address=(CLIENT_IP, 0))


def test_dmarc_pass_is_delivered_with_our_results_and_the_real_client(stack, zone):
    postfix, authfilter, sink = stack
    publish_domain(zone, "pass.e2e.example", spf=f"v=spf1 ip4:{CLIENT_IP} -all")
    raw = signed(message(from_addr="alice@pass.e2e.example", message_id="<pass@e2e>",
                         extra_headers=f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass\r\n".encode()),
                 domain="pass.e2e.example")
    with client(stack) as c:
        assert c.sendmail("alice@pass.e2e.example", ["bob@dest.example"], raw) == {}
    assert wait_for(lambda: delivered(sink, "<pass@e2e>")), postfix.log_text()[-3000:]
    fields = header_fields(delivered(sink, "<pass@e2e>")[0].content)
    ours = [i for i, (n, v) in enumerate(fields)
            if n.lower() == "authentication-results" and v.startswith(f"{AUTHSERV_ID};")]
    assert len(ours) == 1                                   # the forged one was removed
    first_not_received = next(i for i, (n, _) in enumerate(fields) if n != "Received")
    assert ours[0] == first_not_received                    # ours above the client's headers
    results = fields[ours[0]][1]
    # SPF passes only for 127.0.0.5: authfilter judged the real client, not Postfix's 127.0.0.1
    assert "spf=pass" in results and "dkim=pass" in results and "dmarc=pass" in results
    assert f"client {CLIENT_IP}" in results                 # the real client IP is in our header
    # one log line for the message, with the upstream's queue id ...
    line = next(l for l in authfilter.log_text().splitlines() if "from_domain=pass.e2e.example" in l)
    assert f"client={CLIENT_IP}" in line and "dmarc=pass" in line and "action=accept" in line
    queue_id = line.split("queue_id=")[1].split()[0]
    # ... under which the reinjection smtpd logged the real client that XFORWARD passed on
    # (its Received: header names the connection, authfilter on 127.0.0.1, by design)
    assert ("postfix/authfiltered/smtpd" in postfix.log_text() and
            f"{queue_id}: client=unknown[127.0.0.1], orig_client=unknown[{CLIENT_IP}]" in postfix.log_text())


def test_report_rows_are_recorded_for_what_was_checked(stack, zone):
    postfix, authfilter, sink = stack
    publish_domain(zone, "rows.e2e.example", spf=f"v=spf1 ip4:{CLIENT_IP} -all")
    raw = signed(message(from_addr="carol@rows.e2e.example", message_id="<rows@e2e>"),
                 domain="rows.e2e.example")
    with client(stack) as c:
        c.sendmail("carol@rows.e2e.example", ["bob@dest.example"], raw)
    store = open_store(tomllib.loads(authfilter.config_file.read_text())["reports"]["store"])
    try:
        def recorded():
            now = int(time.time())
            return [r for r in store.source_counts(now - 3600, now + 3600, "rows.e2e.example")]
        assert wait_for(lambda: recorded() == [("rows.e2e.example", CLIENT_IP, 1, "none", 1)])
    finally:
        store.close()


def test_spoofed_mail_under_p_reject_is_refused_to_the_client(stack, zone):
    postfix, authfilter, sink = stack
    publish_domain(zone, "reject.e2e.example")
    zone.add("spoofer.e2e.example", "TXT", f"v=spf1 ip4:{CLIENT_IP} -all")
    with client(stack) as c:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail("x@spoofer.e2e.example", ["bob@dest.example"],
                       message(from_addr="ceo@reject.e2e.example", message_id="<spoof@e2e>"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.26")
    time.sleep(0.5)
    assert not delivered(sink, "<spoof@e2e>")
    assert not postfix.queued("incoming") and not postfix.queued("active") and not postfix.queued("deferred")


def test_quarantined_mail_goes_to_the_hold_queue(stack, zone):
    postfix, authfilter, sink = stack
    publish_domain(zone, "quarantine.e2e.example", dmarc="v=DMARC1; p=quarantine")
    zone.add("spoofer2.e2e.example", "TXT", f"v=spf1 ip4:{CLIENT_IP} -all")
    before = len(postfix.queued("hold"))
    with client(stack) as c:
        c.sendmail("x@spoofer2.e2e.example", ["bob@dest.example"],
                   message(from_addr="ceo@quarantine.e2e.example", message_id="<held@e2e>"))
    assert wait_for(lambda: len(postfix.queued("hold")) == before + 1)
    assert not delivered(sink, "<held@e2e>")


def test_upstream_down_gives_4xx_and_the_retried_batch_arrives_exactly_once(stack, zone):
    postfix, authfilter, sink = stack
    publish_domain(zone, "batch.e2e.example", spf=f"v=spf1 ip4:{CLIENT_IP} -all")
    batch = {f"<batch{i}@e2e>": signed(message(from_addr="alice@batch.e2e.example",
                                               message_id=f"<batch{i}@e2e>"),
                                       domain="batch.e2e.example") for i in range(5)}
    postfix.set_reinjection(False)
    try:
        for raw in batch.values():
            with client(stack) as c:
                # Postfix opens the filter session at the first RCPT, so the 451 comes there
                with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
                    c.sendmail("alice@batch.e2e.example", ["bob@dest.example"], raw)
            (code, text), = deferred.value.recipients.values()
            assert code == 451 and text.startswith(b"4.3.0")
    finally:
        postfix.set_reinjection(True)
    for raw in batch.values():                               # the clients retry
        with client(stack) as c:
            assert c.sendmail("alice@batch.e2e.example", ["bob@dest.example"], raw) == {}
    assert wait_for(lambda: all(delivered(sink, mid) for mid in batch))
    time.sleep(1.0)                                          # nothing late, nothing twice
    assert {mid: len(delivered(sink, mid)) for mid in batch} == {mid: 1 for mid in batch}


def test_sighup_reloads_the_config_without_a_restart(stack, zone):
    postfix, authfilter, sink = stack
    publish_domain(zone, "reload.e2e.example")
    zone.add("spoofer3.e2e.example", "TXT", f"v=spf1 ip4:{CLIENT_IP} -all")
    original = authfilter.config_file.read_text()
    pid = authfilter.process.pid

    def reload(text: str) -> None:
        before = authfilter.log_text().count("config reloaded")
        authfilter.config_file.write_text(text)
        os.kill(pid, signal.SIGHUP)
        assert wait_for(lambda: authfilter.log_text().count("config reloaded") >= before + 2)

    spoof = message(from_addr="ceo@reload.e2e.example", message_id="<reload@e2e>")
    reload(original + "dry_run = true\n")                 # appended to the [policy] table
    try:
        with client(stack) as c:
            assert c.sendmail("x@spoofer3.e2e.example", ["bob@dest.example"], spoof) == {}
        assert wait_for(lambda: delivered(sink, "<reload@e2e>"))
        assert "would_be=reject" in authfilter.log_text()
    finally:
        reload(original)
    with client(stack) as c:
        with pytest.raises(smtplib.SMTPDataError):
            c.sendmail("x@spoofer3.e2e.example", ["bob@dest.example"], spoof)
    assert authfilter.process.pid == pid and authfilter.process.poll() is None


def submit(stack, raw: bytes, mail_from: str) -> None:
    postfix = stack[0]
    with smtplib.SMTP("127.0.0.1", postfix.submission_port, timeout=30) as c:
        assert c.sendmail(mail_from, ["bob@dest.example"], raw) == {}


def test_submission_signs_only_domains_in_the_table_and_inbound_is_never_signed(stack, zone):
    """Postfix submission -> authfilter (role submission) -> reinjection: the signature
    verifies with our verifier and with dkimpy; other domains and inbound mail stay unsigned."""
    import asyncio

    import dkim

    from authfilter.checks.dkim import verify_dkim
    from authfilter.config import DkimConfig
    from authfilter.dns import Resolver
    from authfilter.message import Message

    postfix, authfilter, sink = stack
    zone.add("s1._domainkey.sign.e2e.example", "TXT", SIGNING_KEY.record)
    submit(stack, message(from_addr="user@sign.e2e.example", message_id="<sub1@e2e>"),
           "user@sign.e2e.example")
    submit(stack, message(from_addr="user@other.e2e.example", message_id="<sub2@e2e>"),
           "user@other.e2e.example")
    with client(stack) as c:                       # inbound, same From domain as the table
        c.sendmail("user@sign.e2e.example", ["bob@dest.example"],
                   message(from_addr="user@sign.e2e.example", message_id="<sub3@e2e>"))
    assert wait_for(lambda: all(delivered(sink, m) for m in ("<sub1@e2e>", "<sub2@e2e>", "<sub3@e2e>")))
    signed_copy = delivered(sink, "<sub1@e2e>")[0].content
    results = asyncio.run(verify_dkim(Message.parse(signed_copy), Resolver([zone.address]),
                                      DkimConfig()))
    assert [(r.result, r.domain, r.selector) for r in results] == [("pass", "sign.e2e.example", "s1")]
    record = SIGNING_KEY.record.encode()
    assert dkim.verify(signed_copy, dnsfunc=lambda name, timeout=5:
                       record if name == b"s1._domainkey.sign.e2e.example." else None)
    assert b"DKIM-Signature:" not in delivered(sink, "<sub2@e2e>")[0].content
    assert b"DKIM-Signature:" not in delivered(sink, "<sub3@e2e>")[0].content
