"""check_spf against the real loopback DNS server: results, identities, limits, failures."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import spf as pyspf

from authfilter.checks.spf import check_spf
from authfilter.dns import Resolver
from authfilter.results import SessionFacts
from tests.mailtools import publish_spf_include_chain

CLIENT = "192.0.2.10"


def check(resolver, mail_from="alice@example.org", ip=CLIENT, helo="mail.example.org", **kw):
    facts = SessionFacts.create(ip, helo, mail_from)
    return asyncio.run(check_spf(facts, resolver, **kw))


@pytest.mark.parametrize(("record", "expected"), [
    (f"v=spf1 ip4:{CLIENT} -all", "pass"),
    ("v=spf1 ip4:198.51.100.0/24 -all", "fail"),
    ("v=spf1 ip4:198.51.100.0/24 ~all", "softfail"),
    ("v=spf1 ip4:198.51.100.0/24 ?all", "neutral"),
    ("v=spf1 ip4:198.51.100.0/24", "neutral"),          # no match, no all: neutral (s. 4.7)
    ("v=spf1 ip4:192.0.2.300 -all", "permerror"),
    ("v=spf1 frobnicate:example.org -all", "permerror"),
])
def test_result_words(zone, resolver, record, expected):
    zone.add("example.org", "TXT", record)
    result = check(resolver)
    assert result.result == expected
    assert (result.identity, result.domain, result.sender) == ("mailfrom", "example.org", "alice@example.org")
    assert result.reason


def test_none_when_there_is_no_spf_record(zone, resolver):
    zone.add("example.org", "TXT", "google-site-verification=abc")
    assert check(resolver).result == "none"
    result = check(resolver, mail_from="bob@nowhere.example.org")     # NXDOMAIN
    assert result.result == "none" and "nowhere.example.org" in result.reason


def test_include_a_mx_and_cname(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 include:_spf.example.org mx -all")
    zone.add("_spf.example.org", "CNAME", "_spf.provider.example.net")
    zone.add("_spf.provider.example.net", "TXT", "v=spf1 a:out.provider.example.net -all")
    zone.add("out.provider.example.net", "A", "192.0.2.20")
    zone.add("example.org", "MX", "10 mx1.example.org").add("example.org", "MX", "20 mx2.example.org")
    zone.add("mx1.example.org", "A", "192.0.2.31").add("mx2.example.org", "A", "192.0.2.32")
    assert check(resolver, ip="192.0.2.20").result == "pass"       # through the CNAME'd include
    assert check(resolver, ip="192.0.2.32").result == "pass"       # through mx
    assert check(resolver, ip="192.0.2.33").result == "fail"


def test_mx_lookups_are_exactly_the_ones_pyspf_makes(zone, resolver):
    """The MX hosts' addresses are fetched together, but no name pyspf would not ask about."""
    zone.add("example.org", "TXT", "v=spf1 mx -all")
    for n in range(3):
        zone.add("example.org", "MX", f"{n} mx{n}.example.org").add(f"mx{n}.example.org", "A", f"192.0.2.{40 + n}")
    assert check(resolver, ip="192.0.2.41").result == "pass"
    assert sorted(zone.queries) == [("example.org", "MX"), ("example.org", "TXT"),
                                    ("mx0.example.org", "A"), ("mx1.example.org", "A"),
                                    ("mx2.example.org", "A")]


def test_too_many_mx_names_is_permerror_without_the_eleventh_address_lookup(zone, resolver):
    """RFC 7208 s. 4.6.4: no more than 10 address lookups for one "mx" term; the ten names of
    lowest preference are checked (and fetched together), the eleventh is never asked for."""
    zone.add("example.org", "TXT", "v=spf1 mx -all")
    for n in range(11):
        zone.add("example.org", "MX", f"{n} mx{n}.example.org")
    result = check(resolver)
    assert result.result == "permerror" and "MX" in result.reason
    assert sorted(q for q in zone.queries if q[1] == "A") == \
        sorted((f"mx{n}.example.org", "A") for n in range(10))
    zone.add("mx3.example.org", "A", CLIENT)
    assert check(Resolver([zone.address], timeout=0.5, lifetime=1.0)).result == "pass"


