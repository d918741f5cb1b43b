"""DMARC failure reports (RFC 9991 / RFC 6591), the parts without a network: which reports a
verdict calls for (fo=), the report's MIME structure and fields, redaction, the rate limit and
what the observer queues from the SMTP path."""
from __future__ import annotations

import email
import email.policy

import pytest

from authfilter.config import from_dict
from authfilter.message import Message
from authfilter.policy import Action
from authfilter.reports.failure import (DKIM, DMARC, SPF, FailureCase, FailureReporter,
                                        RateLimiter, Redactor, delivery_result,
                                        dkim_failure_type, header_block, identity_alignment,
                                        report_kinds, report_message)
from authfilter.results import (ArcResult, DkimResult, DmarcResult, SessionFacts, SmtpReply, SpfResult,
                                Verdict)
from authfilter.observers import MessageEvent

FACTS = SessionFacts.create("203.0.113.5", helo="mx.sender.example", mail_from="alice@example.com",
                            recipients=["bob@receiver.example", "carol@receiver.example"])
HEADERS = Message.parse(
    b"Received: from mx.sender.example by mx.receiver.example for <bob@receiver.example>;"
    b" Mon, 4 May 2026 10:00:00 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; i=alice@example.com;\r\n"
    b" h=from; bh=abc=; b=def\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@receiver.example, \"carol smith\"@receiver.example\r\n"
    b"Subject: quarterly figures\r\n"
    b"Message-ID: <id.42@example.com>\r\n\r\nbody\r\n").headers


def verdict(*, fo=None, dkim=(), spf=("fail", "example.com"), adkim=None, aspf=None,
            result="fail", ruf="mailto:ruf@example.com", psd=None, from_domain="example.com",
            org_domain="example.com") -> Verdict:
    record = {"v": "DMARC1", "p": "reject"}
    for tag, value in (("fo", fo), ("adkim", adkim), ("aspf", aspf), ("ruf", ruf), ("psd", psd)):
        if value is not None:
            record[tag] = value
    return Verdict(
        spf=SpfResult(spf[0], "mailfrom", spf[1], sender=f"alice@{spf[1]}"),
        dkim=tuple(DkimResult(r, d, s, "rsa-sha256", identity=i, reason=why)
                   for d, s, r, i, why in dkim),
        arc=ArcResult("none"),
        dmarc=DmarcResult(result, from_domain, from_domain, org_domain, policy="reject",
                          disposition="reject", record=record))


BAD_SIG = ("example.com", "s1", "fail", "alice@example.com", "body hash mismatch (body changed)")


def case(v: Verdict, kinds=(DMARC,), headers=HEADERS) -> FailureCase:
    return FailureCase(FACTS, v, tuple(headers), kinds, 1_777_888_999.0, "reject")


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def build(v: Verdict, kind=DMARC, *, redactor=None, spf_records=(), max_bytes=16384,
          headers=HEADERS) -> bytes:
    return report_message(case(v, (kind,), headers), kind, sender="dmarc@receiver.example",
                          recipient="ruf@example.com", submitter="receiver.example",
                          authserv_id="mx.receiver.example", spf_records=spf_records,
                          redactor=redactor, max_bytes=max_bytes, now=1_777_889_000.0)


def feedback(data: bytes) -> dict[str, list[str]]:
    """The message/feedback-report fields, name -> values (in order)."""
    part = list(parse(data).iter_parts())[1]
    fields: dict[str, list[str]] = {}
    for name, value in part.get_payload()[0].items():
        fields.setdefault(name, []).append(" ".join(str(value).split()))
    return fields


# -- fo= ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fo,spf_result,dkim,expected", [
    (None, "fail", (), (DMARC,)),                          # fo=0 is the default
    ("0", "fail", (BAD_SIG,), (DMARC,)),
    ("1", "fail", (), (DMARC,)),
    ("d", "fail", (BAD_SIG,), (DKIM,)),
    ("d", "fail", (), ()),                                 # no signature failed
    ("s", "fail", (), (SPF,)),
    ("s", "softfail", (), (SPF,)),
    ("s", "none", (), ()),                                 # SPF did not fail
    ("1:d:s", "permerror", (BAD_SIG,), (DMARC, DKIM, SPF)),
    ("0:1", "fail", (), (DMARC,)),                         # invalid: the default fo=0
])
def test_fo_decides_which_reports(fo, spf_result, dkim, expected):
    assert report_kinds(verdict(fo=fo, spf=(spf_result, "example.com"), dkim=dkim)) == expected


