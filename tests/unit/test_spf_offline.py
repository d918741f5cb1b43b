"""SPF behaviour that needs no DNS: identity choice, the answer shape handed to pyspf, and the
guarantee that nothing escapes check_spf as an exception."""
from __future__ import annotations

import asyncio

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
