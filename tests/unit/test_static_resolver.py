"""StaticResolver: the resolver's own caching and failure rules over answers from a mapping."""
from __future__ import annotations

import asyncio
import time

import pytest

from authfilter.checks.spf import check_spf
from authfilter.dns import DnsClient, Resolver, StaticResolver
from authfilter.results import SessionFacts


def run(coro):
    return asyncio.run(coro)


def test_answers_in_the_shapes_dns_answer_documents():
    r = StaticResolver({
        ("Example.ORG.", "txt"): ["v=spf1 -all", b"\xffbytes"],
        ("example.org", "A"): ["192.0.2.1"],
        ("example.org", "AAAA"): ["2001:DB8:0::1"],
        ("example.org", "MX"): [("10", "MX.Example.org.")],
        ("1.2.0.192.in-addr.arpa", "PTR"): ["Mail.Example.ORG."],
    }, ttl=60)
    txt = run(r.query("EXAMPLE.org.", "TXT"))
    assert (txt.status, txt.records, txt.ttl, txt.name) == ("ok", (b"v=spf1 -all", b"\xffbytes"), 60,
                                                             "example.org")
    assert run(r.query("example.org", "A")).records == ("192.0.2.1",)
    assert run(r.query("example.org", "AAAA")).records == ("2001:db8::1",)
    assert run(r.query("example.org", "MX")).records == ((10, "mx.example.org"),)
    assert run(r.query("1.2.0.192.in-addr.arpa", "PTR")).records == ("mail.example.org",)
    assert r.nameservers == ["static answers"]


def test_nxdomain_and_nodata():
    r = StaticResolver({("example.org", "TXT"): ["hello"], ("mail.sub.example.org", "A"): ["192.0.2.1"],
                        ("gone.example.org", "TXT"): "nxdomain", ("empty.example.org", "TXT"): []})
    assert run(r.query("nowhere.example.org", "TXT")).status == "nxdomain"
    assert run(r.query("gone.example.org", "TXT")).status == "nxdomain"
    assert run(r.query("example.org", "MX")).status == "nodata"          # the name has a TXT
    assert run(r.query("sub.example.org", "TXT")).status == "nodata"     # empty non-terminal
    assert run(r.query("empty.example.org", "TXT")).status == "nodata"
    assert all(run(r.query(n, "TXT")).void for n in ("nowhere.example.org", "empty.example.org"))


def test_failures_are_temperror_and_kept_for_failure_ttl():
    r = StaticResolver({("bad.example.org", "TXT"): "servfail", ("also.example.org", "TXT"): "temperror",
                        ("slow.example.org", "TXT"): "timeout"}, failure_ttl=5)
    for name in ("bad.example.org", "also.example.org", "slow.example.org"):
        answer = run(r.query(name, "TXT"))
        assert answer.status == "temperror" and answer.ttl == 5 and answer.reason
        assert run(r.query(name, "TXT")) is answer
    assert "timeout" in run(r.query("slow.example.org", "TXT")).reason
    assert (r.stats.queries, r.stats.failures) == (3, 3)


def test_a_timeout_cut_short_by_the_deadline_is_not_kept():
    r = StaticResolver({("slow.example.org", "TXT"): "timeout"}, lifetime=5.0)
    for _ in range(2):
        answer = run(r.query("slow.example.org", "TXT", deadline=time.monotonic() + 1))
        assert answer.status == "temperror" and answer.ttl == 0
    assert r.stats.queries == 2


def test_deadline_passed_and_bad_names_ask_nothing():
    r = StaticResolver({("example.org", "TXT"): ["hello"]})
    assert "deadline" in run(r.query("example.org", "TXT", deadline=time.monotonic() - 1)).reason
    assert run(r.query("a..example.org", "TXT")).status == "permerror"
    assert r.peek("example.org", "TXT") is None


def test_answers_are_cached_and_identical_questions_coalesce():
    r = StaticResolver({("example.org", "TXT"): ["hello"]})

    async def many():
        return await asyncio.gather(*(r.query("example.org", "TXT") for _ in range(5)))

    answers = run(many())
    assert len({id(a) for a in answers}) == 1
    assert (r.stats.queries, r.stats.coalesced) == (1, 4)
    assert run(r.query("EXAMPLE.ORG.", "txt")) is answers[0]
    assert r.peek("example.org", "TXT") is answers[0]
    assert (r.stats.queries, r.stats.cache_hits) == (1, 1)
    assert run(r.query("nowhere.example.org", "A")) is run(r.query("nowhere.example.org", "A"))
    assert r.stats.queries == 2


def test_ttl_zero_is_never_cached():
    r = StaticResolver({("example.org", "TXT"): ["hello"]}, ttl=0)
    run(r.query("example.org", "TXT"))
    run(r.query("example.org", "TXT"))
    assert r.stats.queries == 2 and r.peek("example.org", "TXT") is None


def test_cnames_are_followed():
    r = StaticResolver({("www.example.org", "CNAME"): ["Host.Example.NET."],
                        ("host.example.net", "A"): ["192.0.2.7"],
                        ("loop1.example.org", "CNAME"): ["loop2.example.org"],
                        ("loop2.example.org", "CNAME"): ["loop1.example.org"]})
    answer = run(r.query("www.example.org", "A"))
    assert (answer.records, answer.canonical_name) == (("192.0.2.7",), "host.example.net")
    assert run(r.query("www.example.org", "CNAME")).records == ("host.example.net",)
    assert run(r.query("www.example.org", "TXT")).status == "nodata"
    assert run(r.query("loop1.example.org", "A")).status == "temperror"


@pytest.mark.parametrize("records", [
    {("example.org", "TXT"): "v=spf1 -all"},            # one string is not a list of records
    {("example.org", "TXT"): b"v=spf1 -all"},
    {("example.org", "TXT"): [42]},
    {("example.org", "A"): ["2001:db8::1"]},
    {("example.org", "AAAA"): ["192.0.2.1"]},
])
def test_values_that_are_not_records_are_refused(records):
    with pytest.raises(ValueError):
        StaticResolver(records)


def test_both_resolvers_are_dns_clients():
    assert isinstance(StaticResolver({}), DnsClient)
    assert isinstance(Resolver(["127.0.0.1:9"]), DnsClient)


def spf(resolver, ip):
    return run(check_spf(SessionFacts.create(ip, "mail.example.org", "alice@example.org"), resolver))


def test_spf_check_against_static_answers():
    r = StaticResolver({("example.org", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"]})
    assert spf(r, "192.0.2.10").result == "pass"
    assert spf(r, "198.51.100.1").result == "fail"
    assert r.stats.queries == 1
    hits = r.stats.cache_hits
    assert spf(r, "192.0.2.10").result == "pass"          # recalled: a dict lookup, no query
    assert (r.stats.queries, r.stats.cache_hits) == (1, hits + 1)


def test_spf_temperror_and_none_from_static_failures():
    r = StaticResolver({("example.org", "TXT"): "servfail"})
    assert spf(r, "192.0.2.10").result == "temperror"
    assert spf(StaticResolver({}), "192.0.2.10").result == "none"