@pytest.mark.parametrize("result", ["pass", "none", "temperror", "permerror"])
def test_only_dmarc_failures_are_reported(result):
    assert report_kinds(verdict(fo="1:d:s", result=result, dkim=(BAD_SIG,))) == ()


def test_identity_alignment_lists_aligned_identifiers_that_did_not_pass():
    """RFC 9991 s. 4: mechanisms that "failed to authenticate an aligned identity"."""
    assert identity_alignment(verdict(dkim=(BAD_SIG,))) == [DKIM, SPF]
    assert identity_alignment(verdict(spf=("fail", "bounce.example.com"))) == [SPF]   # relaxed
    assert identity_alignment(verdict(spf=("fail", "bounce.example.com"), aspf="s")) == []
    assert identity_alignment(verdict(spf=("fail", "other.example"),
                                      dkim=(("other.example", "s", "fail", None, None),))) == []
    assert identity_alignment(verdict(spf=("pass", "example.com"))) == []


@pytest.mark.parametrize("reason,word", [("body hash mismatch (body changed)", "bodyhash"),
                                         ("permerror: key revoked (empty p=) at s._domainkey.x",
                                          "revoked"),
                                         ("signature did not verify", "signature"), (None,
                                                                                    "signature")])
def test_dkim_auth_failure_types(reason, word):
    assert dkim_failure_type(DkimResult("fail", "example.com", "s1", "rsa-sha256",
                                        reason=reason)) == word


@pytest.mark.parametrize("kind,reply,expected", [
    ("reject", None, "reject"), ("quarantine", SmtpReply(250, "ok"), "spam"),
    ("accept", SmtpReply(250, "ok"), "delivered"), ("accept", SmtpReply(550, "no"), "other"),
    ("accept", None, "other")])
def test_delivery_result(kind, reply, expected):
    assert delivery_result(Action(kind, "why"), reply) == expected


# -- the report -----------------------------------------------------------------------------------
def test_dmarc_report_mime_structure_and_fields():
    data = build(verdict(dkim=(BAD_SIG,)), spf_records=["v=spf1 ip4:192.0.2.0/24 -all"])
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "feedback-report"
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain", "message/feedback-report", "text/rfc822-headers"]
    assert msg["Auto-Submitted"] == "auto-generated"
    assert "example.com" in msg["Subject"] and msg["Message-ID"].endswith("@receiver.example>")
    f = feedback(data)
    assert f["Feedback-Type"] == ["auth-failure"] and f["Version"] == ["1"]
    assert f["Auth-Failure"] == ["dmarc"] and f["User-Agent"][0].startswith("authfilter/")
    assert f["Identity-Alignment"] == ["dkim, spf"]
    assert f["Source-IP"] == ["203.0.113.5"] and f["Reported-Domain"] == ["example.com"]
    assert f["Original-Mail-From"] == ["<alice@example.com>"]
    assert f["Original-Rcpt-To"] == ["<bob@receiver.example>", "<carol@receiver.example>"]
    assert f["Delivery-Result"] == ["reject"]
    assert f["Arrival-Date"][0].endswith("GMT")
    assert f["DKIM-Domain"] == ["example.com"] and f["DKIM-Selector"] == ["s1"]
    assert f["DKIM-Identity"] == ["alice@example.com"]
    assert f["SPF-DNS"] == ["txt : example.com : v=spf1 ip4:192.0.2.0/24 -all"]
    results = f["Authentication-Results"][0]
    assert results.startswith("mx.receiver.example;") and "dmarc=fail" in results
    original = list(msg.iter_parts())[2].get_content()
    assert "Subject: quarterly figures" in original and "body" not in original


def test_fields_part_lines_are_folded_short_and_7bit():
    data = build(verdict(dkim=(BAD_SIG,)))
    part = data.split(b"Content-Type: message/feedback-report")[1].split(b"\r\n\r\n", 1)[1]
    block = part.split(b"\r\n--")[0]
    assert block.isascii()
    assert all(len(line) <= 78 for line in block.split(b"\r\n"))
    assert any(line.startswith(b" ") for line in block.split(b"\r\n"))    # folded somewhere


