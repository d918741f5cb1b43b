"""Rows from verdicts (what one evaluation contributes to a report) and report destinations."""
from __future__ import annotations

import asyncio

import pytest

from authfilter.reports.destinations import authorized, is_suppressed, parse_uris
from authfilter.reports.recorder import is_dmarc_report
from authfilter.reports.rows import (TEMPERROR_COMMENT, EvaluationRow, parse_policy, policy_text,
                                     report_ip, row_from_verdict)
from authfilter.results import (ArcResult, DkimResult, DmarcResult, SessionFacts, SpfResult,
                                Verdict)

RECORD = {"v": "DMARC1", "p": "reject", "sp": "none", "rua": "mailto:d@example.com", "x": "y"}


def verdict(result="fail", *, dkim=(), spf=("fail", "mailfrom", "example.com"), policy="reject",
            disposition="reject", testing=False, from_domain="example.com",
            policy_domain="example.com", org_domain="example.com", record=RECORD,
            spf_aligned=False, dkim_aligned=False) -> Verdict:
    return Verdict(
        spf=SpfResult(spf[0], spf[1], spf[2]),
        dkim=tuple(DkimResult(r, d, s, "rsa-sha256") for d, s, r in dkim),
        arc=ArcResult("none"),
        dmarc=DmarcResult(result, from_domain, policy_domain, org_domain, policy=policy,
                          disposition=disposition, spf_aligned=spf_aligned,
                          dkim_aligned=dkim_aligned, testing=testing, record=record))


FACTS = SessionFacts.create("192.0.2.1", helo="mx.example.net", mail_from="a@Example.COM",
                            recipients=["u@receiver.example"])


def row(v: Verdict, disposition="reject", override=None, facts=FACTS, envelope_to=False):
    return row_from_verdict(facts, v, disposition, override, received=1000, discovery="treewalk",
                            with_envelope_to=envelope_to)


def test_a_failing_evaluation_becomes_one_row():
    r = row(verdict())
    assert isinstance(r, EvaluationRow)
    assert r._replace(policy="") == EvaluationRow(
        1000, "example.com", "example.com", "example.com", "example.com", "", "192.0.2.1",
        "example.com", "mfrom", "fail", "", 0, 0, "reject", "", "", "treewalk")
    assert parse_policy(r.policy) == {"p": "reject", "sp": "none", "rua": "mailto:d@example.com"}


@pytest.mark.parametrize("result", ["none", "temperror", "permerror"])
def test_no_policy_no_row(result):
    assert row(verdict(result, policy_domain=None, record=None)) is None


def test_a_temperror_with_a_policy_is_a_row_of_the_underlying_temperror_results_rfc9990():
    """RFC 9990 auth_results holds "DKIM and SPF results, uninterpreted with respect to DMARC"
    (its schema): a DMARC temperror for a domain with a record (an aligned key lookup failed,
    the policy asked for less than reject, so the message was accepted) is a row with those
    temperror results and no aligned pass; that the policy was not applied is an ``other``
    reason (RFC 9989 s. 5.3.6), the same for every such row so that they group."""
    v = verdict("temperror", policy="quarantine", disposition="none",
                spf=("temperror", "mailfrom", "example.com"),
                dkim=[("example.com", "s1", "temperror"), ("esp.example", "e", "pass")])
    r = row(v, "none")
    assert (r.spf_result, r.dkim_aligned, r.spf_aligned, r.disposition) == ("temperror", 0, 0, "none")
    assert r.dkim.split("\n") == ["esp.example\te\tpass", "example.com\ts1\ttemperror"]
    assert r.reasons == f"other\t{TEMPERROR_COMMENT}"
    assert row(verdict("temperror", policy="none", disposition="none"), "none").reasons == ""
    assert row(v, "none", "local_policy: dry run").reasons == "local_policy\tdry run"


@pytest.mark.parametrize("ip,shown", [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8::1", "2001:0db8:0000:0000:0000:0000:0000:0001"),   # the schema's IPv6 pattern
    ("::ffff:192.0.2.7", "192.0.2.7"),
])
def test_source_ip_as_the_schema_accepts_it(ip, shown):
    import ipaddress
    assert report_ip(ipaddress.ip_address(ip)) == shown


def test_dkim_signatures_in_rfc_9990_order_and_capped():
    v = verdict(dkim=[("other.example", "z", "fail"), ("other.example", "a", "pass"),
                      ("mail.example.com", "m", "pass"), ("example.com", "s", "pass"),
                      (None, None, "permerror")])
    assert row(v).dkim.split("\n") == ["example.com\ts\tpass", "mail.example.com\tm\tpass",
                                       "other.example\ta\tpass", "other.example\tz\tfail"]
    many = verdict(dkim=[(f"d{i}.example", "s", "fail") for i in range(150)])
    assert len(row(many).dkim.split("\n")) == 100