def test_exp_text_is_the_reason_for_fail(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 -all exp=why.example.org")
    zone.add("why.example.org", "TXT", "%{i} may not send for %{d}; ask %{r}")
    result = check(resolver, receiver="mx.example.net")
    assert result.result == "fail"
    assert result.reason == f"{CLIENT} may not send for example.org; ask mx.example.net"


def test_control_characters_in_exp_text_are_escaped(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 -all exp=why.example.org")
    zone.add("why.example.org", "TXT", "no\r\nX-Injected: yes")
    result = check(resolver)
    assert (result.result, result.reason) == ("fail", "no\\r\\nX-Injected: yes")


# -- identities (RFC 7208 s. 2.3, 2.4, 4.3) -----------------------------------------------------
def test_null_sender_checks_postmaster_at_helo(zone, resolver):
    zone.add("mail.example.org", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    result = check(resolver, mail_from="")
    assert (result.result, result.identity, result.domain, result.sender) == \
        ("pass", "helo", "mail.example.org", "postmaster@mail.example.org")


def test_helo_identity_is_checked_separately(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 -all")
    zone.add("mail.example.org", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    assert check(resolver).result == "fail"
    helo = check(resolver, identity="helo")
    assert (helo.result, helo.identity, helo.sender) == ("pass", "helo", "postmaster@mail.example.org")


def test_sender_without_local_part_is_postmaster(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 -all exp=why.example.org")
    zone.add("why.example.org", "TXT", "%{l} at %{o}")
    for mail_from in ("example.org", "@example.org"):
        result = check(resolver, mail_from=mail_from)
        assert (result.sender, result.reason) == ("postmaster@example.org", "postmaster at example.org")


@pytest.mark.parametrize(("helo", "why"), [
    ("[192.0.2.10]", "address literal"),
    ("192.0.2.10", "IP address"),
    ("localhost", "not a fully qualified"),
    (None, "no MAIL FROM and no HELO"),
])
def test_unusable_helo_gives_none_without_dns(zone, resolver, helo, why):
    for identity, mail_from in (("helo", "alice@example.org"), ("mailfrom", "")):
        result = check(resolver, mail_from=mail_from, helo=helo, identity=identity)
        assert (result.result, result.identity) == ("none", "helo") and why in result.reason
    assert zone.queries == []


# -- limits (RFC 7208 s. 4.6.4) ------------------------------------------------------------------
def _a_terms(count: int, prefix: str = "h") -> str:
    return " ".join(f"a:{prefix}{n}.example.org" for n in range(count))


def test_ten_dns_terms_are_allowed_and_the_eleventh_is_permerror(zone, resolver):
    for n in range(11):
        zone.add(f"h{n}.example.org", "A", f"198.51.100.{n}")
    zone.add("ten.example.org", "TXT", f"v=spf1 {_a_terms(10)} -all")
    zone.add("eleven.example.org", "TXT", f"v=spf1 {_a_terms(11)} -all")
    assert check(resolver, mail_from="a@ten.example.org").result == "fail"
    result = check(resolver, mail_from="a@eleven.example.org")
    assert (result.result, result.reason) == ("permerror", "Too many DNS lookups")


def test_two_void_lookups_are_allowed_and_the_third_is_permerror(zone, resolver):
    zone.add("two.example.org", "TXT", f"v=spf1 {_a_terms(2, 'void')} -all")
    zone.add("three.example.org", "TXT", f"v=spf1 {_a_terms(3, 'void')} -all")
    assert check(resolver, mail_from="a@two.example.org").result == "fail"
    result = check(resolver, mail_from="a@three.example.org")
    assert (result.result, result.reason) == ("permerror", "Void lookup limit of 2 exceeded")


def test_multiple_spf_records_are_permerror(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 -all").add("example.org", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    result = check(resolver)
    assert result.result == "permerror" and "Two or more" in result.reason


def test_garbage_and_huge_txt_records(zone, resolver):
    zone.add("junk.example.org", "TXT", bytes(range(256)))                    # not SPF: ignored
    zone.add("junk.example.org", "TXT", "v=spf1 ip4:192.0.2.0/24 \x80\xff -all")
    assert check(resolver, mail_from="a@junk.example.org").result == "permerror"
    huge = "v=spf1 " + " ".join(f"ip4:198.51.{n // 250}.{n % 250}" for n in range(400)) + f" ip4:{CLIENT} -all"
    assert len(huge) > 6000                                           # needs TCP (RFC 7766)
    zone.add("huge.example.org", "TXT", huge)
    assert check(resolver, mail_from="a@huge.example.org").result == "pass"



def test_a_huge_record_chain_is_evaluated_without_stalling_the_event_loop(zone, resolver):
    """The parsing goes on in a thread; other coroutines keep being served meanwhile (on the
    loop, one warm pass took ~135 ms during which nothing else ran)."""
    publish_spf_include_chain(zone, "big.example.org", CLIENT)

    async def check_while_ticking(ip):
        gaps, last, done = [], time.perf_counter(), asyncio.Event()

        async def tick():
            nonlocal last
            while not done.is_set():
                await asyncio.sleep(0.001)
                gaps.append(time.perf_counter() - last)
                last = time.perf_counter()
        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        result = await check_spf(SessionFacts.create(ip, "mail.example.org", "a@big.example.org"),
                                 resolver)
        done.set()
        await ticker
        return result, max(gaps)

    async def main():
        results = [await check_while_ticking(CLIENT)]                  # cold
        results += [await check_while_ticking(ip) for ip in (CLIENT, "198.51.100.1")]  # warm
        return results
    (cold, _), (warm, warm_gap), (other, other_gap) = asyncio.run(main())
    assert (cold.result, warm.result, other.result) == ("pass", "pass", "fail")
    assert max(warm_gap, other_gap) < 0.1, (warm_gap, other_gap)


def test_a_huge_record_chain_still_ends_at_the_spf_deadline(zone):
    publish_spf_include_chain(zone, "big.example.org", CLIENT)
    zone.misbehave("_s8.big.example.org", "timeout")          # the last include never answers
    slow = Resolver([zone.address], timeout=5, lifetime=5)
    started = time.monotonic()
    result = check(slow, mail_from="a@big.example.org", timeout=1.0)
    assert result.result == "temperror" and "time" in result.reason
    assert time.monotonic() - started < 2.5


# -- DNS failures and time ----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["timeout", "servfail", "garbage"])
def test_dns_failure_is_temperror(zone, how):
    zone.misbehave("example.org", how)
    result = check(Resolver([zone.address], timeout=0.2, lifetime=0.3))
    assert result.result == "temperror" and result.reason


def test_failure_inside_an_include_is_temperror(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 include:_spf.example.org -all")
    zone.misbehave("_spf.example.org", "servfail")
    assert check(resolver).result == "temperror"


def test_spf_timeout_cuts_a_slow_lookup_short(zone):
    slow = Resolver([zone.address], timeout=5, lifetime=5)
    zone.misbehave("example.org", "timeout")
    started = time.monotonic()
    result = check(slow, timeout=0.3)
    assert result.result == "temperror" and time.monotonic() - started < 1.0


def test_deadline_already_passed_is_temperror_without_queries(zone, resolver):
    zone.add("example.org", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    result = check(resolver, deadline=time.monotonic() - 1)
    assert result.result == "temperror" and "time" in result.reason
    assert zone.queries == []


# -- IPv6 -----------------------------------------------------------------------------------------
def test_ipv6_client_and_ir_macro(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 ip6:2001:db8:1::/48 exists:%{ir}.%{v}._spf.example.org -all")
    nibbles = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.8.b.d.0.1.0.0.2"   # 2001:db8:2::1
    zone.add(f"{nibbles}.ip6._spf.example.org", "A", "127.0.0.2")
    assert check(resolver, ip="2001:db8:1::7").result == "pass"        # ip6:
    assert check(resolver, ip="2001:db8:2::1").result == "pass"        # exists:%{ir}
    assert (f"{nibbles}.ip6._spf.example.org", "A") in zone.queries
    assert check(resolver, ip="2001:db8:2::2").result == "fail"


def test_ipv6_a_and_mx_use_aaaa(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 a mx -all")
    zone.add("example.org", "AAAA", "2001:db8::25").add("example.org", "MX", "10 mx.example.org")
    zone.add("mx.example.org", "AAAA", "2001:db8::26")
    assert check(resolver, ip="2001:db8::25").result == "pass"
    assert check(resolver, ip="2001:db8::26").result == "pass"
    assert not [q for q in zone.queries if q[1] == "A"]


def test_ipv4_mapped_ipv6_client_is_treated_as_ipv4(zone, resolver):
    zone.add("example.org", "TXT", f"v=spf1 ip4:{CLIENT} -all exp=why.example.org")
    zone.add("why.example.org", "TXT", "%{i} %{v}")
    assert check(resolver, ip=f"::ffff:{CLIENT}").result == "pass"
    fail = check(resolver, ip="::ffff:198.51.100.1")
    assert (fail.result, fail.reason) == ("fail", "198.51.100.1 in-addr")


# -- all DNS through the resolver -----------------------------------------------------------------
def test_second_check_is_served_from_the_resolver_cache(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 include:_spf.example.org -all")
    zone.add("_spf.example.org", "TXT", "v=spf1 a:out.example.org")
    zone.add("out.example.org", "A", CLIENT)
    first = check(resolver)
    assert first.result == "pass"
    assert sorted(zone.queries) == [("_spf.example.org", "TXT"), ("example.org", "TXT"),
                                    ("out.example.org", "A")]
    assert resolver.stats.queries == 3
    assert check(resolver) == first
    assert len(zone.queries) == 3 and resolver.stats.queries == 3


def test_pyspf_alone_cannot_reach_dns(zone):
    """Outside check_spf pyspf's lookups fail at once: it has no DNS of its own any more."""
    zone.add("example.org", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    result, _ = pyspf.check2(i=CLIENT, s="alice@example.org", h="mail.example.org")
    assert result == "temperror" and zone.queries == []


def test_concurrent_checks_in_one_loop_do_not_mix(zone, resolver):
    for n in range(20):
        zone.add(f"d{n}.example.org", "TXT", f"v=spf1 ip4:192.0.2.{n} -all")

    async def all_checks():
        return await asyncio.gather(*(
            check_spf(SessionFacts.create(f"192.0.2.{n // 2 * 2}", "h.example.org", f"a@d{n}.example.org"),
                      resolver) for n in range(20)))

    results = asyncio.run(all_checks())
    assert [r.result for r in results] == ["pass", "fail"] * 10
    assert [r.domain for r in results] == [f"d{n}.example.org" for n in range(20)]


def test_checks_in_threads_do_not_mix(zone):
    for n in range(8):
        zone.add(f"d{n}.example.org", "TXT", f"v=spf1 include:i{n}.example.org -all")
        zone.add(f"i{n}.example.org", "TXT", f"v=spf1 ip4:192.0.2.{n}")
    results: dict[int, str] = {}

    def worker(n: int) -> None:
        own = Resolver([zone.address], timeout=0.5, lifetime=1.0)
        facts = SessionFacts.create(f"192.0.2.{n}", "h.example.org", f"a@d{n}.example.org")
        results[n] = asyncio.run(check_spf(facts, own)).result

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: "pass" for n in range(8)}


def test_repeated_check_is_remembered_until_an_answer_it_used_expires(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 include:_i.example.org -all")
    zone.add("_i.example.org", "TXT", f"v=spf1 ip4:{CLIENT} -all", ttl=1)
    first = check(resolver)
    hits = resolver.stats.cache_hits
    assert check(resolver) == first and first.result == "pass"
    assert resolver.stats.cache_hits == hits + 1          # one memo hit, no pyspf run
    zone.records.clear()
    zone.add("example.org", "TXT", "v=spf1 include:_i.example.org -all")
    zone.add("_i.example.org", "TXT", "v=spf1 -all", ttl=1)
    time.sleep(1.1)                                       # the include's TTL has run out
    assert check(resolver).result == "fail"
    assert check(resolver, helo="other.example.org").result == "fail"   # HELO is part of the key