def test_spf_and_dkim_reports():
    dkim_report = feedback(build(verdict(fo="d", dkim=(BAD_SIG,)), DKIM))
    assert dkim_report["Auth-Failure"] == ["bodyhash"]
    assert dkim_report["Reported-Domain"] == ["example.com"]
    assert "Identity-Alignment" not in dkim_report and dkim_report["DKIM-Selector"] == ["s1"]
    spf_report = feedback(build(verdict(fo="s", spf=("fail", "bounce.example")), SPF,
                                spf_records=["v=spf1 -all"]))
    assert spf_report["Auth-Failure"] == ["spf"] and spf_report["Reported-Domain"] == ["bounce.example"]
    assert spf_report["SPF-DNS"] == ["txt : bounce.example : v=spf1 -all"]
    assert "DKIM-Domain" not in spf_report


def test_dmarc_report_without_aligned_identifiers_says_none():
    f = feedback(build(verdict(spf=("pass", "other.example"))))
    assert f["Identity-Alignment"] == ["none"]
    assert "DKIM-Domain" not in f and "SPF-DNS" not in f


# -- redaction ------------------------------------------------------------------------------------
def test_redaction_hides_local_parts_everywhere_but_message_ids():
    redactor = Redactor(b"k" * 32)
    data = build(verdict(dkim=(BAD_SIG,)), redactor=redactor)
    f = feedback(data)
    original = list(parse(data).iter_parts())[2].get_content()
    text = data.decode("ascii")
    for local in ("alice", "bob", "carol"):
        assert f"{local}@" not in text
    alice, bob = (redactor.token(x).decode() for x in (b"alice", b"bob"))
    assert f["Original-Mail-From"] == [f"<{alice}@example.com>"]
    assert f"<{bob}@receiver.example>" in f["Original-Rcpt-To"]
    assert f["DKIM-Identity"] == [f"{alice}@example.com"]
    assert f"smtp.mailfrom={alice}@example.com" in f["Authentication-Results"][0]
    assert f"From: Alice <{alice}@example.com>" in original
    assert f"for <{bob}@receiver.example>" in original
    assert f"i={alice}@example.com" in original
    quoted = redactor.token(b'"carol smith"').decode()
    assert f"{quoted}@receiver.example" in original
    assert "Message-ID: <id.42@example.com>" in original          # kept: the owner's handle
    assert "Local parts of addresses are redacted" in list(parse(data).iter_parts())[0].get_content()


def test_redaction_tokens_are_keyed_and_stable():
    a, b = Redactor(b"a" * 32), Redactor(b"b" * 32)
    assert a.token(b"alice") == a.token(b"alice") != a.token(b"bob")
    assert a.token(b"alice") != b.token(b"alice")
    assert a.text(b"SRS0=hh=tt=example.org=alice@fwd.example") == \
        a.token(b"SRS0=hh=tt=example.org=alice") + b"@fwd.example"
    assert a.text(b"envelope-from=alice@example.com;") == \
        b"envelope-from=" + a.token(b"alice") + b"@example.com;"


def test_without_redaction_addresses_are_kept():
    data = build(verdict(), redactor=None)
    assert feedback(data)["Original-Mail-From"] == ["<alice@example.com>"]
    assert "From: Alice <alice@example.com>" in list(parse(data).iter_parts())[2].get_content()


def test_header_block_is_cut_to_whole_fields():
    fields = [(b"Received", b" " + b"x" * 3000 + b"\r\n"), (b"From", b" a@example.com\r\n"),
              (b"Subject", b" hi\r\n")]
    assert header_block(fields, 1024, None) == b"From: a@example.com\r\nSubject: hi\r\n"
    assert header_block(fields, 10_000, None).count(b"\r\n") == 3


def test_8bit_header_block_goes_base64_with_its_bytes_intact():
    headers = Message.parse("From: José <jose@example.com>\r\nSubject: ¡hola!\r\n\r\n".encode()).headers
    data = build(verdict(), headers=headers)
    assert data.isascii()
    part = list(parse(data).iter_parts())[2]
    assert part["Content-Transfer-Encoding"] == "base64"
    assert "Subject: ¡hola!".encode() in part.get_payload(decode=True)


# -- the rate limit -------------------------------------------------------------------------------
def test_rate_limit_per_domain_over_a_sliding_hour():
    limiter = RateLimiter(2)
    assert [limiter.allow("a.example", t) for t in (0, 10, 20)] == [True, True, False]
    assert limiter.allow("b.example", 20)                 # per domain
    assert not limiter.allow("a.example", 3599)
    assert limiter.allow("a.example", 3600.5)            # the first one left the window
    assert not limiter.allow("a.example", 3601)


def test_rate_limit_state_is_bounded():
    limiter = RateLimiter(1, max_domains=2)
    assert limiter.allow("a.example", 0) and limiter.allow("b.example", 0)
    assert not limiter.allow("c.example", 10)             # full: refused, not grown
    assert limiter.allow("c.example", 4000)               # the old entries expired


