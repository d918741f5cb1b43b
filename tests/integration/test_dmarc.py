"""DMARC end to end through the loopback DNS server (RFC 9989; RFC 7489 compatibility mode)."""
import asyncio
import time

import pytest

from authfilter.dns import Resolver

from authfilter.checks.dmarc import discover_policy, evaluate_dmarc
from authfilter.message import Message
from authfilter.results import DkimResult, SpfResult

NO_SPF = SpfResult("none", "mailfrom", None)


def spf_pass(domain, identity="mailfrom"):
    return SpfResult("pass", identity, domain)


def dkim(domain, result="pass"):
    return DkimResult(result, domain, "s1", "rsa-sha256")


def message(*from_values: str) -> Message:
    head = "".join(f"From: {v}\r\n" for v in from_values)
    return Message.parse(f"{head}To: rcpt@example.org\r\nSubject: test\r\n\r\nbody\r\n".encode())


def check(resolver, from_value="user@example.com", spf=NO_SPF, sigs=(), *, mode="rfc9989",
          sample=lambda: 0.5, deadline=None, msg=None):
    async def run():
        discovery = await discover_policy(msg or message(from_value), resolver, mode=mode,
                                          deadline=deadline)
        return await evaluate_dmarc(discovery, spf, list(sigs), resolver, deadline=deadline,
                                    sample=sample)
    return asyncio.run(run())


def dmarc_queries(zone):
    return [name for name, rdtype in zone.queries if rdtype == "TXT"]


# -- result words -------------------------------------------------------------------------------
def test_pass_by_aligned_dkim(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, sigs=[dkim("example.com")])
    assert (r.result, r.dkim_aligned, r.spf_aligned) == ("pass", True, False)
    assert (r.policy, r.disposition, r.policy_domain, r.from_domain) == \
        ("reject", "none", "example.com", "example.com")
    assert r.record["p"] == "reject"


def test_pass_by_aligned_spf(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, spf=spf_pass("example.com"))
    assert (r.result, r.spf_aligned) == ("pass", True)


