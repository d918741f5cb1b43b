"""``authfilter doctor IP``: how receivers see a sending address: its reverse DNS (iprev,
RFC 8601 s. 3) and every DNS blocklist of the config (``[[dnsbl.lists]]`` of kind ip).

The checks are the filter's own (:mod:`authfilter.checks.iprev`, :mod:`authfilter.checks.dnsbl`),
through the same resolver, so an answer outside a list's ``listed`` codes (a public resolver
refused by the list) shows here as it would in the log.
"""
from __future__ import annotations

import ipaddress
import time

from ..checks.dnsbl import DnsblCheck
from ..checks.iprev import check_iprev
from ..results import SessionFacts
from .doctor import DEADLINE, Finding, Findings


async def diagnose_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, resolver,
                      config) -> list[Finding]:
    deadline = time.monotonic() + DEADLINE
    facts = SessionFacts(ip)
    findings = Findings()
    rev = await check_iprev(facts, resolver, max_names=config.iprev.max_names, deadline=deadline)
    if rev.result == "pass":
        findings.ok("iprev", f"{ip} has reverse DNS {rev.name}, which maps back to it")
    elif rev.result == "temperror":
        findings.fail("iprev", f"the reverse DNS of {ip} could not be read: {rev.reason}",
                      "check the nameserver, or the delegation of the reverse zone")
    else:
        findings.warn("iprev", f"iprev={rev.result} for {ip}: {rev.reason}",
                      "publish a PTR record naming a host whose A/AAAA record is this address "
                      "(many receivers refuse mail from addresses without one)")
    lists = [entry for entry in config.dnsbl.lists if entry.kind == "ip"]
    if not lists:
        findings.warn("dnsbl", "no DNS blocklists are configured ([[dnsbl.lists]] with kind = "
                               "\"ip\"), so none was asked")
        return findings.items
    result = await DnsblCheck().evaluate(facts, resolver, config, deadline)
    for listing in result.listings:
        if listing.action == "allow":
            findings.ok("dnsbl", f"{ip} is on the allowlist {listing.list} "
                                 f"({', '.join(listing.answers)})")
        else:
            findings.fail("dnsbl", f"{ip} is listed by {listing.list} "
                                   f"({', '.join(listing.answers)}; action {listing.action})",
                          f"see the list operator's lookup page for {listing.list} for why, "
                          f"and how to be delisted")
    for error in result.errors:
        findings.warn("dnsbl", error, "many lists refuse queries from public resolvers: use a "
                                      "local recursive resolver (dns.nameservers), or the list's "
                                      "data-feed key")
    named = {listing.list for listing in result.listings} | {e.split(":")[0] for e in result.errors}
    for entry in lists:
        if entry.label not in named:
            findings.ok("dnsbl", f"{ip} is not listed by {entry.label}")
    return findings.items
