"""The resolver against a real DNS server on loopback: answers, negative caching, failures."""
import asyncio
import time

from authfilter.dns import Resolver, parse_nameserver

import pytest


def run(coro):
    return asyncio.run(coro)


def test_txt_answer_joins_strings_and_is_cached(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 " + "ip4:192.0.2.1 " * 40 + "-all")
    first = run(resolver.query("Example.ORG.", "TXT"))
    assert first.ok and first.records[0].startswith(b"v=spf1 ip4:192.0.2.1") and len(first.records[0]) > 255
    asked = len(zone.queries)
    second = run(resolver.query("example.org", "TXT"))
    assert second == first and len(zone.queries) == asked
    assert resolver.stats.cache_hits == 1


def test_address_mx_and_cname(zone, resolver):
    zone.add("example.org", "A", "192.0.2.1").add("example.org", "MX", "10 mx.example.org")
    zone.add("www.example.org", "CNAME", "example.org")
    a = run(resolver.query("www.example.org", "A"))
    assert a.records == ("192.0.2.1",) and a.canonical_name == "example.org"
    assert run(resolver.query("example.org", "MX")).records == ((10, "mx.example.org"),)


def test_nxdomain_and_nodata_are_cached_with_soa_ttl(zone, resolver):
    zone.add("example.org", "A", "192.0.2.1")
    nx = run(resolver.query("nope.example.org", "A"))
    nodata = run(resolver.query("example.org", "AAAA"))
    assert (nx.status, nodata.status) == ("nxdomain", "nodata") and nx.void and nodata.void
    assert 0 < nx.ttl <= 60
    asked = len(zone.queries)
    run(resolver.query("nope.example.org", "A"))
    run(resolver.query("example.org", "AAAA"))
    assert len(zone.queries) == asked


def test_ttl_is_honoured(zone, resolver):
    zone.add("short.example.org", "A", "192.0.2.7", ttl=1)
    run(resolver.query("short.example.org", "A"))
    time.sleep(1.1)
    asked = len(zone.queries)
    run(resolver.query("short.example.org", "A"))
    assert len(zone.queries) == asked + 1


@pytest.mark.parametrize("how", ["timeout", "servfail", "refused", "garbage"])
def test_failures_are_temperror_remembered_for_failure_ttl_only(zone, how):
    """RFC 9520: a failed lookup is not repeated at once, and is asked again once the
    failure TTL is over (when the zone may have recovered)."""
    resolver = Resolver([zone.address], timeout=0.2, lifetime=0.4, failure_ttl=1)
    zone.misbehave("bad.example.org", how)
    answer = run(resolver.query("bad.example.org", "TXT"))
    assert answer.status == "temperror" and answer.reason
    asked = len(zone.queries)
    again = run(resolver.query("bad.example.org", "TXT"))
    assert again.status == "temperror" and len(zone.queries) == asked
    zone.recover("bad.example.org").add("bad.example.org", "TXT", "recovered")
    time.sleep(1.1)
    assert run(resolver.query("bad.example.org", "TXT")).records == (b"recovered",)


def test_failures_are_asked_again_with_failure_ttl_zero(zone):
    resolver = Resolver([zone.address], timeout=0.2, lifetime=0.4, failure_ttl=0)
    zone.misbehave("bad.example.org", "servfail")
    run(resolver.query("bad.example.org", "TXT"))
    asked = len(zone.queries)
    run(resolver.query("bad.example.org", "TXT"))
    assert len(zone.queries) > asked


def test_a_timeout_cut_short_by_the_message_deadline_is_not_remembered(zone):
    resolver = Resolver([zone.address], timeout=0.2, lifetime=2.0, failure_ttl=60)
    zone.misbehave("slow.example.org", "timeout")
    answer = run(resolver.query("slow.example.org", "TXT", deadline=time.monotonic() + 0.3))
    assert answer.status == "temperror"
    asked = len(zone.queries)
    run(resolver.query("slow.example.org", "TXT", deadline=time.monotonic() + 0.3))
    assert len(zone.queries) > asked


def test_bad_names_are_permerror_without_a_query(zone, resolver):
    for name in ("a..example.org", "x" * 64 + ".org", ".".join(["abcdefghi"] * 30)):
        assert run(resolver.query(name, "TXT")).status == "permerror"
    assert zone.queries == []


def test_identical_lookups_in_flight_share_one_query(zone, resolver):
    zone.add("example.org", "TXT", "hello")

    async def many():
        return await asyncio.gather(*(resolver.query("example.org", "TXT") for _ in range(20)))

    answers = run(many())
    assert all(a.records == (b"hello",) for a in answers)
    assert zone.queries.count(("example.org", "TXT")) == 1


def test_deadline_passed_gives_temperror_without_asking(zone, resolver):
    zone.add("example.org", "TXT", "hello")
    answer = run(resolver.query("example.org", "TXT", deadline=time.monotonic() - 1))
    assert answer.status == "temperror" and "deadline" in answer.reason
    assert zone.queries == []


def test_unreachable_server_is_temperror():
    # Nothing listens on this loopback port: ICMP port unreachable or a timeout.
    r = Resolver(["127.0.0.1:9"], timeout=0.2, lifetime=0.4)
    assert run(r.query("example.org", "A")).status == "temperror"


def test_cache_is_bounded(zone):
    r = Resolver([zone.address], cache_size=5)
    for i in range(10):
        zone.add(f"h{i}.example.org", "A", "192.0.2.1")
        run(r.query(f"h{i}.example.org", "A"))
    assert len(r._cache) == 5


@pytest.mark.parametrize("spec,expected", [
    ("127.0.0.1:5302", ("127.0.0.1", 5302)), ("127.0.0.1", ("127.0.0.1", 53)),
    ("[::1]:5353", ("::1", 5353)), ("::1", ("::1", 53)),
])
def test_nameserver_specs(spec, expected):
    assert parse_nameserver(spec) == expected


@pytest.mark.parametrize("spec", ["localhost:53", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x"])
def test_bad_nameserver_specs_name_the_problem(spec):
    with pytest.raises(ValueError, match="nameserver"):
        parse_nameserver(spec)
