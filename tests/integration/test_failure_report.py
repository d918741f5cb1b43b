"""DMARC failure reports end to end: real verdicts from the engine against the loopback DNS
server, the reporter's background sender, and a real SMTP server on loopback (STARTTLS + AUTH)
that keeps what it receives.  External destinations are authorized through the loopback DNS."""
from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import time

import pytest

from authfilter.observers import MessageEvent
from authfilter.reports.hooks import observers_from_config
from authfilter.config import from_dict
from authfilter.dns import Resolver
from authfilter.engine import Engine
from authfilter.message import Message
from authfilter.policy import Action
from authfilter.reports.failure import FailureReporter
from authfilter.reports.recorder import Recorder
from authfilter.results import SessionFacts
from tests.integration.test_proxy import send
from tests.integration.test_report_fixtures import (  # noqa: F401  (fixtures)
    PASSWORD, USER, dkim_key, message, smtp_sink)
from tests.mailtools import message as proxy_message
from tests.mailtools import publish_domain

SPF = "v=spf1 ip4:192.0.2.0/24 -all"
REJECT = Action("reject", "dmarc")


def publish(zone, *, fo="1", ruf="mailto:ruf@example.com") -> None:
    zone.add("_dmarc.example.com", "TXT", f"v=DMARC1; p=reject; fo={fo}; ruf={ruf}")
    zone.add("example.com", "TXT", SPF)
    zone.add("s1._domainkey.example.com", "TXT",
             f"v=DKIM1; k=rsa; p={dkim_key('example.com')[1]}")


def reports_config(tmp_path, sink, **failure):
    (tmp_path / "relay.pw").write_text(PASSWORD + "\n")
    return from_dict({
        "general": {"authserv_id": "mx.receiver.example"},
        "reports": {"submitter": "receiver.example", "from_address": "dmarc@receiver.example",
                    "relay_port": sink.port, "relay_starttls": "required",
                    "relay_ca_file": sink.ca_file, "relay_user": USER,
                    "relay_password_file": str(tmp_path / "relay.pw"),
                    "failure_enabled": True, **failure}})


def spoofed(*, signed: bool = False) -> bytes:
    raw = message("example.com", sign=[("example.com", "s1")] if signed else [],
                  subject="quarterly figures")
    return raw.replace(b"Body text.", b"Body text, changed.") if signed else raw


FACTS = SessionFacts.create("203.0.113.5", helo="mx.sender.example", mail_from="x@example.com",
                            recipients=["user@receiver.example"])


def run_reporter(zone, config, messages, *, settle=None, **options) -> FailureReporter:
    """Evaluate each raw message with the engine, feed the verdict to a started reporter as the
    proxy would, then close it (which sends what is queued)."""

    async def main() -> FailureReporter:
        resolver = Resolver([zone.address], timeout=0.5, lifetime=1.0)
        engine = Engine(config, resolver)
        reporter = FailureReporter(config, resolver=resolver, **options)
        await reporter.start()
        for raw in messages:
            verdict = await engine.evaluate(FACTS, raw)
            assert verdict.dmarc.result == "fail", verdict.dmarc
            reporter(MessageEvent(FACTS, verdict, REJECT, None, 0.01, Message.parse(raw).headers))
        if settle is not None:
            await settle(reporter)
        await reporter.close()
        return reporter

    return asyncio.run(main())


def received(sink) -> list[tuple[str, email.message.EmailMessage, bool]]:
    return [(rcpts[0], email.message_from_bytes(content, policy=email.policy.default), tls)
            for _, rcpts, content, tls, _ in sink.handler.messages]


def feedback(msg) -> dict[str, list[str]]:
    part = list(msg.iter_parts())[1]
    out: dict[str, list[str]] = {}
    for name, value in part.get_payload()[0].items():
        out.setdefault(name, []).append(" ".join(str(value).split()))
    return out


def test_reports_go_to_every_authorized_ruf_address_redacted(zone, smtp_sink, tmp_path):
    publish(zone, ruf="mailto:ruf@example.com,mailto:forensic@collector.example,"
                      "mailto:nobody@unauthorized.example")
    zone.add("example.com._report._dmarc.collector.example", "TXT", "v=DMARC1")
    reporter = run_reporter(zone, reports_config(tmp_path, smtp_sink), [spoofed()])
    got = received(smtp_sink)
    assert sorted(r for r, *_ in got) == ["forensic@collector.example", "ruf@example.com"]
    assert (reporter.queued, reporter.sent, reporter.dropped) == (1, 2, 0)
    assert smtp_sink.logins == [USER]                          # one relay connection, AUTH
    for rcpt, msg, tls in got:
        assert tls                                             # after STARTTLS
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "feedback-report"
        assert [p.get_content_type() for p in msg.iter_parts()] == [
            "text/plain", "message/feedback-report", "text/rfc822-headers"]
        f = feedback(msg)
        assert f["Auth-Failure"] == ["dmarc"] and f["Feedback-Type"] == ["auth-failure"]
        assert f["Identity-Alignment"] == ["spf"]              # aligned MAIL FROM, SPF fail
        assert f["SPF-DNS"] == [f"txt : example.com : {SPF}"]  # fetched through the resolver
        assert f["Source-IP"] == ["203.0.113.5"] and f["Reported-Domain"] == ["example.com"]
        assert f["Delivery-Result"] == ["reject"]
        assert "dmarc=fail" in f["Authentication-Results"][0]
        assert f["Original-Mail-From"][0].startswith("<redacted.")
        assert f["Original-Rcpt-To"][0].startswith("<redacted.")
        original = list(msg.iter_parts())[2].get_content()
        assert "Subject: quarterly figures" in original
        assert "someone@" not in original and "user@" not in original
        assert "From: Someone <redacted." in original and "Body text" not in original


