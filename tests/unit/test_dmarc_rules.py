"""DMARC evaluation rules where the RFCs decide between ``fail`` and ``temperror``, and RFC 9091's
``np`` in RFC 7489 mode.  DNS from a StaticResolver (no sockets)."""
from __future__ import annotations

import asyncio

import pytest

from authfilter.checks.dmarc import discover_policy, evaluate_dmarc
from authfilter.dns import StaticResolver
from authfilter.message import Message
from authfilter.results import DkimResult, SpfResult

MODES = ("rfc9989", "rfc7489")
KEY_FAILURE = "key lookup s1._domainkey.example.com: SERVFAIL"


def spf(result: str, domain: str, identity: str = "mailfrom") -> SpfResult:
    return SpfResult(result, identity, domain,
                     reason="DNS timeout" if result == "temperror" else None)


def dkim(domain: str, result: str = "pass") -> DkimResult:
    return DkimResult(result, domain, "s1", "rsa-sha256",
                      reason=KEY_FAILURE if result == "temperror" else None)


def evaluate(records: dict, *, author: str = "user@example.com",
             spf_result: SpfResult | None = None, sigs=(), mode: str = "rfc9989"):
    resolver = StaticResolver(records)
    message = Message.parse(f"From: {author}\r\nSubject: t\r\n\r\nbody\r\n".encode())

    async def run():
        discovery = await discover_policy(message, resolver, mode=mode)
        return await evaluate_dmarc(discovery, spf_result or SpfResult("none", "mailfrom", None),
                                    list(sigs), resolver, sample=lambda: 0.0)
    return asyncio.run(run()), resolver


REJECT = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject"]}


# -- temperror (RFC 7489 s. 6.6.2; RFC 9989 s. 5.3.6) --------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_aligned_dkim_temperror_without_aligned_pass_is_temperror_rfc7489_s6_6_2(mode):
    """RFC 7489 s. 6.6.2: "If neither passes and one or both of them fail due to a temporary
    error, the Receiver ... cannot apply the advertised DMARC policy"; RFC 9989 s. 5.3.6 keeps
    it.  The result is temperror with the policy the record asks for, and the reason."""
    r, _ = evaluate(REJECT, spf_result=spf("pass", "esp.example"),
                    sigs=[dkim("esp.example"), dkim("example.com", "temperror")], mode=mode)
    assert (r.result, r.policy, r.disposition, r.policy_domain) == \
        ("temperror", "reject", "none", "example.com")
    assert r.reason == f"no aligned pass, and the aligned DKIM d=example.com s=s1 could not be " \
                       f"checked: {KEY_FAILURE}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("identity, domain", [("mailfrom", "bounce.example.com"),
                                              ("helo", "mx1.example.com")])   # null sender
def test_aligned_spf_temperror_is_temperror_rfc9989_s5_3_6(mode, identity, domain):
    """RFC 9989 s. 5.3.6: "If one or more DNS queries required to perform DMARC validation on
    the message do not complete due to temporary ... DNS errors, the message cannot be
    considered to pass or fail"; relaxed alignment, and the HELO identity of the null sender
    (RFC 7208 s. 2.4)."""
    r, _ = evaluate(REJECT, spf_result=spf("temperror", domain, identity), mode=mode)
    assert r.result == "temperror" and f"SPF {identity} {domain} could not be checked" in r.reason


@pytest.mark.parametrize("mode", MODES)
def test_an_unaligned_temperror_leaves_fail_rfc7489_s6_6_2(mode):
    """Only an identifier that would be aligned matters: an unaligned one could not have given
    a DMARC pass, so its temperror leaves the result fail."""
    r, _ = evaluate(REJECT, spf_result=spf("temperror", "other.example"),
                    sigs=[dkim("other.example", "temperror")], mode=mode)
    assert (r.result, r.disposition) == ("fail", "reject")
    strict = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject; adkim=s; aspf=s"]}
    r, _ = evaluate(strict, spf_result=spf("temperror", "bounce.example.com"),
                    sigs=[dkim("mail.example.com", "temperror")], mode=mode)
    assert r.result == "fail"                       # strict alignment: exact match only


