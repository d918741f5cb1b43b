"""iprev (RFC 8601 s. 3) and the DNS blocklists (RFC 5782), with static DNS answers."""
from __future__ import annotations

import asyncio
import ipaddress

import pytest

from authfilter import config as config_mod
from authfilter.checks.dnsbl import (DnsblCheck, DomainBlocklistCheck, ip_query_name,
                                     parse_address_ranges)
from authfilter.checks.base import MessageContext
from authfilter.checks.iprev import IprevCheck, check_iprev
from authfilter.config import ConfigError
from authfilter.dns import StaticResolver
from authfilter.message import Message
from authfilter.results import SessionFacts

IP = "192.0.2.1"
PTR = "1.2.0.192.in-addr.arpa"


def run(coro):
    return asyncio.run(coro)


def iprev(records, ip=IP, max_names=10):
    return run(check_iprev(SessionFacts(ip), StaticResolver(records), max_names=max_names))


# -- iprev -------------------------------------------------------------------------------------
def test_iprev_passes_when_the_ptr_name_maps_back():
    r = iprev({(PTR, "PTR"): ["mail.example.org"], ("mail.example.org", "A"): [IP]})
    assert (r.result, r.name, r.ip) == ("pass", "mail.example.org", IP)
    assert IprevCheck().authres(r, SessionFacts(IP)) == [
        "iprev=pass (mail.example.org) policy.iprev=192.0.2.1"]


def test_iprev_fails_when_no_name_maps_back():
    r = iprev({(PTR, "PTR"): ["a.example.org", "b.example.org"],
               ("a.example.org", "A"): ["198.51.100.1"]})       # b: NXDOMAIN
    assert r.result == "fail" and r.names == ("a.example.org", "b.example.org")


def test_iprev_without_a_ptr_record_is_permerror():
    assert iprev({}).result == "permerror"
    assert iprev({(PTR, "PTR"): []}).result == "permerror"


def test_iprev_dns_failure_is_temperror():
    assert iprev({(PTR, "PTR"): "servfail"}).result == "temperror"
    r = iprev({(PTR, "PTR"): ["a.example.org"], ("a.example.org", "A"): "timeout"})
    assert r.result == "temperror"


def test_iprev_a_pass_beats_another_names_failure():
    r = iprev({(PTR, "PTR"): ["a.example.org", "b.example.org"],
               ("a.example.org", "A"): "servfail", ("b.example.org", "A"): [IP]})
    assert (r.result, r.name) == ("pass", "b.example.org")


def test_iprev_looks_up_at_most_max_names():
    names = [f"n{i}.example.org" for i in range(12)]
    records = {(PTR, "PTR"): names, (names[11], "A"): [IP]}
    assert iprev(records).result == "fail"              # the 12th name is never asked
    assert iprev(records, max_names=10).names == tuple(names[:10])


def test_iprev_of_ipv6_uses_nibbles_and_aaaa():
    ip = "2001:db8::25"
    ptr = ipaddress.ip_address(ip).reverse_pointer
    r = iprev({(ptr, "PTR"): ["mx.example.org"], ("mx.example.org", "AAAA"): [ip]}, ip=ip)
    assert r.result == "pass"


# -- DNSBL ---------------------------------------------------------------------------------
def test_query_names_reverse_octets_and_nibbles():
    assert ip_query_name(ipaddress.ip_address("192.0.2.1"), "zen.example") == "1.2.0.192.zen.example"
    v6 = ip_query_name(ipaddress.ip_address("2001:db8::1"), "bl.example.")
    assert v6 == "1.0.0.0." + "0.0.0.0." * 5 + "8.b.d.0.1.0.0.2.bl.example"
    mapped = ip_query_name(ipaddress.ip_address("::ffff:192.0.2.1"), "bl.example")
    assert mapped == "1.2.0.192.bl.example"


def test_address_ranges_parse_and_bad_ones_are_named():
    assert parse_address_ranges(["127.0.0.2", "127.0.0.4-127.0.0.11", "127.0.1.0/30"]) == (
        (0x7f000002, 0x7f000002), (0x7f000004, 0x7f00000b), (0x7f000100, 0x7f000103))
    with pytest.raises(ValueError, match="'127.0.0.9-127.0.0.2'"):
        parse_address_ranges(["127.0.0.9-127.0.0.2"])


