"""SPF (RFC 7208) on top of pyspf, with every DNS lookup made by our :class:`Resolver`.

pyspf is synchronous and asks its DNS through the module-global ``spf.DNSLookup``.  We replace
that function once, at import, with :func:`_pyspf_dns_lookup`, which never does I/O: it serves
answers from the current evaluation (found through a context variable, so concurrent checks in
one event loop or in several threads never see each other's state) or the resolver's cache, and
on a miss raises :class:`_NeedDNS`.  :func:`check_spf` then awaits the missing lookups and runs
the check again from the start ("restartable evaluation", docs/libraries.md s. 2.2 (b)).  With
a warm cache a check is one synchronous pass; a cold one takes one round per DNS dependency.

A pass runs on the event loop only while the records it has read stay small
(:data:`LOOP_PASS_TXT_BYTES`: every real record chain fits).  Records are the sender's to make
big: nine includes of ~40 KB took 135-650 ms of parsing per message, during which every other
session of the worker waited.  Such an evaluation goes on in a thread of its own, whose lookups
the event loop answers (:meth:`_Evaluation.lookup`), so the loop serves other sessions meanwhile
(Python hands the loop the interpreter at least every 5 ms).

The processing limits of RFC 7208 s. 4.6.4 are pyspf's (10 DNS-querying terms, 2 void lookups,
10 MX / PTR names), with two of its readings corrected in :class:`_Query`: void lookups are
counted per term, and an ``mx`` term with more than 10 names fails only if it has to look past
the tenth.

The engine runs :class:`SpfCheck` and :class:`HeloSpfCheck` (envelope checks,
:mod:`authfilter.checks.base`), started at MAIL FROM.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Awaitable

import spf as pyspf

from ..authres import comment, property_value
from ..config import Config
from ..dns import OK, TEMPERROR, DnsAnswer, Resolver
from ..results import SessionFacts, SpfResult, ip_text
from .base import EnvelopeCheck, summary_line

# Evaluation passes per check.  A strict evaluation needs at most about 25: the record, 10
# DNS terms (an MX or PTR answer's addresses are fetched with it), an exp= per record, %{p}.
MAX_ROUNDS = 40
RESULTS = frozenset({"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"})
_ERROR_PREFIXES = ("SPF Permanent Error: ", "SPF Temporary Error: ")

DnsKey = tuple[str, str]    # (name as pyspf asks it, record type)

# SPF record text one pass on the event loop may read (about 3 ms of pyspf parsing); past it
# the evaluation goes on in a thread.  The biggest real chains are a few KB.
LOOP_PASS_TXT_BYTES = 8 * 1024
# Evaluations in threads at once, per worker; more wait for a thread (within their deadline).
SPF_THREADS = 4
_threads = concurrent.futures.ThreadPoolExecutor(SPF_THREADS, thread_name_prefix="authfilter-spf")


class _NeedDNS(Exception):
    """Raised inside pyspf when an answer is not known yet; the check is re-run once it is."""


class _TooBigForTheLoop(Exception):
    """Raised inside pyspf when a pass on the event loop has read more record text than
    :data:`LOOP_PASS_TXT_BYTES`; the check goes on in a thread."""


@dataclass(slots=True)
class _Evaluation:
    """The DNS answers one check has used so far, and the ones it still needs.

    On the event loop a missing answer ends the pass (:class:`_NeedDNS`).  In a thread
    (``loop`` set) a missing answer is asked of the loop, and the thread waits for it: the
    resolver and its cache are only ever used from the loop's thread.
    """

    resolver: Resolver
    address_type: str                                   # "A" or "AAAA": the client's family
    end: float                                          # time.monotonic() deadline
    answers: dict[DnsKey, DnsAnswer] = field(default_factory=dict)
    missing: set[DnsKey] = field(default_factory=set)
    loop: asyncio.AbstractEventLoop | None = None       # set while a thread runs the pass
    txt_bytes: int = 0                                  # record text read by this pass
    too_big: bool = False

    def lookup(self, name: str, qtype: str) -> list:
        key = (name, qtype)         # pyspf gives names lower-case without the final dot
        answer = self.answers.get(key)
        if answer is None and self.loop is not None:
            answer = self._ask_the_loop(key)
        elif answer is None:
            answer = self.resolver.peek(*key)
            if answer is None:
                # pyspf swallows every exception while fetching an exp= text, so the miss is
                # also recorded here: check_spf re-runs whenever anything was missing.
                self.missing.add(key)
                raise _NeedDNS(key)
            self.answers[key] = answer      # one evaluation sees one answer per question
        if self.loop is None and answer.rdtype == "TXT" and answer.ok:
            self.txt_bytes += sum(map(len, answer.records))
            if self.txt_bytes > LOOP_PASS_TXT_BYTES:
                self.too_big = True         # recorded too: pyspf may swallow the exception
                raise _TooBigForTheLoop(key)
        return _pyspf_records(answer)

    def _ask_the_loop(self, key: DnsKey) -> DnsAnswer:
        """The answer for ``key``, fetched by the event loop while this thread waits."""
        remaining = self.end - time.monotonic()
        if remaining > 0:
            asking = asyncio.run_coroutine_threadsafe(self._fetch(key), self.loop)
            try:
                asking.result(remaining)
                return self.answers[key]
            except concurrent.futures.TimeoutError:
                asking.cancel()
        raise pyspf.TempError("SPF time limit reached")

    async def fetch_missing(self) -> None:
        keys, self.missing = self.missing, set()
        await asyncio.gather(*(self._fetch(key) for key in keys))

    async def _fetch(self, key: DnsKey) -> None:
        answer = await self.resolver.query(*key, deadline=self.end)
        self.answers[key] = answer
        # pyspf's next pass will ask for the addresses of these names one by one; asking
        # for them all now saves a round each (the same queries pyspf itself would make).
        hosts = _names_needing_addresses(answer)
        await asyncio.gather(*(self._fetch((host, self.address_type)) for host in hosts
                               if (host, self.address_type) not in self.answers))


def _names_needing_addresses(answer: DnsAnswer) -> list[str]:
    """Host names whose addresses pyspf looks up after this answer (RFC 7208 s. 4.6.4)."""
    if not answer.ok:
        return []
    if answer.rdtype == "MX":       # the first 10 by preference: the only ones checked
        return [host for _, host in sorted(answer.records)[:pyspf.MAX_MX] if host]
    if answer.rdtype == "PTR":
        return [host for host in answer.records[:pyspf.MAX_PTR] if host]
    return []


def _pyspf_records(answer: DnsAnswer) -> list:
    """A :class:`DnsAnswer` in the shape pyspf's own dnspython lookup returns.

    ``[((owner, type), value), ...]``: TXT values are tuples of ``bytes`` (pyspf joins an RR's
    strings itself, ours are joined already), MX ``(preference, host)``, others strings.  A
    CNAME is given as one ``(alias, "CNAME") -> canonical`` entry so pyspf follows it from the
    records that come with it.  NXDOMAIN/NODATA give ``[]`` (a void lookup for pyspf); so does a
    name that cannot be asked (dns ``permerror``), as pyspf does for malformed names itself.
    """
    if answer.status == TEMPERROR:
        raise pyspf.TempError(answer.reason or f"DNS error looking up {answer.name} {answer.rdtype}")
    if answer.status != OK:
        return []
    owner = answer.canonical_name or answer.name
    records = [((answer.name, "CNAME"), owner)] if owner != answer.name else []
    if answer.rdtype == "TXT":
        records.extend(((owner, "TXT"), (text,)) for text in answer.records)
    else:
        records.extend(((owner, answer.rdtype), value) for value in answer.records)
    return records


_current: ContextVar[_Evaluation | None] = ContextVar("authfilter_spf_evaluation", default=None)


def _pyspf_dns_lookup(name: str, qtype: str, strict: bool = True, timeout: float | None = None) -> list:
    """Replacement for ``spf.DNSLookup``: answers for the evaluation running in this context."""
    evaluation = _current.get()
    if evaluation is None:      # pyspf used outside check_spf: it must not open a socket
        raise pyspf.TempError("pyspf DNS is only available inside authfilter.checks.spf.check_spf")
    return evaluation.lookup(name, qtype)


pyspf.DNSLookup = _pyspf_dns_lookup


MAX_MACRO_STRING = 1024       # characters of a term, domain-spec or exp= text pyspf is given
_LONG_LITERAL_LABEL = re.compile(r"[^.%]{64}")      # macros never shorten literal text


def _bounded(text: str, what: str) -> None:
    if len(text) > MAX_MACRO_STRING:
        raise pyspf.PermError(f"{what} longer than {MAX_MACRO_STRING} characters", text[:80])


class _MxAddresses(list):
    """The addresses of an MX answer's first :data:`pyspf.MAX_MX` names; ``more_names``: the
    answer has more names than that, which the ``mx`` term may not look up."""

    __slots__ = ("more_names",)


class _Query(pyspf.query):
    """pyspf's query with these RFC corrections.

    * The local-part and domain are the ones we split off (at the last ``@``, so a quoted
      local-part may contain ``@``; RFC 5321 s. 4.1.2), not pyspf's first-``@`` split.
    * RFC 7208 s. 5.5: "If a DNS error occurs while doing an A RR lookup, then that domain name
      is skipped and the search continues."  pyspf lets the error end the check as temperror.
      (This also applies to the ``%{p}`` macro, RFC 7208 s. 7.3.)
    * Void lookups are counted per term.  RFC 7208 s. 4.6.4 limits "the number of 'terms' for
      which DNS queries return either a positive answer (RCODE 0) with an answer count of 0, or
      a 'Name Error' (RCODE 3) answer": what counts is the lookup a term makes for its own
      domain-spec (``a``, ``mx``, ``ptr``, ``exists``, ``include``, ``redirect``), once.  The
      address lookups of the names an ``mx`` or ``ptr`` term goes on to check, and every lookup
      of the ``%{p}`` macro (not a term), are not void lookups.  pyspf counts every empty
      answer, so a ``ptr`` whose PTR names do not resolve exceeded the limit (permerror).
    * An ``mx`` term with more than 10 names.  RFC 7208 s. 4.6.4: "the evaluation of each 'MX'
      record MUST NOT result in querying more than 10 address records ... If this limit is
      exceeded, the 'mx' mechanism MUST produce a 'permerror' result."  The limit is on the
      lookups made: the names are checked in preference order, a match among the first 10
      matches, and only a term that would have to look up an 11th name is permerror (the 11th
      lookup is never made).  pyspf gives permerror as soon as the answer has 11 names.

    And two bounds on what pyspf's regular expressions are given, since the record comes from
    whoever owns the sender's domain and pyspf runs on the event loop: its domain-end test
    (``RE_TOPLAB``) takes time quadratic in the length of a label that is not the last (a 20 KB
    ``a:x.<label>.com`` took 10 s), and its macro scan (``RE_CHAR``) quadratic in a run of
    ``%{`` without ``}``; and its CIDR parsing lets ``int()`` raise ValueError past 4300
    digits (an "internal error", so a temperror on every retry).  A domain-spec with a literal
    label over 63 characters is permerror (no DNS name can come of it; RFC 7208 leaves the
    result open, its test suite accepts ``fail`` or ``permerror``: invalid-domain-long), and so
    is a term, domain-spec or explanation over :data:`MAX_MACRO_STRING` characters, a
    processing limit (RFC 7208 s. 4.6.4) no real record comes near: a domain name has at most
    253.
    """

    def __init__(self, ip: str, local: str, domain: str, helo: str, receiver: str,
                 querytime: float) -> None:
        super().__init__(i=ip, s=f"{local}@{domain}", h=helo, receiver=receiver or None,
                         strict=True, querytime=querytime)
        self.l, self.o, self.d = local, domain, domain
        self._in_macro = False

    def validate_mechanism(self, mech: str) -> tuple:
        """pyspf's parse of a mechanism term, within the bounds above."""
        _bounded(mech, "term")
        return super().validate_mechanism(mech)

    def expand_domain(self, arg: str) -> str:
        """pyspf's domain-spec check and expansion, within the bounds above."""
        _bounded(arg, "domain-spec")
        if _LONG_LITERAL_LABEL.search(arg):
            raise pyspf.PermError("Invalid domain found (a label longer than 63 characters)",
                                  arg[:80])
        return super().expand_domain(arg)

    def expand(self, s: str, stripdot: bool = True) -> str:
        """pyspf's macro expansion (domain-specs and exp= texts), within the bounds above."""
        _bounded(s, "macro-string")
        return super().expand(s, stripdot)

    def dns(self, name: str, qtype: str, cnames: dict | None = None,
            ignore_void: bool = False) -> list:
        """pyspf's lookup; no empty answer to the ``%{p}`` macro is a void lookup."""
        return super().dns(name, qtype, cnames, ignore_void or self._in_macro)

    def getp(self) -> str:
        """The ``%{p}`` macro (RFC 7208 s. 7.3): its lookups belong to no term."""
        self._in_macro = True
        try:
            return super().getp()
        finally:
            self._in_macro = False

    def dns_mx(self, domainname: str) -> _MxAddresses:
        """The ``mx`` term's addresses: those of its first 10 names by preference."""
        names = sorted(self.dns(domainname, "MX"))
        addresses = _MxAddresses(address for _, host in names[:pyspf.MAX_MX]
                                 for address in self._addresses(host))
        addresses.more_names = len(names) > pyspf.MAX_MX
        return addresses

    def cidrmatch(self, ipaddrs: list, n: int) -> bool:
        """pyspf's match; an ``mx`` term with more than 10 names that none of the first 10
        matches is permerror, since going on would take an 11th address lookup."""
        if super().cidrmatch(ipaddrs, n):
            return True
        if isinstance(ipaddrs, _MxAddresses) and ipaddrs.more_names:
            raise pyspf.PermError(f"More than {pyspf.MAX_MX} MX records returned and none of the "
                                  f"first {pyspf.MAX_MX} matches (RFC 7208 s. 4.6.4)")
        return False

    def validated_ptrs(self) -> list[str]:
        return [name for name in self.dns_ptr(self.i)[:pyspf.MAX_PTR] if self._has_client_address(name)]

    def _has_client_address(self, name: str) -> bool:
        try:
            return self.cidrmatch(self._addresses(name), self.cidrmax)
        except pyspf.TempError:
            return False

    def _addresses(self, host: str) -> list:
        """The addresses of a name an ``mx`` or ``ptr`` term checks: not a void lookup."""
        return self.dns(host, self.A, ignore_void=True) if host else []