def test_an_aligned_pass_wins_and_costs_no_walk_for_the_temperror_rfc9989_s4_10_2():
    """A pass needs nothing else: no Tree Walk (RFC 9989 s. 4.10.2) is made for a temperror
    identifier when an identifier passed in alignment."""
    r, resolver = evaluate(REJECT, sigs=[dkim("example.com"),
                                         dkim("mail.example.com", "temperror")])
    assert r.result == "pass"
    assert resolver.peek("_dmarc.mail.example.com", "TXT") is None
    r, resolver = evaluate(REJECT, sigs=[dkim("mail.example.com", "temperror")])
    assert r.result == "temperror"                  # relaxed: needs, and makes, the walk
    assert resolver.peek("_dmarc.mail.example.com", "TXT") is not None


def test_temperror_when_the_alignment_of_a_temperror_identifier_is_unknown_rfc9989_s5_3_6():
    records = {**REJECT, ("_dmarc.mail.example.com", "TXT"): "servfail"}
    r, _ = evaluate(records, sigs=[dkim("mail.example.com", "temperror")])
    assert r.result == "temperror" and "whether it aligns is unknown" in r.reason


def test_temperror_with_t_y_is_still_temperror_and_says_testing_rfc9989_s4_7():
    records = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject; t=y"]}
    r, _ = evaluate(records, sigs=[dkim("example.com", "temperror")])
    assert (r.result, r.policy, r.testing) == ("temperror", "reject", True)


# -- np in RFC 7489 mode (RFC 9091) -------------------------------------------------------------
LAYERED = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=none; sp=quarantine; np=reject"],
           ("exists.example.com", "MX"): [(10, "mx.example.com")],
           ("txtonly.example.com", "TXT"): ["v=spf1 -all"]}


@pytest.mark.parametrize("author, policy", [("user@example.com", "none"),
                                            ("user@exists.example.com", "quarantine"),
                                            ("user@ghost.example.com", "reject"),
                                            ("user@txtonly.example.com", "reject")])
def test_rfc7489_mode_applies_np_to_non_existent_subdomains_rfc9091_s2_7(author, policy):
    """RFC 9091 s. 3.2 added np to RFC 7489; s. 2.7: "a non-existent domain is a domain for
    which there is an NXDOMAIN or NODATA response for A, AAAA, and MX records", so a name with
    only a TXT record is non-existent in RFC 7489 mode."""
    r, _ = evaluate(LAYERED, author=author, mode="rfc7489")
    assert (r.result, r.policy, r.disposition) == ("fail", policy, policy)


def test_rfc9989_mode_takes_existence_from_nxdomain_rfc9989_s3_2_13():
    """RFC 9989 s. 3.2.13 (RFC 8020): only NXDOMAIN means non-existent, so the TXT-only name
    exists there; the same record, the other mode's definition."""
    r, _ = evaluate(LAYERED, author="user@txtonly.example.com")
    assert r.policy == "quarantine"
    assert evaluate(LAYERED, author="user@ghost.example.com")[0].policy == "reject"


def test_rfc7489_mode_existence_is_looked_up_only_when_np_matters_rfc9091_s3_2():
    records = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject; np=reject"]}
    r, resolver = evaluate(records, author="user@ghost.example.com", mode="rfc7489")
    assert r.policy == "reject" and resolver.peek("ghost.example.com", "MX") is None
    r, resolver = evaluate(LAYERED, author="user@ghost.example.com", mode="rfc7489")
    assert all(resolver.peek("ghost.example.com", t) is not None for t in ("A", "AAAA", "MX"))


def test_rfc7489_mode_existence_failure_is_temperror_rfc9091_s2_7():
    """An answer proves existence even when another of the three lookups fails; without one,
    a failure leaves existence unknown: temperror."""
    records = {**LAYERED, ("ghost.example.com", "AAAA"): "servfail"}
    r, _ = evaluate(records, author="user@ghost.example.com", mode="rfc7489")
    assert r.result == "temperror" and "exists" in r.reason
    records = {**LAYERED, ("exists.example.com", "AAAA"): "servfail"}
    assert evaluate(records, author="user@exists.example.com", mode="rfc7489")[0].policy == \
        "quarantine"
