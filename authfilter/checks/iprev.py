"""iprev (RFC 8601 s. 3): does the client's reverse DNS name map back to its address?

The PTR records of the client address are looked up, then the addresses (A for an IPv4
client, AAAA for IPv6) of each name found, at most ``iprev.max_names`` of them, all at once.
The result words are RFC 8601 s. 2.7.3's:

* ``pass``: a name's addresses include the client's;
* ``fail``: names were found, and none maps back (their lookups gave other addresses, or none);
* ``temperror``: the PTR lookup, or a forward lookup that could have given the pass, failed
  for now (SERVFAIL, timeout);
* ``permerror``: no PTR data are published for the address (NXDOMAIN or no answer).

It is a client check (:class:`~.base.ClientCheck`): it starts when the front-end knows the
client, so its two rounds of DNS are usually done by RCPT, where the policy's ``[iprev]`` rules
may refuse.  Reported as ``iprev=pass policy.iprev=192.0.2.1 (mail.example.org)``: the
``policy.iprev`` property is the one IANA registers for the method (RFC 8601 s. 2.7.3).
"""
from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any, Awaitable

from ..authres import comment
from ..config import Config
from ..dns import NODATA, NXDOMAIN, OK, TEMPERROR, Resolver
from ..results import SessionFacts, ip_text
from .base import ClientCheck, summary_line


@dataclass(frozen=True, slots=True)
class IprevResult:
    result: str                     # pass fail temperror permerror
    ip: str
    names: tuple[str, ...] = ()     # the PTR names looked up
    name: str | None = None         # the name that maps back (pass)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = list(self.names)
        return d


async def check_iprev(facts: SessionFacts, resolver: Resolver, *, max_names: int = 10,
                      deadline: float | None = None) -> IprevResult:
    ip = facts.client_ip
    assert ip is not None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    text = ip_text(ip)
    ptr = await resolver.query(ip.reverse_pointer, "PTR", deadline=deadline)
    if ptr.status in (NXDOMAIN, NODATA):
        return IprevResult("permerror", text, reason="no PTR record")
    if ptr.status != OK:
        word = "temperror" if ptr.status == TEMPERROR else "permerror"
        return IprevResult(word, text, reason=f"PTR lookup: {ptr.reason or ptr.status}")
    names = tuple(dict.fromkeys(str(n) for n in ptr.records))[:max_names]
    rdtype = "A" if ip.version == 4 else "AAAA"
    answers = await _addresses(resolver, names, rdtype, deadline)
    for name, answer in zip(names, answers):
        if answer.status == OK and any(_same(a, ip) for a in answer.records):
            return IprevResult("pass", text, names, name)
    failed = [n for n, a in zip(names, answers) if a.status == TEMPERROR]
    if failed:
        return IprevResult("temperror", text, names,
                           reason=f"{rdtype} lookup of {failed[0]} failed")
    return IprevResult("fail", text, names, reason=f"no name maps back to {text}")


async def _addresses(resolver: Resolver, names: tuple[str, ...], rdtype: str,
                     deadline: float | None) -> list:
    """The answers for ``names``, concurrently; from the cache (a returning client) one after
    the other, which costs no task per name."""
    if all(resolver.peek(n, rdtype) is not None for n in names):
        return [await resolver.query(n, rdtype, deadline=deadline) for n in names]
    return await asyncio.gather(*(resolver.query(n, rdtype, deadline=deadline) for n in names))


def _same(address: str, ip) -> bool:
    try:
        return type(ip)(address) == ip
    except ValueError:
        return False


class IprevCheck(ClientCheck[IprevResult]):
    """Runs for every inbound client whose address is known, unless ``[iprev] enabled`` is
    false."""

    __slots__ = ()
    name = "iprev"
    section = "iprev"

    def evaluate(self, facts: SessionFacts, resolver: Resolver, config: Config,
                 deadline: float) -> Awaitable[IprevResult] | None:
        settings = self.settings(config)
        if not settings.enabled or facts.client_ip is None:
            return None
        return check_iprev(facts, resolver, max_names=settings.max_names, deadline=deadline)

    def temperror(self, reason: str, facts: SessionFacts) -> IprevResult:
        return IprevResult("temperror", facts.client_text, reason=reason)

    def authres(self, result: IprevResult, facts: SessionFacts) -> list[str]:
        note = result.name if result.result == "pass" else result.reason
        return [f"iprev={result.result}{comment(note)} policy.iprev={result.ip}"]

    def summary(self, result: IprevResult) -> list[str]:
        details = result.name or (", ".join(result.names) if result.names else "-")
        return [summary_line("iprev", result.result, f"{result.ip} {details}", result.reason)]

    def log_fields(self, result: IprevResult) -> dict[str, Any]:
        return {"iprev": result.result}