@dataclass(frozen=True, slots=True)
class _Identity:
    """What one check is about (RFC 7208 s. 2.3, 2.4, 4.3), or why it cannot be checked."""

    kind: str                   # "mailfrom" | "helo"
    local: str
    domain: str | None
    problem: str | None = None  # set when the result is "none" without looking anything up

    @property
    def sender(self) -> str | None:
        return f"{self.local}@{self.domain}" if self.domain else None


def _domain_problem(domain: str) -> str | None:
    """Why ``domain`` cannot be checked, or None (RFC 7208 s. 4.3: malformed or not
    multi-label -> "none"; s. 2.3: an address literal is not checked)."""
    if domain.startswith("["):
        return "is an address literal"
    labels = domain.split(".")
    if len(labels) < 2:
        return "is not a fully qualified domain name"
    if any(not 0 < len(label) < 64 for label in labels) or len(domain) > 253:
        return "is not a valid domain name"
    if labels[-1].isdigit():
        return "is an IP address, not a domain name"
    return None


def _choose_identity(facts: SessionFacts, identity: str) -> _Identity:
    if identity not in ("mailfrom", "helo"):
        raise ValueError(f"identity must be 'mailfrom' or 'helo', not {identity!r}")
    if identity == "mailfrom" and facts.mail_from:
        local, at, domain = facts.mail_from.rpartition("@")
        if not at:
            domain = facts.mail_from
        # RFC 7208 s. 4.3: a sender without a local-part is checked as postmaster@domain
        kind, local, what = "mailfrom", local or "postmaster", "MAIL FROM domain"
    elif facts.helo:     # the HELO identity, also for the null sender (RFC 7208 s. 2.4)
        kind, local, domain, what = "helo", "postmaster", facts.helo, "HELO name"
    else:
        return _Identity("helo", "postmaster", None, "no MAIL FROM and no HELO/EHLO name to check")
    domain = domain.removesuffix(".")
    problem = _domain_problem(domain)
    return _Identity(kind, local, domain,
                     f"{what} {domain!r} {problem} (RFC 7208 s. 4.3)" if problem else None)