# -- the observer in the SMTP path ------------------------------------------------------------------
def reporter(**reports) -> FailureReporter:
    return FailureReporter(from_dict({"general": {"authserv_id": "mx.receiver.example"},
                                      "reports": {"failure_enabled": True, **reports}}))


REJECT = Action("reject", "dmarc")


def test_off_by_default():
    off = FailureReporter(from_dict({}))
    off(MessageEvent(FACTS, verdict(), REJECT, None, 0.01, HEADERS))
    assert not off.enabled and off.queued == 0


@pytest.mark.parametrize("why,call", [
    ("no headers", lambda r: r(MessageEvent(FACTS, verdict(), REJECT, None, 0.0))),
    ("no verdict", lambda r: r(MessageEvent(FACTS, None, REJECT, None, 0.0, HEADERS))),
    ("pass", lambda r: r(MessageEvent(FACTS, verdict(result="pass"), REJECT, None, 0.0, HEADERS))),
    ("no ruf", lambda r: r(MessageEvent(FACTS, verdict(ruf=None), REJECT, None, 0.0, HEADERS))),
    ("psd=y", lambda r: r(MessageEvent(FACTS, verdict(psd="y"), REJECT, None, 0.0, HEADERS))),
    ("tempfail", lambda r: r(MessageEvent(FACTS, verdict(), Action("tempfail", "x"), None, 0.0,
                             HEADERS))),
    ("upstream 4xx", lambda r: r(MessageEvent(FACTS, verdict(), Action("accept", "x"), SmtpReply(451, "later"),
                                 0.0, HEADERS))),
    ("a report", lambda r: r(MessageEvent(FACTS, verdict(), REJECT, None, 0.0, Message.parse(
        b"Content-Type: multipart/report; report-type=feedback-report\r\n\r\n").headers))),
    ("fo=d, no failed signature", lambda r: r(MessageEvent(FACTS, verdict(fo="d"), REJECT, None, 0.0,
                                              HEADERS))),
])
def test_nothing_is_queued_when_no_report_is_due(why, call):
    r = reporter()
    call(r)
    assert r.queued == 0 and r.errors == 0, why


def test_an_accepted_dmarc_temperror_gets_no_failure_report_rfc7489_s6_6_2():
    """An aligned key lookup that failed is no DMARC failure: nothing is reported, whatever
    fo= asks for (RFC 7489 s. 6.6.2 only allows, "MAY", reports about temporary errors)."""
    key_failure = (("example.com", "s1", "temperror", "alice@example.com",
                    "key lookup s1._domainkey.example.com: SERVFAIL"),)
    r = reporter()
    r(MessageEvent(FACTS, verdict(result="temperror", fo="1:d:s", spf=("temperror", "example.com"),
                                  dkim=key_failure), Action("accept", "dmarc=temperror"),
                   SmtpReply(250, "ok"), 0.0, HEADERS))
    assert r.queued == 0 and r.errors == 0


def test_suppressed_domains_get_no_reports():
    r = reporter(suppress=[".example.com"])
    r(MessageEvent(FACTS, verdict(from_domain="sub.example.com"), REJECT, None, 0.0, HEADERS))
    assert r.queued == 0


def test_observer_queues_allowed_reports_and_counts_the_rest():
    now = [1000.0]
    r = reporter(failure_rate_limit=2)
    r.clock = lambda: now[0]
    for _ in range(2):         # 2 reports each (DMARC and SPF): the limit is reached at once
        r(MessageEvent(FACTS, verdict(fo="1:s"), REJECT, None, 0.0, HEADERS))
    assert (r.queued, r.rate_limited) == (2, 2)
    now[0] += 3601
    r(MessageEvent(FACTS, verdict(), REJECT, None, 0.0, HEADERS))
    assert (r.queued, r.rate_limited) == (3, 2)


def test_bad_input_never_raises_into_the_smtp_path():
    r = reporter()
    r(MessageEvent(FACTS, verdict(), REJECT, None, 0.0, [b"not a pair"]))
    assert r.errors == 1 and r.queued == 0


def test_config_keys_are_validated():
    from authfilter.config import ConfigError
    with pytest.raises(ConfigError) as bad:
        from_dict({"reports": {"failure_rate_limit": 0, "failure_max_bytes": "big"}})
    assert any(p.startswith("reports.failure_rate_limit:") for p in bad.value.problems)
    assert any(p.startswith("reports.failure_max_bytes:") for p in bad.value.problems)
