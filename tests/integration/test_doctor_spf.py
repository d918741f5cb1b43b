"""The doctor's SPF walk: term syntax, and lookup counts checked against checkdmarc's."""
from __future__ import annotations

import asyncio
import time

import pytest

from authfilter.commands.doctor import FAIL, Findings, SpfWalk, domain_spec_problem, spf_records


@pytest.mark.parametrize("spec, ok", [
    ("example.com", True), ("_spf.example.com.", True), ("%{i}._spf.example.com", True),
    ("%{ir}.%{v}._spf.%{d2}", True), ("%{l1r-}.example.com", True), ("x.%%.example.com", True),
    ("", False), ("example", False), ("%{q}.example.com", False), ("50%.example.com", False),
    ("example.123", False), ("ex ample.com", False),
])
def test_domain_spec_syntax(spec, ok):
    """RFC 7208 s. 7.1: macro-string domain-end; the top label must not be all digits."""
    assert (domain_spec_problem(spec) is None) is ok


def test_spf_records_are_selected_by_exact_version():
    """RFC 7208 s. 4.5: "v=spf1" then a space or the end; case-insensitive (RFC 5234 strings)."""
    assert spf_records([b"v=spf1 -all", b"V=SPF1", b"v=spf10 -all", b"v=spf1-all", b"spf2.0/pra"]) \
        == ["v=spf1 -all", "V=SPF1"]


def walk(resolver, domain: str) -> tuple[SpfWalk, Findings]:
    findings = Findings()
    spf = SpfWalk(resolver, time.monotonic() + 10, findings)

    async def go():
        answer = await resolver.query(domain, "TXT")
        await spf.record(domain, spf_records(answer.records)[0], (domain,))
    asyncio.run(go())
    return spf, findings


TREES = {
    "include and mx": {
        "example.com": "v=spf1 include:_spf.example.net mx a:mail.example.com -all",
        "_spf.example.net": "v=spf1 ip4:192.0.2.0/24 include:_spf2.example.net ~all",
        "_spf2.example.net": "v=spf1 ip6:2001:db8::/32 -all",
    },
    "twelve a terms": {"example.com": "v=spf1 " + " ".join(f"a:h{i}.example.com" for i in range(12))
                                      + " -all"},
    "void lookups": {"example.com": "v=spf1 a:gone1.example.com mx:gone2.example.com "
                                    "include:_spf.example.net -all",
                     "_spf.example.net": "v=spf1 a:gone3.example.com -all"},
    "redirect": {"example.com": "v=spf1 ip4:192.0.2.1 redirect=_spf.example.net",
                 "_spf.example.net": "v=spf1 mx:example.com a -all"},
}


@pytest.mark.parametrize("tree", TREES, ids=list(TREES))
def test_counts_agree_with_checkdmarc(zone, resolver, tree):
    """checkdmarc is the reference most domain owners use; our counts must be the same."""
    import dns.nameserver
    checkdmarc_spf = pytest.importorskip("checkdmarc.spf")
    from checkdmarc.utils import DNS_CACHE
    DNS_CACHE.clear()        # its cache is global and ignores the nameserver: other tests' zones
    for name, record in TREES[tree].items():
        zone.add(name, "TXT", record)
    zone.add("example.com", "MX", "10 mail.example.com")
    zone.add("mail.example.com", "A", "192.0.2.25")
    for i in range(12):
        zone.add(f"h{i}.example.com", "A", "192.0.2.2")
    ours, findings = walk(resolver, "example.com")
    host, port = zone.address.split(":")
    theirs = checkdmarc_spf.parse_spf_record(
        TREES[tree]["example.com"], "example.com", ignore_too_many_lookups=True,
        nameservers=[dns.nameserver.Do53Nameserver(host, int(port))], timeout=1.0, retries=0) \
        if tree != "void lookups" else None
    if theirs is not None:
        assert (ours.lookups, ours.void) == (theirs["dns_lookups"], theirs["void_dns_lookups"])
        assert not [f for f in findings.items if f.level == FAIL]
    else:
        # checkdmarc raises as soon as a third void lookup is seen; we count them all.
        with pytest.raises(checkdmarc_spf.SPFTooManyVoidDNSLookups, match="3/2"):
            checkdmarc_spf.parse_spf_record(
                TREES[tree]["example.com"], "example.com",
                nameservers=[dns.nameserver.Do53Nameserver(host, int(port))], timeout=1.0, retries=0)
        assert (ours.lookups, ours.void) == (4, 3)