def _client_address(facts: SessionFacts) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client address, an IPv4-mapped IPv6 address as the IPv4 address (RFC 7208 s. 5)."""
    ip = facts.client_ip
    assert ip is not None           # check_spf answers none for an unknown client first
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def check_spf(facts: SessionFacts, resolver: Resolver, *, identity: str = "mailfrom",
                    deadline: float | None = None, timeout: float = 15.0,
                    receiver: str = "") -> SpfResult:
    """RFC 7208 check_host() for the MAIL FROM identity (the HELO identity for the null
    sender) or, with ``identity="helo"``, for the HELO identity.

    ``deadline`` is an absolute ``time.monotonic()`` value; ``timeout`` caps the check's own
    duration.  Whatever goes wrong, the answer is an :class:`SpfResult` (``temperror`` with a
    reason for anything unexpected), never an exception.
    """
    chosen = _choose_identity(facts, identity)
    if chosen.problem:
        return _result(chosen, "none", chosen.problem)
    if facts.client_ip is None:     # check_host()'s <ip> (RFC 7208 s. 4.1): nothing to judge
        return _result(chosen, "none", "the client's address is unknown")
    end = time.monotonic() + timeout
    if deadline is not None:
        end = min(end, deadline)
    try:
        return await _evaluate(chosen, facts, resolver, end, receiver)
    except Exception as exc:        # a pyspf bug or a malformed answer must not escape
        return _result(chosen, "temperror", f"internal error in SPF check: {type(exc).__name__}: {exc}")


async def _evaluate(identity: _Identity, facts: SessionFacts, resolver: Resolver, end: float,
                    receiver: str) -> SpfResult:
    ip = _client_address(facts)
    memo_key = ("spf", ip_text(ip), identity.local, identity.domain, facts.helo or "", receiver)
    remembered = resolver.recall(memo_key)
    if remembered is not None:
        return remembered  # type: ignore[return-value]
    evaluation = _Evaluation(resolver, "A" if ip.version == 4 else "AAAA", end)
    query_args = (ip_text(ip), identity.local, identity.domain, facts.helo or "", receiver)
    for _ in range(MAX_ROUNDS):
        remaining = end - time.monotonic()
        if remaining <= 0:
            return _result(identity, "temperror", "SPF time limit reached")
        outcome = _run_pass(evaluation, query_args, remaining)
        if evaluation.too_big:
            evaluation.loop = asyncio.get_running_loop()
            outcome = await evaluation.loop.run_in_executor(_threads, _run_pass, evaluation,
                                                            query_args, remaining)
        elif evaluation.missing:
            try:
                async with asyncio.timeout(remaining):
                    await evaluation.fetch_missing()
            except TimeoutError:
                return _result(identity, "temperror", "SPF time limit reached")
            continue
        result = _from_pyspf(identity, *outcome)
        if result.result != "temperror":
            # valid while every answer it was computed from stays in the DNS cache
            resolver.remember(memo_key, result, evaluation.answers)
        return result
    return _result(identity, "temperror", f"SPF evaluation needed more than {MAX_ROUNDS} rounds of DNS")


def _run_pass(evaluation: _Evaluation, query_args: tuple, remaining: float) -> tuple | None:
    """One pyspf evaluation with ``evaluation``'s answers (None: it stopped at a missing
    answer or at the loop's size budget)."""
    evaluation.txt_bytes = 0
    token = _current.set(evaluation)
    try:
        return _Query(*query_args, querytime=remaining).check()
    except (_NeedDNS, _TooBigForTheLoop):
        return None
    finally:
        _current.reset(token)