def test_override_reasons():
    # the applied disposition is the policy's: no reason
    assert row(verdict(), "reject").reasons == ""
    # local policy softened it; the caller's RFC 9990 word, with a comment
    assert row(verdict(), "none", "trusted_forwarder: ARC by fwd.example").reasons == \
        "trusted_forwarder\tARC by fwd.example"
    # free text -> other, cleaned of separators
    assert row(verdict(), "quarantine", "ops\tdecision\nx").reasons == "other\tops decision x"
    # t=y and no reason given -> policy_test_mode; otherwise local_policy
    assert row(verdict(testing=True, disposition="quarantine"), "quarantine").reasons == \
        "policy_test_mode\t"
    assert row(verdict(), "none").reasons == "local_policy\t"
    # a passing message that was rejected anyway needs a reason too
    assert row(verdict("pass", spf_aligned=True), "reject").reasons == "local_policy\t"


def test_envelope_to_only_when_configured_and_unambiguous():
    assert row(verdict()).envelope_to == ""
    assert row(verdict(), envelope_to=True).envelope_to == "receiver.example"
    two = SessionFacts.create("192.0.2.1", mail_from="", recipients=["a@x.example", "b@y.example"])
    r = row(verdict(), facts=two, envelope_to=True)
    assert r.envelope_to == "" and r.envelope_from == ""


def test_policy_text_keeps_report_tags_and_separators_out():
    assert policy_text({"p": "none", "rua": "mailto:a@b;c", "v": "DMARC1"}) == "p=none;rua=mailto:a@b,c"
    assert policy_text(None) == ""


# -- destinations ------------------------------------------------------------------------------
def test_rua_uris_with_size_limits_and_problems():
    uris, problems = parse_uris("mailto:a@example.com!10m, mailto:b%40x@example.net ,"
                                "https://r.example/x,mailto:nobody,mailto:c@example.org!big")
    assert [(u.address, u.max_bytes) for u in uris] == [("a@example.com", 10 << 20),
                                                        ("b@x@example.net", None)]
    assert len(problems) == 3
    assert uris[0].fits(10 << 20) and not uris[0].fits((10 << 20) + 1)


def test_suppression_by_domain_and_address():
    entries = ["example.org", "ops@example.net"]
    assert is_suppressed(entries, domain="mail.example.org")
    assert is_suppressed(entries, address="x@sub.example.org")
    assert is_suppressed(entries, address="OPS@example.net")
    assert not is_suppressed(entries, address="other@example.net")
    assert not is_suppressed(entries, domain="example.com")


def test_external_destinations_per_rfc_9990_section_4(zone, resolver):
    zone.add("example.com._report._dmarc.ok.example", "TXT", "v=DMARC1")
    zone.add("example.com._report._dmarc.override.example", "TXT",
             "v=DMARC1; rua=mailto:new@override.example")
    zone.add("example.com._report._dmarc.elsewhere.example", "TXT",
             "v=DMARC1; rua=mailto:x@attacker.example")
    zone.add("example.com._report._dmarc.notdmarc.example", "TXT", "p=none; v=DMARC1")
    zone.misbehave("example.com._report._dmarc.down.example", "servfail")
    uris, _ = parse_uris("mailto:a@example.com,mailto:b@reports.example.com,mailto:c@ok.example,"
                         "mailto:d@override.example,mailto:e@elsewhere.example,"
                         "mailto:f@notdmarc.example,mailto:g@missing.example,mailto:h@down.example")
    found = asyncio.run(authorized(uris, "example.com", "example.com", resolver))
    assert [u.address for u in found.uris] == ["a@example.com", "b@reports.example.com",
                                               "c@ok.example", "new@override.example"]
    assert found.retry is True
    assert len(found.skipped) == 4
    # internal destinations need no DNS at all
    asked = {name for name, _ in zone.queries}
    assert not any(n.endswith("._report._dmarc.example.com") for n in asked)


def test_reports_are_recognised():
    assert is_dmarc_report([(b"Subject", b" Report Domain: example.com\r\n Submitter: x.example"
                                         b" Report-ID: <1>\r\n")])
    assert is_dmarc_report([(b"Content-Type", b" multipart/report;\r\n "
                                              b"report-type=feedback-report\r\n")])
    assert not is_dmarc_report([(b"Subject", b" Report on the domain\r\n")])
