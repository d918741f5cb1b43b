"""The RFC 7208 s. 4.6.4 processing limits where authfilter reads them differently from pyspf:
void lookups counted per term, and an ``mx`` term with more than 10 names.  DNS from a
StaticResolver (no sockets)."""
from __future__ import annotations

import asyncio

from authfilter.checks.spf import check_spf
from authfilter.dns import StaticResolver
from authfilter.results import SessionFacts

CLIENT = "192.0.2.10"
PTR_NAME = "10.2.0.192.in-addr.arpa"


def check(records: dict, ip: str = CLIENT) -> tuple:
    resolver = StaticResolver(records)
    facts = SessionFacts.create(ip, "mail.example.org", "alice@example.org")
    return asyncio.run(check_spf(facts, resolver)), resolver


def test_names_a_ptr_term_validates_are_not_void_lookups_rfc7208_s4_6_4():
    """RFC 7208 s. 4.6.4 limits "the number of 'terms' for which DNS queries return" NODATA or
    NXDOMAIN: the ``ptr`` term's own PTR lookup answered, so the PTR names that do not resolve
    add no void lookup; with the two void ``a`` terms the record stays within the limit."""
    records = {("example.org", "TXT"): ["v=spf1 a:void1.example.org ptr a:void2.example.org -all"],
               (PTR_NAME, "PTR"): ["gone1.example.net", "gone2.example.net", "gone3.example.net"]}
    result, _ = check(records)
    assert (result.result, result.reason) == ("fail", "SPF fail - not authorized")


def test_a_void_ptr_lookup_is_the_ptr_terms_own_void_lookup_rfc7208_s4_6_4():
    """The term's own lookup still counts: a ``ptr`` term without any PTR record is the third
    void term here."""
    records = {("example.org", "TXT"): ["v=spf1 a:void1.example.org a:void2.example.org ptr -all"]}
    result, _ = check(records)
    assert (result.result, result.reason) == ("permerror", "Void lookup limit of 2 exceeded")


def test_the_p_macro_makes_no_void_lookup_rfc7208_s4_6_4_s7_3():
    """%{p} (RFC 7208 s. 7.3) is a macro, not a term: neither its PTR lookup (NXDOMAIN here)
    nor the names it validates count; the ``exists`` term's own lookup does."""
    records = {("example.org", "TXT"): ["v=spf1 a:void1.example.org a:void2.example.org "
                                        "exists:%{p}.allow.example.org -all"],
               ("unknown.allow.example.org", "A"): ["127.0.0.2"]}
    result, _ = check(records)
    assert result.result == "pass"                  # %{p} is "unknown": no validated name
    records[(PTR_NAME, "PTR")] = ["gone1.example.net", "gone2.example.net"]
    result, _ = check(records)
    assert result.result == "pass"


def test_mx_names_without_addresses_are_not_void_lookups_rfc7208_s4_6_4():
    records = {("example.org", "TXT"): ["v=spf1 a:void1.example.org mx a:void2.example.org -all"],
               ("example.org", "MX"): [(10, "mx1.example.net"), (20, "mx2.example.net")]}
    assert check(records)[0].result == "fail"


def mx_zone(names: int) -> dict:
    """``v=spf1 mx -all`` with ``names`` MX names; mx<n> has preference n and address .1<n>;
    listed in reverse, so only the preference decides the order."""
    records: dict = {("example.org", "TXT"): ["v=spf1 mx -all"], ("example.org", "MX"):
                     [(n, f"mx{n}.example.org") for n in reversed(range(names))]}
    for n in range(names):
        records[(f"mx{n}.example.org", "A")] = [f"198.51.100.{100 + n}"]
    return records


def test_mx_with_more_than_ten_names_checks_the_first_ten_in_order_rfc7208_s4_6_4():
    """RFC 7208 s. 4.6.4: "the evaluation of each 'MX' record MUST NOT result in querying more
    than 10 address records ... If this limit is exceeded, the 'mx' mechanism MUST produce a
    'permerror' result."  The limit is on the lookups made: a match among the ten names of
    lowest preference matches, and the eleventh name is never looked up."""
    result, resolver = check(mx_zone(11), ip="198.51.100.109")        # the tenth name
    assert result.result == "pass"
    assert resolver.peek("mx10.example.org", "A") is None


def test_mx_that_would_need_an_eleventh_lookup_is_permerror_rfc7208_s4_6_4():
    for ip in ("198.51.100.110", "192.0.2.99"):      # only the eleventh matches; none does
        result, resolver = check(mx_zone(11), ip=ip)
        assert result.result == "permerror" and "none of the first 10 matches" in result.reason
        assert resolver.peek("mx10.example.org", "A") is None
    assert check(mx_zone(10), ip="192.0.2.99")[0].result == "fail"    # ten names: no limit