def config(lists, **dnsbl):
    return config_mod.from_dict({"dnsbl": {"lists": lists, **dnsbl}})


ZEN = {"zone": "zen.example", "listed": ["127.0.0.2-127.0.0.11"]}


def dnsbl(records, lists=(ZEN,), ip=IP):
    cfg = config(list(lists))
    awaitable = DnsblCheck().evaluate(SessionFacts(ip), StaticResolver(records), cfg, 1e12)
    return None if awaitable is None else run(awaitable)


def test_a_listed_client_is_listed_with_its_answer():
    r = dnsbl({("1.2.0.192.zen.example", "A"): ["127.0.0.4"]})
    assert r.result == "listed"
    (listing,) = r.listings
    assert (listing.list, listing.identity, listing.queried, listing.answers, listing.action) == (
        "zen.example", "ip", IP, ("127.0.0.4",), "reject")


def test_a_client_not_listed_is_none():
    assert dnsbl({}).result == "none"
    assert dnsbl({}).listings == ()


@pytest.mark.parametrize("answer", ["127.255.255.254", "127.255.255.252", "127.0.0.1"])
def test_an_answer_outside_listed_is_an_error_never_a_listing(answer):
    r = dnsbl({("1.2.0.192.zen.example", "A"): [answer]})
    assert r.result == "error" and r.listings == ()
    assert answer in r.errors[0] and "not a listing code" in r.errors[0]


@pytest.mark.parametrize("failure", ["timeout", "servfail"])
def test_a_dns_failure_is_an_error_never_a_listing(failure):
    r = dnsbl({("1.2.0.192.zen.example", "A"): failure})
    assert r.result == "error" and r.listings == ()


def test_an_ipv6_client_is_asked_by_nibbles():
    ip = "2001:db8::1"
    name = ip_query_name(ipaddress.ip_address(ip), "zen.example")
    assert dnsbl({(name, "A"): ["127.0.0.2"]}, ip=ip).result == "listed"


def test_an_allowlist_listing_says_allowed():
    wl = {"zone": "wl.example", "action": "allow", "listed": ["127.0.10.0/24"]}
    r = dnsbl({("1.2.0.192.zen.example", "A"): ["127.0.0.2"],
               ("1.2.0.192.wl.example", "A"): ["127.0.10.2"]}, lists=(ZEN, wl))
    assert r.result == "allowed" and r.allowed and len(r.listings) == 2


def test_no_ip_lists_means_the_check_does_not_run():
    assert dnsbl({}, lists=()) is None
    assert dnsbl({}, lists=({"zone": "dbl.example", "kind": "domain"},)) is None


def test_domain_lists_ask_helo_mail_from_and_from_domains():
    cfg = config([{"zone": "dbl.example", "kind": "domain", "listed": ["127.0.1.2-127.0.1.99"]}])
    resolver = StaticResolver({("spam.example.dbl.example", "A"): ["127.0.1.2"]})
    facts = SessionFacts(IP, "mx.example.net", "bounce@ok.example")
    message = Message.parse(b"From: x <a@Spam.Example>\r\nSubject: s\r\n\r\nbody\r\n")
    context = MessageContext(facts, message, resolver, cfg, 1e12)
    check = DomainBlocklistCheck()
    result = run(check.evaluate(context, run(check.prepare(context)), {}))
    assert result.result == "listed"
    assert [(l.identity, l.queried) for l in result.listings] == [("from", "spam.example")]


def test_dnsbl_config_errors_name_the_key():
    with pytest.raises(ConfigError) as err:
        config([{"zone": "nodots"}, {"zone": "bl.example", "listed": ["127.0.0.x"]},
                {"zone": "bl.example", "action": "drop"},
                {"zone": "bl.example", "kind": "domain", "identities": ["rcpt"]}])
    text = str(err.value)
    for key in ("dnsbl.lists[0].zone", "dnsbl.lists[1].listed", "dnsbl.lists[2].action",
                "dnsbl.lists[3].identities"):
        assert key in text
