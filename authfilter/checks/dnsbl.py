"""DNS blocklists and allowlists (RFC 5782): is the client, or a domain of the message, listed?

A list is a DNS zone (``[[dnsbl.lists]]``).  An IP list is asked for the client address with
its octets reversed (``2.0.0.192.zen.spamhaus.org``; IPv6 as 32 reversed nibbles, RFC 5782
s. 2.4); a domain list (a DBL) for a domain under the zone (``example.com.dbl.example``).
An A answer inside the list's ``listed`` ranges is a listing; NXDOMAIN or no answer is not.
Anything else is an *error*, never a listing: an answer outside ``listed`` (Spamhaus answers
127.255.255.252-255 to a query it refuses, e.g. one from a public resolver), a timeout, a
SERVFAIL.  Errors are logged and counted; no mail is refused for them.

Two checks share this module:

* :class:`DnsblCheck` (``dnsbl``), a client check: the IP lists, asked as soon as the client is
  known, so that the answers are in by RCPT, where a listing is refused.
* :class:`DomainBlocklistCheck` (``dnsbl_domain``): the domain lists, over the HELO name, the
  MAIL FROM domain and the From domains (each list's ``identities``), asked at the end of the
  message, when the From domain is known, and decided there.

Each listing carries its list's ``action`` and ``weight``; :mod:`authfilter.policy` turns them
into the message's fate (``dnsbl.threshold`` adds weights up, postscreen's model).  RFC 8601
registers no Authentication-Results method for blocklists: they are in the log line, the
metrics, ``authfilter check`` and, for ``action = "tag"``, the header ``dnsbl.tag_header``.
"""
from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Iterable

from ..addresses import AddressError, author_addresses, normalize_domain
from ..config import Config, DnsblListConfig
from ..dns import NODATA, NXDOMAIN, OK, Resolver
from ..results import SessionFacts
from .base import ClientCheck, DependentCheck, MessageContext, summary_line

if TYPE_CHECKING:
    from ..results import IPAddress

MAX_FROM_DOMAINS = 5         # From domains asked per list (DMARC refuses more anyway)
_IPV6_SUFFIX = ".ip6.arpa"
_IPV4_SUFFIX = ".in-addr.arpa"