def test_fo_asks_for_dmarc_dkim_and_spf_reports(zone, smtp_sink, tmp_path):
    publish(zone, fo="1:d:s")
    run_reporter(zone, reports_config(tmp_path, smtp_sink, failure_redact=False),
                 [spoofed(signed=True)])
    kinds = {feedback(msg)["Auth-Failure"][0]: feedback(msg) for _, msg, *_ in received(smtp_sink)}
    assert sorted(kinds) == ["bodyhash", "dmarc", "spf"]
    assert kinds["dmarc"]["Identity-Alignment"] == ["dkim, spf"]
    assert kinds["dmarc"]["DKIM-Domain"] == ["example.com"]
    assert kinds["bodyhash"]["DKIM-Selector"] == ["s1"]
    assert kinds["bodyhash"]["DKIM-Identity"] == ["@example.com"]        # no i=: "@" d=
    assert kinds["spf"]["Original-Mail-From"] == ["<x@example.com>"]     # not redacted


def test_reports_are_rate_limited_per_domain(zone, smtp_sink, tmp_path):
    publish(zone)
    reporter = run_reporter(zone, reports_config(tmp_path, smtp_sink, failure_rate_limit=2),
                            [spoofed(), spoofed(), spoofed()])
    assert len(smtp_sink.handler.messages) == 2
    assert (reporter.queued, reporter.rate_limited) == (2, 1)


def test_a_relay_that_keeps_deferring_gets_two_retries_then_the_report_is_dropped(zone, smtp_sink, tmp_path):
    publish(zone)
    smtp_sink.handler.reject["ruf@example.com"] = "451 4.3.0 try again later"

    async def until_given_up(reporter):
        deadline = time.monotonic() + 5
        while reporter.dropped == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    started = time.monotonic()
    reporter = run_reporter(zone, reports_config(tmp_path, smtp_sink), [spoofed()],
                            settle=until_given_up, retry_delays=(0.2, 0.3))
    assert (reporter.sent, reporter.dropped) == (0, 1)
    assert time.monotonic() - started >= 0.5                 # both pauses were waited out
    assert smtp_sink.handler.messages == []


def test_serve_adds_the_reporter_only_when_enabled(tmp_path, smtp_sink):
    off = observers_from_config(from_dict({}))
    assert [type(o) for o in off] == [Recorder]
    on = observers_from_config(reports_config(tmp_path, smtp_sink))
    assert [type(o) for o in on] == [Recorder, FailureReporter]


def test_the_proxy_hands_the_header_fields_to_the_reporter(zone, smtp_sink, start_proxy,
                                                           tmp_path):
    """Real SMTP through the proxy: the spoofed message is refused, and the report carries the
    header block that message_flow passed as ``headers=``."""
    publish_domain(zone, "example.org", dmarc="v=DMARC1; p=reject; ruf=mailto:ruf@example.org")
    zone.add("spammer.test", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    proxy = start_proxy()
    failure = reports_config(tmp_path, smtp_sink)
    failure.general.authserv_id = proxy.config.general.authserv_id
    reporter = FailureReporter(failure, resolver=proxy.server.resolver)
    proxy.call(reporter.start)
    proxy.server.observers.append(reporter)
    with pytest.raises(smtplib.SMTPDataError):
        send(proxy, proxy_message(from_addr="ceo@example.org", subject="wire the money"),
             mail_from="x@spammer.test")
    proxy.call(reporter.close)
    assert proxy.observed[-1][2].kind == "reject"         # observers without headers= too
    [(rcpt, msg, _)] = received(smtp_sink)
    assert rcpt == "ruf@example.org"
    f = feedback(msg)
    assert f["Identity-Alignment"] == ["none"] and f["Delivery-Result"] == ["reject"]
    assert f["Source-IP"] == ["127.0.0.1"]
    original = list(msg.iter_parts())[2].get_content()
    assert "Subject: wire the money" in original and "From: redacted." in original