def test_fail_applies_policy(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine")
    r = check(resolver, spf=spf_pass("evil.example"), sigs=[dkim("evil.example")])
    assert (r.result, r.policy, r.disposition, r.testing) == ("fail", "quarantine", "quarantine", False)
    assert "no aligned identifier" in r.reason


def test_none_without_any_record(zone, resolver):
    r = check(resolver, "user@mail.example.com", sigs=[dkim("mail.example.com")])
    assert (r.result, r.disposition, r.policy_domain) == ("none", "none", None)
    assert dmarc_queries(zone) == ["_dmarc.mail.example.com", "_dmarc.example.com", "_dmarc.com"]


def test_only_pass_results_count(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, spf=SpfResult("softfail", "mailfrom", "example.com"),
              sigs=[dkim("example.com", "policy"), dkim("example.com", "fail")])
    assert r.result == "fail" and r.reason == "no SPF or DKIM pass"
    # an aligned temperror is no pass either, but it makes the result temperror (issue 12)
    r = check(resolver, spf=SpfResult("softfail", "mailfrom", "example.com"),
              sigs=[dkim("example.com", "policy"), dkim("example.com", "fail"),
                    dkim("example.com", "temperror")])
    assert r.result == "temperror"


# -- DNS failures are temperror, never a fallback --------------------------------------------------
@pytest.mark.parametrize("how", ["timeout", "servfail"])
def test_dns_failure_at_author_domain_does_not_fall_back(zone, resolver, how):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none")
    zone.misbehave("_dmarc.sub.example.com", how)
    r = check(resolver, "user@sub.example.com", sigs=[dkim("example.com")],
              deadline=time.monotonic() + 0.3)
    assert r.result == "temperror" and r.policy_domain is None
    assert "_dmarc.sub.example.com" in r.reason
    assert "_dmarc.example.com" not in dmarc_queries(zone)


def test_dns_failure_higher_up_the_walk_is_temperror(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    zone.misbehave("_dmarc.mail.example.com", "servfail")
    assert check(resolver, "user@a.mail.example.com").result == "temperror"


def test_failure_finding_org_domain_matters_only_for_relaxed_alignment(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    zone.misbehave("_dmarc.com", "servfail")
    assert check(resolver, sigs=[dkim("example.com")]).result == "pass"          # exact match
    assert check(resolver, sigs=[dkim("evil.example")]).result == "fail"          # cannot align
    # needs the org domain: whatever _dmarc.com says, bounce.example.com and example.com
    # share it, so a failing TLD lookup (taken as no record) cannot change the answer
    assert check(resolver, spf=spf_pass("bounce.example.com")).result == "pass"
    zone.misbehave("_dmarc.example.com", "servfail")                              # below the TLD
    r = check(Resolver([zone.address], timeout=0.5, lifetime=1.0), spf=spf_pass("bounce.example.com"))
    assert r.result == "temperror" and "_dmarc.example.com" in r.reason


def test_deadline_already_passed_is_temperror(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    assert check(resolver, deadline=time.monotonic() - 1).result == "temperror"
    assert zone.queries == []


# -- records -----------------------------------------------------------------------------------------
def test_multiple_records_at_one_name_are_discarded(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none")
    r = check(resolver)
    assert r.result == "none" and "2 DMARC records" in r.reason


def test_multiple_records_at_author_domain_walk_on_to_org_domain(zone, resolver):
    zone.add("_dmarc.sub.example.com", "TXT", "v=DMARC1; p=none")
    zone.add("_dmarc.sub.example.com", "TXT", "v=DMARC1; p=none; sp=none")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none; sp=reject")
    zone.add("sub.example.com", "A", "192.0.2.1")
    r = check(resolver, "user@sub.example.com")
    assert (r.result, r.policy_domain, r.policy) == ("fail", "example.com", "reject")


def test_non_dmarc_txt_records_are_ignored(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "p=reject; v=DMARC1")          # v= not first
    zone.add("_dmarc.example.com", "TXT", "v=spf1 -all")
    assert check(resolver).result == "none"


def test_record_split_into_several_strings_is_joined(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", ["v=DMARC1; ", "p=reject"])
    assert check(resolver).policy == "reject"


def test_invalid_p_without_rua_is_permerror(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=block")
    r = check(resolver, sigs=[dkim("example.com")])
    assert r.result == "permerror" and "p=block" in r.reason and r.record["p"] == "block"


def test_invalid_p_with_rua_acts_as_none(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=block; rua=mailto:d@example.com")
    r = check(resolver)
    assert (r.result, r.policy, r.disposition) == ("fail", "none", "none")


# -- p / sp / np ----------------------------------------------------------------------------------
@pytest.fixture
def layered(zone):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none; sp=quarantine; np=reject")
    zone.add("exists.example.com", "MX", "10 mx.example.com")
    return zone


def test_p_for_the_policy_domain_itself(layered, resolver):
    r = check(resolver, "user@example.com")
    assert (r.policy, r.policy_domain) == ("none", "example.com")


def test_sp_for_an_existing_subdomain(layered, resolver):
    r = check(resolver, "user@exists.example.com")
    assert (r.result, r.policy, r.disposition, r.policy_domain, r.org_domain) == \
        ("fail", "quarantine", "quarantine", "example.com", "example.com")


def test_np_for_a_non_existent_subdomain(layered, resolver):
    r = check(resolver, "user@ghost.example.com")
    assert (r.policy, r.disposition) == ("reject", "reject")
    assert ("ghost.example.com", "CNAME") in layered.queries


def test_existing_dmarc_name_proves_existence_without_a_lookup(layered, resolver):
    layered.add("_dmarc.deep.example.com", "TXT", "not a dmarc record")
    assert check(resolver, "user@deep.example.com").policy == "quarantine"
    assert not [q for q in layered.queries if q[1] != "TXT"]


def test_existence_is_not_looked_up_when_np_changes_nothing(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    assert check(resolver, "user@ghost.example.com").policy == "reject"
    assert not [q for q in zone.queries if q[1] != "TXT"]


def test_np_defaults_to_sp(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; sp=none")
    assert check(resolver, "user@ghost.example.com").policy == "none"


def test_existence_lookup_failure_is_temperror(layered, resolver):
    layered.misbehave("ghost.example.com", "servfail")
    r = check(resolver, "user@ghost.example.com")
    assert r.result == "temperror" and "exists" in r.reason


def test_records_between_author_and_org_domain_are_not_policies(zone, resolver):
    # RFC 9989 Appendix B.4.2: the policy domain is the organizational domain
    zone.add("_dmarc.mail.example.com", "TXT", "v=DMARC1; p=reject; sp=reject")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none; sp=quarantine")
    zone.add("a.mail.example.com", "A", "192.0.2.1")
    r = check(resolver, "user@a.mail.example.com")
    assert (r.policy_domain, r.org_domain, r.policy) == ("example.com", "example.com", "quarantine")


# -- Public Suffix Domains and psd= ------------------------------------------------------------------
def test_psd_record_applies_when_the_org_domain_has_none(zone, resolver):
    zone.add("_dmarc.bank.example", "TXT", "v=DMARC1; p=quarantine; sp=reject; psd=y")
    zone.add("giant.bank.example", "A", "192.0.2.1")
    r = check(resolver, "user@giant.bank.example")
    assert (r.result, r.policy_domain, r.org_domain, r.policy) == \
        ("fail", "bank.example", "giant.bank.example", "reject")


def test_psd_example_from_rfc9989_appendix_b43(zone, resolver):
    zone.add("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject; psd=y")
    zone.add("_dmarc.giant.bank.example", "TXT", "v=DMARC1; p=quarantine")
    spf = spf_pass("mail.giant.bank.example")
    r = check(resolver, "user@giant.bank.example", spf=spf, sigs=[dkim("mail.mega.bank.example")])
    assert (r.result, r.spf_aligned, r.dkim_aligned, r.policy_domain, r.org_domain) == \
        ("pass", True, False, "giant.bank.example", "giant.bank.example")
    # a sibling under the same PSD never aligns
    r = check(resolver, "user@giant.bank.example", sigs=[dkim("mega.bank.example")])
    assert r.result == "fail"


def test_org_domain_with_psd_record_does_not_use_psd_policy(zone, resolver):
    zone.add("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject; psd=y")
    zone.add("_dmarc.giant.bank.example", "TXT", "v=DMARC1; p=none")
    zone.add("branch.giant.bank.example", "A", "192.0.2.1")
    r = check(resolver, "user@branch.giant.bank.example")
    assert (r.policy_domain, r.policy) == ("giant.bank.example", "none")


def test_psd_n_makes_its_own_organizational_domain(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none")
    zone.add("_dmarc.dept.example.com", "TXT", "v=DMARC1; p=reject; psd=n")
    zone.add("x.dept.example.com", "A", "192.0.2.1")
    r = check(resolver, "user@x.dept.example.com", sigs=[dkim("example.com")])
    assert (r.result, r.org_domain, r.policy_domain, r.policy) == \
        ("fail", "dept.example.com", "dept.example.com", "reject")
    assert "_dmarc.example.com" not in dmarc_queries(zone)          # the walk stopped at psd=n
    assert check(resolver, "user@x.dept.example.com", sigs=[dkim("dept.example.com")]).result == "pass"


def test_tree_walk_of_a_long_domain_makes_at_most_eight_queries(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    author = "a.b.c.d.e.f.g.h.i.j.mail.example.com"
    r = check(resolver, f"user@{author}", spf=spf_pass("example.com"))
    assert (r.result, r.policy_domain, r.org_domain) == ("pass", "example.com", "example.com")
    assert dmarc_queries(zone) == [f"_dmarc.{author}", "_dmarc.g.h.i.j.mail.example.com",
                                   "_dmarc.h.i.j.mail.example.com", "_dmarc.i.j.mail.example.com",
                                   "_dmarc.j.mail.example.com", "_dmarc.mail.example.com",
                                   "_dmarc.example.com", "_dmarc.com"]


def test_a_changed_policy_record_is_seen_once_the_answer_read_before_expires(zone, resolver):
    """Walks are kept between messages, but never past the TTL of an answer they read."""
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject", ttl=1)
    first = check(resolver, spf=spf_pass("example.com"))
    assert check(resolver, spf=spf_pass("example.com")) == first
    zone.reset()
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none", ttl=1)
    time.sleep(1.1)
    assert (first.policy, check(resolver, spf=spf_pass("example.com")).policy) == ("reject", "none")


# -- alignment -------------------------------------------------------------------------------------
def test_relaxed_alignment_by_tree_walk(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, spf=spf_pass("bounce.example.com"), sigs=[dkim("signing.example.com")])
    assert (r.result, r.spf_aligned, r.dkim_aligned) == ("pass", True, True)


def test_identifier_with_its_own_org_domain_does_not_align(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    zone.add("_dmarc.tenant.example.com", "TXT", "v=DMARC1; p=none; psd=n")
    r = check(resolver, sigs=[dkim("tenant.example.com")])
    assert r.result == "fail"


def test_unrelated_identifiers_need_no_walk(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    check(resolver, spf=spf_pass("evil.example"), sigs=[dkim("other.example")])
    assert "_dmarc.evil.example" not in dmarc_queries(zone)


@pytest.mark.parametrize("tags, spf_ok, dkim_ok", [
    ("aspf=s; adkim=s", False, False), ("aspf=r; adkim=s", True, False),
    ("aspf=s; adkim=r", False, True), ("", True, True),
])
def test_strict_and_relaxed_modes(zone, resolver, tags, spf_ok, dkim_ok):
    zone.add("_dmarc.example.com", "TXT", f"v=DMARC1; p=reject; {tags}")
    r = check(resolver, spf=spf_pass("mail.example.com"), sigs=[dkim("news.example.com")])
    assert (r.spf_aligned, r.dkim_aligned) == (spf_ok, dkim_ok)
    assert r.result == ("pass" if spf_ok or dkim_ok else "fail")


def test_strict_alignment_is_an_exact_match(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; aspf=s; adkim=s")
    r = check(resolver, spf=spf_pass("EXAMPLE.COM."), sigs=[dkim("Example.Com")])
    assert (r.result, r.spf_aligned, r.dkim_aligned) == ("pass", True, True)


def test_null_sender_spf_uses_the_helo_domain(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, spf=spf_pass("mx1.example.com", identity="helo"))
    assert (r.result, r.spf_aligned) == ("pass", True)


# -- testing mode, RFC 7489 mode -----------------------------------------------------------------
@pytest.mark.parametrize("p, disposition", [("reject", "quarantine"), ("quarantine", "none"),
                                            ("none", "none")])
def test_t_y_applies_the_next_lower_policy(zone, resolver, p, disposition):
    zone.add("_dmarc.example.com", "TXT", f"v=DMARC1; p={p}; t=y")
    r = check(resolver)
    assert (r.result, r.policy, r.disposition, r.testing) == ("fail", p, disposition, True)


def test_rfc9989_ignores_pct(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; pct=0")
    assert check(resolver).disposition == "reject"


@pytest.mark.parametrize("draw, disposition, testing", [(0.2, "reject", False),
                                                       (0.7, "quarantine", True)])
def test_rfc7489_pct_sampling(zone, resolver, draw, disposition, testing):
    zone.add("_dmarc.example.co.uk", "TXT", "v=DMARC1; p=none; sp=reject; pct=50")
    zone.add("_dmarc.bounce.example.co.uk", "TXT", "v=DMARC1; p=none; psd=n")    # ignored by 7489
    r = check(resolver, "user@shop.example.co.uk", spf=spf_pass("evil.example"), mode="rfc7489",
              sample=lambda: draw)
    assert (r.result, r.policy, r.disposition, r.testing) == ("fail", "reject", disposition, testing)
    assert (r.policy_domain, r.org_domain) == ("example.co.uk", "example.co.uk")
    r = check(resolver, "user@shop.example.co.uk", spf=spf_pass("bounce.example.co.uk"),
              mode="rfc7489")
    assert r.result == "pass"                                   # same registered domain (PSL)


def test_rfc7489_pct_zero_and_t(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine; pct=0; t=n")
    zone.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject; t=y")
    r = check(resolver, mode="rfc7489", sample=lambda: pytest.fail("no draw needed"))
    assert (r.disposition, r.testing) == ("none", True)
    assert check(resolver, "user@example.net", mode="rfc7489").disposition == "reject"


def test_rfc7489_multiple_records_at_from_domain_stop_discovery(zone, resolver):
    zone.add("_dmarc.sub.example.com", "TXT", "v=DMARC1; p=none")
    zone.add("_dmarc.sub.example.com", "TXT", "v=DMARC1; p=reject")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, "user@sub.example.com", mode="rfc7489")
    assert r.result == "none" and dmarc_queries(zone) == ["_dmarc.sub.example.com"]


def test_rfc7489_mode_honours_np_for_a_non_existent_subdomain(layered, resolver):
    """RFC 9091 s. 3.2 added np to RFC 7489; non-existent per its s. 2.7 (no A, AAAA or MX)."""
    r = check(resolver, "user@ghost.example.com", mode="rfc7489")
    assert (r.result, r.policy, r.disposition, r.policy_domain) == \
        ("fail", "reject", "reject", "example.com")
    assert {("ghost.example.com", t) for t in ("A", "AAAA", "MX")} <= set(layered.queries)
    assert check(resolver, "user@exists.example.com", mode="rfc7489").policy == "quarantine"


def test_rfc7489_temperror_at_from_domain(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    zone.misbehave("_dmarc.sub.example.com", "servfail")
    assert check(resolver, "user@sub.example.com", mode="rfc7489").result == "temperror"


# -- From header traps ------------------------------------------------------------------------------
@pytest.mark.parametrize("froms, reason", [
    ((), "no From header field"),
    (("a@example.com", "b@evil.example"), "multiple From header fields (2: example.com, evil.example)"),
    (("a@example.com", "a@example.com"), "multiple From header fields"),
    (("",), "has no address"),
    (("undisclosed-recipients:;",), "has no address"),
    (("<a@example.com",), "expected '>'"),
    (("a@example.com>",), "expected ','"),
    (("a@[192.0.2.1]",), "address literal"),
    (("a@one.example, b@two.example, c@three.example, d@four.example, e@five.example",),
     "names 5 domains"),
])
def test_from_problems_are_permerror(zone, resolver, froms, reason):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, msg=message(*froms))
    assert r.result == "permerror" and reason in r.reason and r.author_error
    assert zone.queries == []


@pytest.mark.parametrize("from_value", [
    '"ceo@example.com" <x@evil.example>',
    "=?utf-8?q?ceo=40example=2Ecom?= <x@evil.example>",
    "(ceo@example.com) x@evil.example",
    r'"\"<ceo@example.com>" <x@evil.example>',
])
def test_the_evaluated_domain_is_the_displayed_address(zone, resolver, from_value):
    zone.add("_dmarc.evil.example", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, from_value, sigs=[dkim("example.com")])
    assert (r.from_domain, r.result) == ("evil.example", "fail")


def test_several_mailboxes_of_one_domain_are_one_author_domain(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, "a@example.com, B <b@EXAMPLE.com>", sigs=[dkim("example.com")])
    assert (r.result, r.from_domain) == ("pass", "example.com")


def test_several_domains_report_the_strictest(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    zone.add("_dmarc.other.example", "TXT", "v=DMARC1; p=quarantine")
    r = check(resolver, "a@example.com, b@other.example", sigs=[dkim("example.com")])
    assert (r.result, r.from_domain, r.disposition) == ("fail", "other.example", "quarantine")
    assert "example.com=pass" in r.reason and "other.example=fail" in r.reason
    r = check(resolver, "a@example.com, b@nopolicy.example", sigs=[dkim("example.com")])
    assert (r.result, r.from_domain) == ("none", "nopolicy.example")
    r = check(resolver, "a@example.com, b@other.example",
              sigs=[dkim("example.com"), dkim("other.example")])
    assert r.result == "pass"


def test_idn_author_domain_is_looked_up_as_a_label(zone, resolver):
    zone.add("_dmarc.xn--bcher-kva.example", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, "Jörg <jörg@Bücher.example>", sigs=[dkim("xn--bcher-kva.example")])
    assert (r.result, r.from_domain) == ("pass", "xn--bcher-kva.example")
    assert check(resolver, "jörg@bücher.example", sigs=[dkim("bücher.example")]).result == "pass"


def test_group_syntax_authors_are_evaluated(zone, resolver):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    r = check(resolver, "Team: a@example.com;")
    assert (r.result, r.from_domain) == ("fail", "example.com")


def test_a_failing_tld_lookup_after_a_record_was_found_is_not_temperror(zone, resolver):
    """The walk's org-domain step at the TLD fails (an authoritative-only server refuses it);
    the author's own record is known, so relaxed alignment of an unrelated SPF domain fails
    cleanly instead of turning into temperror."""
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    zone.misbehave("_dmarc.com", "refused")
    r = check(resolver, "user@example.com", spf=spf_pass("other.example.net"))
    assert (r.result, r.disposition) == ("fail", "reject")