# -- the lists' answers ------------------------------------------------------------------------
def parse_address_ranges(values: Iterable[str]) -> tuple[tuple[int, int], ...]:
    """``["127.0.0.2", "127.0.0.4-127.0.0.11", "127.0.1.0/24"]`` -> IPv4 ranges as
    ``(first, last)`` integers; raises ValueError naming a bad entry."""
    ranges = []
    for value in values:
        try:
            if "-" in value:
                first, _, last = value.partition("-")
                lo = int(ipaddress.IPv4Address(first.strip()))
                hi = int(ipaddress.IPv4Address(last.strip()))
                if lo > hi:
                    raise ValueError
            elif "/" in value:
                net = ipaddress.IPv4Network(value.strip(), strict=False)
                lo, hi = int(net.network_address), int(net.broadcast_address)
            else:
                lo = hi = int(ipaddress.IPv4Address(value.strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address, range (A-B) or network") from None
        ranges.append((lo, hi))
    return tuple(ranges)


def ip_query_name(ip: "IPAddress", zone: str) -> str:
    """RFC 5782 s. 2.1 and 2.4: the address's reverse-DNS labels under ``zone``."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    suffix = _IPV4_SUFFIX if ip.version == 4 else _IPV6_SUFFIX
    return ip.reverse_pointer.removesuffix(suffix) + "." + zone.rstrip(".")


@dataclass(frozen=True, slots=True)
class Listing:
    """One list that names the client or a domain of the message."""

    list: str                       # the list's name (its zone unless named)
    identity: str                   # ip | helo | mail_from | from
    queried: str                    # the address or domain asked about
    answers: tuple[str, ...]
    action: str
    weight: float


@dataclass(frozen=True, slots=True)
class DnsblResult:
    """``result``: ``listed`` (on a blocklist), ``allowed`` (on an allowlist, action allow),
    ``error`` (some list could not answer, none lists the client) or ``none``."""

    result: str
    listings: tuple[Listing, ...] = ()
    errors: tuple[str, ...] = ()            # "zone: what went wrong"

    @property
    def score(self) -> float:
        return sum(listing.weight for listing in self.listings)

    @property
    def allowed(self) -> bool:
        return any(listing.action == "allow" for listing in self.listings)

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "score": self.score,
                "listings": [asdict(listing) for listing in self.listings],
                "errors": list(self.errors)}


def _result_of(listings: list[Listing], errors: list[str]) -> DnsblResult:
    if any(listing.action == "allow" for listing in listings):
        word = "allowed"
    elif listings:
        word = "listed"
    else:
        word = "error" if errors else "none"
    return DnsblResult(word, tuple(listings), tuple(errors))


async def _ask(resolver: Resolver, entry: DnsblListConfig, ranges: tuple[tuple[int, int], ...],
               identity: str, queried: str, name: str, deadline: float
               ) -> Listing | str | None:
    """A listing, an error text, or None (not listed)."""
    answer = await resolver.query(name, "A", deadline=deadline)
    if answer.status in (NXDOMAIN, NODATA):
        return None
    if answer.status != OK:
        return f"{entry.label}: {answer.reason or answer.status}"
    listed = tuple(a for a in answer.records if _in_ranges(a, ranges))
    if not listed:
        return (f"{entry.label}: answered {', '.join(answer.records)} for {queried}, not a "
                f"listing code (a refused query?)")
    return Listing(entry.label, identity, queried, listed, entry.action, entry.weight)


def _in_ranges(address: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    try:
        value = int(ipaddress.IPv4Address(address))
    except ValueError:
        return False
    return any(lo <= value <= hi for lo, hi in ranges)


async def _ask_all(resolver: Resolver, questions: list[tuple[DnsblListConfig, str, str, str]],
                   deadline: float) -> DnsblResult:
    """``questions``: (list, identity, what is asked about, query name), asked at once (from
    the cache, one after the other: no task per list)."""
    asks = [_ask(resolver, entry, _ranges(entry), identity, queried, name, deadline)
            for entry, identity, queried, name in questions]
    if all(resolver.peek(question[3], "A") is not None for question in questions):
        answers = [await ask for ask in asks]
    else:
        answers = await asyncio.gather(*asks)
    listings = [a for a in answers if isinstance(a, Listing)]
    errors = [a for a in answers if isinstance(a, str)]
    return _result_of(listings, errors)


def _ranges(entry: DnsblListConfig) -> tuple[tuple[int, int], ...]:
    return _RANGES.get(tuple(entry.listed)) or _RANGES.setdefault(
        tuple(entry.listed), parse_address_ranges(entry.listed))


_RANGES: dict[tuple[str, ...], tuple[tuple[int, int], ...]] = {}    # validated at config load


class _BlocklistCheck:
    """What both checks report the same way."""

    __slots__ = ()
    name: str
    section = "dnsbl"

    def temperror(self, reason: str, facts: SessionFacts) -> DnsblResult:
        return DnsblResult("error", errors=(reason,))

    def authres(self, result: DnsblResult, facts: SessionFacts) -> list[str]:
        return []                   # RFC 8601 registers no method for blocklists

    def summary(self, result: DnsblResult) -> list[str]:
        label = "DNSBL" if self.name == "dnsbl" else "DBL"
        lines = [summary_line(label, result.result,
                              f"{listing.list} {listing.identity} {listing.queried} -> "
                              f"{','.join(listing.answers)} ({listing.action})")
                 for listing in result.listings]
        lines += [summary_line(label, "error", error) for error in result.errors]
        return lines or [summary_line(label, result.result, "not listed")]

    def log_fields(self, result: DnsblResult) -> dict[str, Any]:
        fields: dict[str, Any] = {self.name: result.result}
        if result.listings:
            fields[f"{self.name}_listed"] = ",".join(
                f"{listing.list}:{listing.queried}" for listing in result.listings)
        return fields


class DnsblCheck(_BlocklistCheck, ClientCheck[DnsblResult]):
    """The IP lists, for a client whose address is known."""

    __slots__ = ()
    name = "dnsbl"

    def evaluate(self, facts: SessionFacts, resolver: Resolver, config: Config,
                 deadline: float) -> Awaitable[DnsblResult] | None:
        lists = [entry for entry in config.dnsbl.lists if entry.kind == "ip"]
        if not lists or facts.client_ip is None:
            return None
        ip = facts.client_ip
        return _ask_all(resolver, [(entry, "ip", str(ip), ip_query_name(ip, entry.zone))
                                   for entry in lists], deadline)


class DomainBlocklistCheck(_BlocklistCheck, DependentCheck[DnsblResult]):
    """The domain lists, over the HELO, MAIL FROM and From domains, at the end of the message.
    It requires no other check: all its work is in :meth:`prepare`, which starts with the
    DMARC policy discovery."""

    __slots__ = ()
    name = "dnsbl_domain"

    def prepare(self, context: MessageContext) -> Awaitable[DnsblResult] | None:
        lists = [entry for entry in context.config.dnsbl.lists if entry.kind == "domain"]
        if not lists:
            return None
        domains = _message_domains(context)
        questions = [(entry, identity, domain, f"{domain}.{entry.zone.rstrip('.')}")
                     for entry in lists for identity in entry.identities
                     for domain in domains.get(identity, ())]
        if not questions:
            return None
        return _ask_all(context.resolver, questions, context.deadline)

    def evaluate(self, context: MessageContext, prepared: DnsblResult | None,
                 results: Any) -> Awaitable[DnsblResult] | None:
        return None if prepared is None else _given(prepared)     # None: it did not run


async def _given(result: DnsblResult) -> DnsblResult:
    return result


def _message_domains(context: MessageContext) -> dict[str, tuple[str, ...]]:
    facts = context.facts
    found: dict[str, tuple[str, ...]] = {}
    mail_domain = facts.mail_from.rpartition("@")[2] if facts.mail_from else ""
    for identity, texts in (("helo", (facts.helo or "",)), ("mail_from", (mail_domain,)),
                            ("from", author_addresses(context.message.get_all(b"From")).domains)):
        names = []
        for text in texts[:MAX_FROM_DOMAINS]:
            try:
                if text and not text.startswith("["):       # an address literal is no domain
                    names.append(normalize_domain(text))
            except AddressError:
                pass
        found[identity] = tuple(dict.fromkeys(names))
    return found