def _from_pyspf(identity: _Identity, result: str, code: int, explanation: str) -> SpfResult:
    if result not in RESULTS:
        return _result(identity, "temperror", f"unexpected pyspf result {result!r}")
    for prefix in _ERROR_PREFIXES:
        explanation = explanation.removeprefix(prefix)
    if result == "none" and not explanation:
        explanation = f"no SPF record for {identity.domain}"
    return _result(identity, result, explanation)


def _result(identity: _Identity, result: str, reason: str) -> SpfResult:
    domain = identity.domain.lower() if identity.domain else None
    return SpfResult(result, identity.kind, domain, identity.sender, _printable(reason))


def _printable(text: str) -> str:
    """``text`` with anything but printable ASCII escaped: an exp= explanation comes from the
    sender's DNS and may end up in an SMTP reply or a header comment."""
    return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text)


# -- the checks, as the engine runs them -------------------------------------------------------
class SpfCheck(EnvelopeCheck[SpfResult]):
    """The MAIL FROM identity (the HELO identity for the null sender, RFC 7208 s. 2.4)."""

    __slots__ = ()
    name = "spf"
    section = "spf"
    identity = "mailfrom"

    def evaluate(self, facts: SessionFacts, resolver: Resolver, config: Config,
                 deadline: float) -> Awaitable[SpfResult] | None:
        return check_spf(facts, resolver, identity=self.identity, deadline=deadline,
                         timeout=self.settings(config).timeout)

    def temperror(self, reason: str, facts: SessionFacts) -> SpfResult:
        return _result(_choose_identity(facts, self.identity), "temperror", reason)

    def authres(self, result: SpfResult, facts: SessionFacts) -> list[str]:
        # The comment names the client the check judged (the real one, from XFORWARD).
        note = f"client {facts.client_text}" + (f": {result.reason}" if result.reason else "")
        out = f"spf={result.result}{comment(note)}"
        if result.identity == "helo":
            return [out + (f" smtp.helo={property_value(result.domain)}" if result.domain else "")]
        if result.domain:
            out += f" smtp.mailfrom={property_value(result.sender or result.domain)}"
        return [out]

    def summary(self, result: SpfResult) -> list[str]:
        return [summary_line("SPF", result.result, f"{result.identity} {result.domain or '-'}",
                             result.reason)]


class HeloSpfCheck(SpfCheck):
    """The HELO identity as well, reported as a separate result (``[spf] helo_check``); not
    for the null sender, whose MAIL FROM check is already a HELO check."""

    __slots__ = ()
    name = "helo_spf"
    identity = "helo"

    def evaluate(self, facts: SessionFacts, resolver: Resolver, config: Config,
                 deadline: float) -> Awaitable[SpfResult] | None:
        if not (self.settings(config).helo_check and facts.helo and facts.mail_from):
            return None
        return super().evaluate(facts, resolver, config, deadline)

    def metric_keys(self, result: SpfResult) -> list[tuple[str, str]]:
        return [("spf_helo", result.result)]
