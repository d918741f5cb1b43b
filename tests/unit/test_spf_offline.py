"""SPF behaviour that needs no DNS: identity choice, the answer shape handed to pyspf, and the
guarantee that nothing escapes check_spf as an exception."""
from __future__ import annotations

import asyncio
import time

import pytest
import spf as pyspf

from authfilter.checks.spf import _pyspf_records, check_spf
from authfilter.dns import DnsAnswer, Resolver
from authfilter.results import SessionFacts


class NoDnsResolver(Resolver):
    """A resolver with an empty cache whose every lookup fails loudly."""

    def __init__(self, failure: BaseException = AssertionError("no DNS lookup expected")) -> None:
        super().__init__(["127.0.0.1:9"])
        self.failure = failure

    async def query(self, name, rdtype, *, deadline=None):
        raise self.failure


def check(mail_from, helo="mail.example.org", identity="mailfrom", resolver=None):
    facts = SessionFacts.create("192.0.2.1", helo, mail_from)
    return asyncio.run(check_spf(facts, resolver or NoDnsResolver(), identity=identity))


@pytest.mark.parametrize(("mail_from", "helo", "identity", "why"), [
    ("a@[192.0.2.1]", "mail.example.org", "mailfrom", "MAIL FROM domain '[192.0.2.1]' is an address literal"),
    ("a@192.0.2.1", "mail.example.org", "mailfrom", "is an IP address"),
    ("a@example", "mail.example.org", "mailfrom", "is not a fully qualified domain name"),
    ("a@x..example.org", "mail.example.org", "mailfrom", "is not a valid domain name"),
    ("a@" + "x" * 64 + ".example.org", "mail.example.org", "mailfrom", "is not a valid domain name"),
    ("a@" + "x." * 127 + "org", "mail.example.org", "mailfrom", "is not a valid domain name"),
    ("", "[192.0.2.1]", "mailfrom", "HELO name '[192.0.2.1]' is an address literal"),
    (None, "OEMCOMPUTER", "mailfrom", "HELO name 'OEMCOMPUTER' is not a fully qualified"),
    ("a@example.org", None, "helo", "no MAIL FROM and no HELO/EHLO name"),
    (None, None, "mailfrom", "no MAIL FROM and no HELO/EHLO name"),
])
def test_unusable_identities_are_none_without_dns(mail_from, helo, identity, why):
    result = check(mail_from, helo, identity)
    assert result.result == "none" and why in result.reason


def test_quoted_local_part_may_contain_at():
    result = check('"a@b"@example.org', resolver=NoDnsResolver(RuntimeError("offline")))
    assert (result.domain, result.sender) == ("example.org", '"a@b"@example.org')


def test_trailing_dot_and_case_of_the_domain():
    result = check("Bob@Example.ORG.", resolver=NoDnsResolver(RuntimeError("offline")))
    assert (result.domain, result.sender) == ("example.org", "Bob@Example.ORG")


def test_unexpected_exception_becomes_temperror_with_reason():
    result = check("a@example.org", resolver=NoDnsResolver(RuntimeError("resolver exploded")))
    assert result.result == "temperror"
    assert result.reason == "internal error in SPF check: RuntimeError: resolver exploded"


def test_unknown_identity_is_a_programming_error():
    with pytest.raises(ValueError, match="identity"):
        check("a@example.org", identity="from")


def test_pyspf_outside_check_spf_gets_temperror_not_a_socket():
    with pytest.raises(pyspf.TempError, match="only available inside"):
        pyspf.DNSLookup("example.org", "TXT", True, 5)


# -- the answer shape pyspf expects (that of its own DNSLookup_dnspython) -------------------------
def test_txt_records_are_tuples_of_bytes_per_rr():
    answer = DnsAnswer("example.org", "TXT", "ok", (b"v=spf1 -all", b"other"))
    assert _pyspf_records(answer) == [(("example.org", "TXT"), (b"v=spf1 -all",)),
                                      (("example.org", "TXT"), (b"other",))]


def test_cname_is_given_to_pyspf_to_follow():
    answer = DnsAnswer("www.example.org", "A", "ok", ("192.0.2.1",), canonical_name="example.org")
    assert _pyspf_records(answer) == [(("www.example.org", "CNAME"), "example.org"),
                                      (("example.org", "A"), "192.0.2.1")]


def test_mx_keeps_preference_and_host():
    answer = DnsAnswer("example.org", "MX", "ok", ((10, "mx.example.org"),))
    assert _pyspf_records(answer) == [(("example.org", "MX"), (10, "mx.example.org"))]


@pytest.mark.parametrize("status", ["nxdomain", "nodata", "permerror"])
def test_no_data_is_an_empty_list(status):
    assert _pyspf_records(DnsAnswer("example.org", "A", status)) == []


def test_temperror_raises_pyspf_temperror_with_the_reason():
    with pytest.raises(pyspf.TempError, match="DNS timeout"):
        _pyspf_records(DnsAnswer("example.org", "TXT", "temperror", reason="DNS timeout"))


# -- records built to make pyspf's regular expressions slow (found by test_fuzz_parsers.py) -----
def published(record: str, **more) -> Resolver:
    from authfilter.dns import StaticResolver
    return StaticResolver({("example.org", "TXT"): [record], ("example.org", "A"): ["192.0.2.9"],
                           ("explain.example.org", "TXT"): [more.get("exp", "not allowed")]})


@pytest.mark.parametrize(("record", "why"), [
    # pyspf's RE_TOPLAB is quadratic in a label that is not the last (20 KB took 10 s)
    ("v=spf1 a:x." + "p" * 1000 + ".com -all", "label longer than 63 characters"),
    ("v=spf1 a:x." + "p" * 20_000 + ".com -all", "longer than 1024 characters"),
    ("v=spf1 include:a.b" + "c" * 64 + ".example.org -all", "label longer than 63 characters"),
    # its macro scan is quadratic in "%{" without "}"
    ("v=spf1 a:" + "%{" * 10_000 + ".com -all", "longer than 1024 characters"),
    ("v=spf1 -all exp=" + "%{o}." * 12_000 + "example.org", "domain-spec longer than 1024"),
    # pyspf's int() of a CIDR length raised ValueError past 4300 digits: "internal error"
    ("v=spf1 mx//1" + "9" * 5000 + " -all", "term longer than 1024 characters"),
], ids=["long-label", "20-KB-label", "64-character-label", "macro-run", "long-exp-domain",
        "cidr-digits"])
def test_hostile_domain_specs_are_permerror_in_milliseconds(record, why):
    start = time.perf_counter()
    result = check("alice@example.org", resolver=published(record))
    assert time.perf_counter() - start < 0.5
    assert result.result == "permerror" and why in result.reason, result


def test_a_long_explanation_text_falls_back_to_the_default_in_milliseconds():
    start = time.perf_counter()
    result = check("alice@example.org", resolver=published("v=spf1 -all exp=explain.example.org",
                                                           exp="%{" * 30_000))
    assert time.perf_counter() - start < 0.5 and result.result == "fail"


def test_domain_specs_of_real_length_are_untouched():
    record = "v=spf1 a:" + "a" * 63 + ".example.org exists:%{ir}.%{l1r+-}._spf.%{d} -all"
    assert check("alice@example.org", resolver=published(record)).result == "fail"
    assert check("alice@example.org", resolver=published("v=spf1 a -all")).result == "fail"
    assert check("alice@example.org", resolver=published("v=spf1 a:example.org/24 -all")).result == "pass"
