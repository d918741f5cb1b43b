"""DMARC evaluation: RFC 9989 (DNS Tree Walk), or for compatibility RFC 7489 (Public Suffix List)
with the ``np`` tag RFC 9091 added to it.

Two steps, so the engine can run the DNS part beside DKIM:

* :func:`discover_policy` parses the From header field and finds the policy record for each
  Author Domain, its Organizational Domain and, when ``np`` matters, whether the domain exists;
* :func:`evaluate_dmarc` checks identifier alignment of the SPF and DKIM passes and applies the
  policy (``t=y`` in RFC 9989, ``pct`` sampling in RFC 7489).

:class:`DmarcCheck` is the two as the engine runs them (a dependent check requiring SPF and
DKIM, :mod:`authfilter.checks.base`).

Decisions (the RFC leaves them to the receiver or is silent):

* **From problems are ``permerror``, never a silent skip.**  RFC 9989 s. 4.2, 4.4 and 5.3.1 put
  messages without exactly one well-formed From field outside DMARC; ``none`` would claim "no
  policy published", so the registered word for an unrecoverable error (s. 9.2) is used, with
  the reason: no From field, several From fields (RFC 5322 s. 3.6 allows one), a syntax error
  (see :mod:`authfilter.addresses`), no mailbox at all (empty value or empty group), an address
  literal, or more than :data:`MAX_AUTHOR_DOMAINS` distinct domains (s. 11.5 asks for a limit).
  Policy should treat these like a failure: they are the classic DMARC bypass.
* **Several mailboxes in one From field**: one domain is simply that Author Domain.  Different
  domains are each evaluated, as s. 11.5 recommends, and the strictest outcome is reported:
  ``fail`` (by disposition) > ``temperror`` > ``permerror`` > ``none`` > ``pass``, so the message
  passes only if every Author Domain passes.
* **DNS failures are ``temperror``** at any step that decides the outcome (s. 5.3.6): the walk
  never moves past a timed-out or SERVFAIL name to a record higher up.  A failure while only
  finding the Organizational Domain (after the Author Domain's own record was found) matters
  only when relaxed alignment actually needs it.
* **An aligned identifier that could not be checked is ``temperror``, not ``fail``** (RFC 7489
  s. 6.6.2, kept by RFC 9989 s. 5.3.6; see :func:`_aligned_temperror`): with no aligned pass,
  a DKIM signature whose ``d=`` would be aligned, or an aligned SPF identifier, whose result is
  ``temperror`` makes the result ``temperror``, with the policy the record asks for, so that
  local policy can tempfail (the sender retries) instead of refusing good mail for a DNS
  hiccup.  An unaligned identifier could not have given a pass: its ``temperror`` leaves
  ``fail``.
* **Policy Domain** (s. 4.10.1): the Author Domain's record with ``p``; else the record of its
  Organizational Domain, else of its Public Suffix Domain (``psd=y``), with ``sp`` for an existing
  subdomain and ``np`` for a non-existent one.  Records between the Author Domain and the
  Organizational Domain are not policy records (s. 4.7 ``sp``: "ignored ... due to the effect of
  the DMARC Policy Discovery"; example in Appendix B.4.2).
* **Non-existent** means NXDOMAIN (s. 3.2.13, RFC 8020).  It is looked up only when ``np``
  differs from the subdomain policy; a TXT answer other than NXDOMAIN at ``_dmarc.<domain>``
  already proves existence.  The query asks for type CNAME so that a CNAME to a missing target
  still counts as existing (RFC 6604: the rcode describes the end of the chain).  RFC 7489
  mode keeps RFC 9091's definition (s. 2.7): NXDOMAIN or NODATA for A, AAAA and MX, asked
  together, only when ``np`` matters.
* **SPF identifier** (s. 3.2.4, 4.4.2): only the MAIL FROM identity, which for the null sender
  is the HELO domain (RFC 7208 s. 2.4).  Pass the MAIL FROM check's result, never the separately
  labelled HELO check.  Only SPF ``pass`` and DKIM ``pass`` count (a DKIM ``policy`` result,
  e.g. an ``l=`` signature with appended content, does not).
* **Relaxed alignment** compares Organizational Domains found by Tree Walks (s. 4.10.2), done
  only for identifiers at or below the Author Domain's Organizational Domain (an
  Organizational Domain is always an ancestor-or-self of its domain, so nothing else can align).
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Awaitable, Callable, Iterable, Mapping, NamedTuple, Sequence

from publicsuffixlist import PublicSuffixList

from ..addresses import AddressError, AuthorAddresses, author_addresses, normalize_domain
from ..authres import comment, property_value
from ..dmarcrecord import MODES, DmarcRecord, RecordError, select_record
from ..dns import NODATA, OK, TEMPERROR, Resolver
from ..message import Message
from ..results import DkimResult, DmarcResult, SessionFacts, SpfResult
from .base import DependentCheck, MessageContext, summary_line

MAX_AUTHOR_DOMAINS = 4          # distinct From domains evaluated (RFC 9989 s. 11.5)
MAX_TREE_WALK_LABELS = 7        # after the first query the walk continues from at most 7 labels

_NEXT_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_STRICTNESS = {"none": 0, "quarantine": 1, "reject": 2}
_RESULT_RANK = {"pass": 0, "none": 1, "permerror": 2, "temperror": 3, "fail": 4}


# -- discovery results (picklable: the engine may run discovery in another process) ------------
@dataclass(frozen=True, slots=True)
class RecordLookup:
    """The ``_dmarc`` TXT lookup for one domain."""

    domain: str
    outcome: str                        # "record" | "absent" | "multiple" | "error"
    record: DmarcRecord | None = None
    dns_status: str = OK
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class TreeWalk:
    """The lookups of one DNS Tree Walk (RFC 9989 s. 4.10), longest name first."""

    start: str
    steps: tuple[RecordLookup, ...]

    @property
    def error(self) -> str | None:
        last = self.steps[-1]
        return last.reason if last.outcome == "error" else None

    @property
    def organizational_domain(self) -> str | None:
        """RFC 9989 s. 4.10.2 selection; ``None`` when a DNS failure cut the walk short."""
        if self.error:
            return None
        for step in self.steps:
            if step.record is None:
                continue
            if step.record.psd == "n":
                return step.domain
            if step.record.psd == "y" and step.domain != self.start:
                return _one_label_below(self.start, step.domain)
        found = [s.domain for s in self.steps if s.record is not None]
        return found[-1] if found else self.start


@dataclass(frozen=True, slots=True)
class DomainPolicy:
    """What discovery found for one Author Domain."""

    author_domain: str
    outcome: str | None = None          # none/temperror/permerror decided; None: a record applies
    reason: str | None = None
    record: DmarcRecord | None = None
    policy_domain: str | None = None
    relation: str = "self"              # "self" (Author = Policy Domain), "subdomain", "nonexistent"
    org_domain: str | None = None
    org_error: str | None = None        # why org_domain is unknown


@dataclass(frozen=True, slots=True)
class PolicyDiscovery:
    mode: str
    policies: tuple[DomainPolicy, ...] = ()
    from_error: str | None = None       # the From header field rules DMARC out: permerror
    from_domains: tuple[str, ...] = ()


# -- discovery ----------------------------------------------------------------------------------
async def discover_policy(message: Message, resolver: Resolver, *, mode: str = "rfc9989",
                          deadline: float | None = None) -> PolicyDiscovery:
    """From parsing and policy record discovery; needs no SPF or DKIM result."""
    if mode not in MODES:
        raise ValueError(f"unknown DMARC mode {mode!r}")
    authors = author_addresses(message.get_all(b"From"))
    problem = from_problem(authors)
    if problem:
        return PolicyDiscovery(mode, from_error=problem, from_domains=authors.domains)
    discover = _discover_rfc9989 if mode == "rfc9989" else _discover_rfc7489
    policies = await _all([discover(d, resolver, deadline) for d in authors.domains])
    return PolicyDiscovery(mode, tuple(policies), from_domains=authors.domains)


def from_problem(authors: AuthorAddresses) -> str | None:
    """Why the From header field(s) cannot give Author Domains, or ``None``."""
    if authors.field_count == 0:
        return "no From header field (RFC 5322 s. 3.6 requires one)"
    if authors.field_count > 1:
        named = ", ".join(authors.domains) or "no parsable domain"
        return f"multiple From header fields ({authors.field_count}: {named})"
    if authors.problems:
        return f"From header field: {authors.problems[0]}"
    if not authors.mailboxes:
        return "From header field has no address"
    if len(authors.domains) > MAX_AUTHOR_DOMAINS:
        return (f"From header field names {len(authors.domains)} domains; at most "
                f"{MAX_AUTHOR_DOMAINS} are evaluated (RFC 9989 s. 11.5)")
    return None


def tree_walk_targets(domain: str) -> list[str]:
    """RFC 9989 s. 4.10 steps 1-7: the domain, then its ancestors; from a domain of eight or more
    labels the walk jumps to its last seven, so there are never more than eight queries."""
    labels = domain.split(".")
    rest = labels[1:] if len(labels) <= MAX_TREE_WALK_LABELS else labels[-MAX_TREE_WALK_LABELS:]
    return [domain] + [".".join(rest[i:]) for i in range(len(rest))]


async def tree_walk(domain: str, resolver: Resolver, *, deadline: float | None = None) -> TreeWalk:
    """Walk up from ``domain`` until a record with ``psd=y``/``psd=n``, the top or a DNS failure.

    A walk without a DNS failure is kept while every answer it read stays cached, so the next
    message from the same domain costs one dict lookup."""
    memo_key = ("dmarc-walk", domain)
    remembered = resolver.recall(memo_key)
    if remembered is not None:
        return remembered  # type: ignore[return-value]
    steps: list[RecordLookup] = []
    for target in tree_walk_targets(domain):
        step = await lookup_record(target, resolver, mode="rfc9989", deadline=deadline)
        if step.outcome == "error" and "." not in target and any(s.record for s in steps):
            # Local choice: once a record has been found below it, a TLD whose _dmarc lookup
            # fails is taken as publishing nothing.  It could only matter if the TLD published
            # a record without psd=y (making the whole TLD one organization), and a lame TLD
            # server must not turn every relaxed-alignment check into temperror.
            step = RecordLookup(target, "absent", dns_status=step.dns_status,
                                reason=f"{step.reason} (taken as no record at a TLD)")
        steps.append(step)
        if step.outcome == "error" or (step.record is not None and step.record.psd in ("y", "n")):
            break
    walk = TreeWalk(domain, tuple(steps))
    if walk.error is None:
        resolver.remember(memo_key, walk, [(f"_dmarc.{s.domain}", "TXT") for s in steps])
    return walk


async def lookup_record(domain: str, resolver: Resolver, *, mode: str,
                        deadline: float | None = None) -> RecordLookup:
    name = f"_dmarc.{domain}"
    answer = await resolver.query(name, "TXT", deadline=deadline)
    if answer.status == TEMPERROR:
        return RecordLookup(domain, "error", dns_status=answer.status,
                            reason=f"DNS error looking up {name}: {answer.reason}")
    if answer.status != OK:             # NXDOMAIN, NODATA, or a name DNS cannot hold
        return RecordLookup(domain, "absent", dns_status=answer.status)
    selected = _select_record(answer.records, mode)
    if selected is None:
        return RecordLookup(domain, "absent", dns_status=answer.status)
    if isinstance(selected, RecordError):
        return RecordLookup(domain, "multiple", dns_status=answer.status,
                            reason=f"{name}: {selected.reason}")
    return RecordLookup(domain, "record", selected, answer.status)


async def _discover_rfc9989(author: str, resolver: Resolver,
                            deadline: float | None) -> DomainPolicy:
    """RFC 9989 s. 4.10.1: one walk from the Author Domain serves policy and org domain."""
    walk = await tree_walk(author, resolver, deadline=deadline)
    first = walk.steps[0]
    if first.record is not None:
        return _applies(author, first.record, author, "self", walk.organizational_domain,
                        walk.error)
    if walk.error:
        return DomainPolicy(author, "temperror", f"{walk.error}; the walk does not skip it")
    org = walk.organizational_domain
    chosen = next((s for s in walk.steps if s.domain == org and s.record is not None), None) \
        or next((s for s in walk.steps if s.record is not None and s.record.psd == "y"), None)
    if chosen is None:
        return DomainPolicy(author, "none", _no_record_reason(author, walk.steps), org_domain=org)
    return await _subdomain_policy(author, "rfc9989", chosen, first, org, resolver, deadline)


async def _discover_rfc7489(author: str, resolver: Resolver,
                            deadline: float | None) -> DomainPolicy:
    """RFC 7489 s. 6.6.3: ``_dmarc.<From domain>``, then ``_dmarc.<org domain>`` (PSL, s. 3.2);
    with RFC 9091's ``np`` for a non-existent subdomain."""
    org = psl_organizational_domain(author)
    steps = [await lookup_record(author, resolver, mode="rfc7489", deadline=deadline)]
    if steps[0].outcome == "absent" and org != author:
        steps.append(await lookup_record(org, resolver, mode="rfc7489", deadline=deadline))
    last = steps[-1]
    if last.outcome == "error":
        return DomainPolicy(author, "temperror", last.reason, org_domain=org)
    if last.outcome == "record" and last.domain == author:
        return _applies(author, last.record, author, "self", org, None)
    if last.outcome == "record":
        return await _subdomain_policy(author, "rfc7489", last, steps[0], org, resolver, deadline)
    return DomainPolicy(author, "none", _no_record_reason(author, steps), org_domain=org)


async def _subdomain_policy(author: str, mode: str, found: RecordLookup, own: RecordLookup,
                            org: str | None, resolver: Resolver,
                            deadline: float | None) -> DomainPolicy:
    """The record ``found`` above the Author Domain applies with ``sp`` to an existing
    subdomain and ``np`` to a non-existent one; ``own`` is the Author Domain's own ``_dmarc``
    lookup.  Existence is looked up only when ``np`` makes a difference."""
    relation = "subdomain"
    if found.record.needs_existence_check:
        exists, error = await _domain_exists(author, mode, own, resolver, deadline)
        if error:
            return DomainPolicy(author, "temperror", error, found.record, found.domain,
                                org_domain=org)
        relation = "subdomain" if exists else "nonexistent"
    return _applies(author, found.record, found.domain, relation, org, None)


def _applies(author: str, record: DmarcRecord, policy_domain: str, relation: str,
             org: str | None, org_error: str | None) -> DomainPolicy:
    if record.policy_error:
        return DomainPolicy(author, "permerror",
                            f"DMARC record at _dmarc.{policy_domain}: {record.policy_error}",
                            record, policy_domain, relation, org, org_error)
    return DomainPolicy(author, None, None, record, policy_domain, relation, org, org_error)


def _no_record_reason(author: str, steps: Sequence[RecordLookup]) -> str:
    notes = "; ".join(s.reason for s in steps if s.outcome == "multiple")
    text = f"no DMARC policy record for {author}"
    return f"{text} ({notes})" if notes else text


# What tells a mode that a domain exists: the queries asked, and the answers that prove it.
_EXISTENCE = {
    "rfc9989": (("CNAME",), (OK, NODATA)),
    "rfc7489": (("A", "AAAA", "MX"), (OK,)),
}


async def _domain_exists(domain: str, mode: str, dmarc_lookup: RecordLookup, resolver: Resolver,
                         deadline: float | None) -> tuple[bool, str | None]:
    """Whether ``domain`` exists, or the DNS error that leaves it unknown.

    RFC 9989 s. 3.2.13: it exists unless a query for it gives NXDOMAIN (RFC 8020), so an
    answer other than NXDOMAIN at ``_dmarc.<domain>`` already proves it.  RFC 9091 s. 2.7 (the
    definition RFC 7489 mode keeps): "a non-existent domain is a domain for which there is an
    NXDOMAIN or NODATA response for A, AAAA, and MX records"; the three are asked together.
    """
    if mode == "rfc9989" and dmarc_lookup.dns_status in (OK, NODATA):
        return True, None
    rdtypes, proof = _EXISTENCE[mode]
    answers = await _all([resolver.query(domain, t, deadline=deadline) for t in rdtypes])
    if any(a.status in proof for a in answers):
        return True, None
    failed = next((a for a in answers if a.status == TEMPERROR), None)
    if failed is not None:
        return False, f"DNS error checking whether {domain} exists: {failed.reason}"
    return False, None          # NXDOMAIN/NODATA, or a name DNS cannot hold


@lru_cache(maxsize=4096)
def _select_record(txt_records: tuple, mode: str) -> DmarcRecord | RecordError | None:
    """Parsed once per distinct answer: cached DNS answers are the same tuple of bytes."""
    return select_record(txt_records, mode=mode)


async def _all(coroutines: list) -> list:
    """:func:`asyncio.gather` without its task overhead for the usual single item."""
    if len(coroutines) == 1:
        return [await coroutines[0]]
    return await asyncio.gather(*coroutines)


@lru_cache(maxsize=1)
def _public_suffix_list() -> PublicSuffixList:
    return PublicSuffixList()


def psl_organizational_domain(domain: str) -> str:
    """RFC 7489 s. 3.2: the registered domain per the Public Suffix List (a suffix is its own)."""
    return _public_suffix_list().privatesuffix(domain) or domain


def _one_label_below(start: str, ancestor: str) -> str:
    keep = ancestor.count(".") + 2
    return ".".join(start.split(".")[-keep:])


# -- evaluation ---------------------------------------------------------------------------------
async def evaluate_dmarc(discovery: PolicyDiscovery, spf: SpfResult, dkim: Sequence[DkimResult],
                         resolver: Resolver, *, deadline: float | None = None,
                         sample: Callable[[], float] = random.random) -> DmarcResult:
    """Identifier alignment and policy; ``sample`` draws in [0, 1) for RFC 7489 ``pct``."""
    if discovery.from_error:
        first = discovery.from_domains[0] if discovery.from_domains else None
        return DmarcResult("permerror", first, reason=discovery.from_error, author_error=True)
    spf_domain = _spf_identifier(spf)
    dkim_domains = tuple(dict.fromkeys(d for d in map(_dkim_identifier, dkim) if d))
    unchecked = _unchecked_identifiers(spf, dkim)
    results = await _all([
        _evaluate_domain(p, discovery.mode, spf_domain, dkim_domains, unchecked, resolver,
                         deadline, sample)
        for p in discovery.policies])
    return results[0] if len(results) == 1 else _strictest(results)


def _spf_identifier(spf: SpfResult) -> str | None:
    """The SPF-Authenticated Identifier: a passed MAIL FROM identity (RFC 9989 s. 4.4.2)."""
    if spf.result != "pass" or spf.identity not in ("mailfrom", "helo"):
        return None
    return _normalized(spf.domain)


def _dkim_identifier(result: DkimResult) -> str | None:
    return _normalized(result.domain) if result.result == "pass" else None


def _normalized(domain: str | None) -> str | None:
    if not domain:
        return None
    try:
        return normalize_domain(domain)
    except AddressError:
        return None


class _Unchecked(NamedTuple):
    """An identifier whose check ended in ``temperror``: a later attempt might pass."""

    method: str             # "SPF" | "DKIM"
    domain: str
    what: str               # which identifier, and why it could not be checked


def _unchecked_identifiers(spf: SpfResult, dkim: Sequence[DkimResult]) -> tuple[_Unchecked, ...]:
    """The identifiers whose check ended in ``temperror``: the SPF one (the MAIL FROM identity,
    the HELO identity for the null sender, as for a pass) and each DKIM signature's ``d=``."""
    found = [_Unchecked("DKIM", d, f"DKIM d={d} s={sig.selector} could not be checked: "
                                   f"{sig.reason or 'temperror'}")
             for sig in dkim if sig.result == "temperror" and (d := _normalized(sig.domain))]
    if spf.result == "temperror" and spf.identity in ("mailfrom", "helo") \
            and (d := _normalized(spf.domain)):
        found.insert(0, _Unchecked("SPF", d, f"SPF {spf.identity} {d} could not be checked: "
                                             f"{spf.reason or 'temperror'}"))
    return tuple(found)


async def _evaluate_domain(policy: DomainPolicy, mode: str, spf_domain: str | None,
                           dkim_domains: tuple[str, ...], unchecked: tuple[_Unchecked, ...],
                           resolver: Resolver, deadline: float | None,
                           sample: Callable[[], float]) -> DmarcResult:
    author = policy.author_domain
    base = DmarcResult(policy.outcome or "none", author, policy.policy_domain, policy.org_domain,
                       record=dict(policy.record.tags) if policy.record else None,
                       reason=policy.reason)
    if policy.outcome is not None:
        return base
    record = policy.record
    checked = [(spf_domain, record.aspf)] + [(d, record.adkim) for d in dkim_domains]
    exact = spf_domain == author or author in dkim_domains
    matches = {} if exact else await _relaxed_matches(policy, mode, _to_walk(checked, author),
                                                      resolver, deadline)
    spf_aligned = spf_domain is not None and \
        _alignment(spf_domain, author, record.aspf, matches) is True
    dkim_aligned = any(_alignment(d, author, record.adkim, matches) is True for d in dkim_domains)
    chosen = record.policy_for(policy.relation)
    if spf_aligned or dkim_aligned:
        which = [n for n, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned)) if ok]
        return dataclasses.replace(base, result="pass", policy=chosen, spf_aligned=spf_aligned,
                                   dkim_aligned=dkim_aligned, testing=record.testing,
                                   reason=f"aligned {' and '.join(which)} pass")
    error = next((m for m in matches.values() if isinstance(m, str)), None) or \
        await _aligned_temperror(policy, mode, unchecked, matches, resolver, deadline)
    if error:
        return dataclasses.replace(base, result="temperror", policy=chosen,
                                   testing=record.testing, reason=error)
    disposition, testing = _disposition(record, chosen, mode, sample)
    return dataclasses.replace(base, result="fail", policy=chosen, disposition=disposition,
                               testing=testing,
                               reason=_fail_reason(record, spf_domain, dkim_domains))


def _alignment(domain: str, author: str, mode_tag: str,
               matches: Mapping[str, bool | str]) -> bool | str:
    """Is ``domain`` aligned with the Author Domain (RFC 9989 s. 4.4: strict is an exact match,
    relaxed ``r`` also the same Organizational Domain, as ``matches`` says)?  A string is the
    DNS error that leaves it unknown."""
    if domain == author:
        return True
    return matches.get(domain, False) if mode_tag == "r" else False


def _to_walk(identifiers: Iterable[tuple[str | None, str]], author: str) -> set[str]:
    """The domains whose relaxed alignment needs their Organizational Domain."""
    return {d for d, mode_tag in identifiers if d and d != author and mode_tag == "r"}


async def _aligned_temperror(policy: DomainPolicy, mode: str, unchecked: tuple[_Unchecked, ...],
                             matches: Mapping[str, bool | str], resolver: Resolver,
                             deadline: float | None) -> str | None:
    """Why the result is ``temperror`` rather than ``fail``, or None.

    RFC 7489 s. 6.6.2: "If neither passes and one or both of them fail due to a temporary
    error, the Receiver evaluating the message is unable to conclude that the DMARC mechanism
    had a permanent failure; they therefore cannot apply the advertised DMARC policy."  RFC
    9989 s. 5.3.6 keeps it ("If one or more DNS queries required to perform DMARC validation
    ... do not complete due to temporary ... DNS errors, the message cannot be considered to
    pass or fail").  Only an identifier that would be aligned counts: an unaligned one could
    not give a pass, so its temperror leaves a ``fail``.  Called only when nothing passed in
    alignment, so the Tree Walks it may need cost the passing messages nothing.
    """
    if not unchecked:
        return None
    record, author = policy.record, policy.author_domain
    tagged = [(u, record.aspf if u.method == "SPF" else record.adkim) for u in unchecked]
    if all(u.domain != author for u in unchecked):
        missing = _to_walk(((u.domain, tag) for u, tag in tagged), author) - matches.keys()
        if missing:
            matches = {**matches,
                       **await _relaxed_matches(policy, mode, missing, resolver, deadline)}
    for u, tag in tagged:
        aligned = _alignment(u.domain, author, tag, matches)
        if aligned is True:
            return f"no aligned pass, and the aligned {u.what}"
        if isinstance(aligned, str):
            return f"no aligned pass, and the {u.what}; whether it aligns is unknown: {aligned}"
    return None


async def _relaxed_matches(policy: DomainPolicy, mode: str, domains: set[str],
                           resolver: Resolver, deadline: float | None) -> dict[str, bool | str]:
    """For each identifier: same Organizational Domain as the Author Domain (True/False), or
    the DNS error that prevents knowing."""
    author, org = policy.author_domain, policy.org_domain
    if mode == "rfc7489":
        return {d: psl_organizational_domain(d) == org for d in domains}
    out: dict[str, bool | str] = {}
    to_walk = []
    for d in sorted(domains):
        if org is None:     # the author's walk failed: only unrelated names are decidable
            out[d] = policy.org_error if _same_top_label(d, author) else False
        elif d == org:
            out[d] = True
        elif d.endswith("." + org):
            to_walk.append(d)
        else:
            out[d] = False
    walks = await _all([tree_walk(d, resolver, deadline=deadline) for d in to_walk]) \
        if to_walk else []
    for walk in walks:
        out[walk.start] = walk.error or walk.organizational_domain == org
    return out


def _same_top_label(a: str, b: str) -> bool:
    return a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


def _disposition(record: DmarcRecord, policy: str, mode: str,
                 sample: Callable[[], float]) -> tuple[str, bool]:
    """What a receiver honouring the record applies to a failing message.

    RFC 9989 s. 4.7 ``t=y``: one level below the policy.  RFC 7489 s. 6.6.4: ``pct`` percent of
    failing messages get the policy, the rest the next less strict one.
    """
    if mode == "rfc9989":
        return (_NEXT_LOWER[policy], True) if record.testing else (policy, False)
    if policy == "none" or record.pct >= 100:
        return policy, False
    sampled_out = record.pct == 0 or sample() * 100 >= record.pct
    return (_NEXT_LOWER[policy], True) if sampled_out else (policy, False)


def _fail_reason(record: DmarcRecord, spf_domain: str | None, dkim_domains: tuple[str, ...]) -> str:
    if not spf_domain and not dkim_domains:
        return "no SPF or DKIM pass"
    seen = []
    if spf_domain:
        seen.append(f"SPF {spf_domain} (aspf={record.aspf})")
    seen.extend(f"DKIM d={d} (adkim={record.adkim})" for d in dkim_domains)
    return "no aligned identifier: " + ", ".join(seen)


def _strictest(results: Sequence[DmarcResult]) -> DmarcResult:
    """RFC 9989 s. 11.5: the strictest outcome over all Author Domains."""
    worst = max(results, key=lambda r: (_RESULT_RANK[r.result], _STRICTNESS[r.disposition],
                                        _STRICTNESS[r.policy]))
    summary = ", ".join(f"{r.from_domain}={r.result}" for r in results)
    return dataclasses.replace(worst, reason=f"{len(results)} author domains ({summary}); "
                                             f"strictest: {worst.reason}")


# -- the check, as the engine runs it ----------------------------------------------------------
class DmarcCheck(DependentCheck[DmarcResult]):
    """Policy discovery at end of data, beside the DKIM key fetch; then alignment of the SPF and
    DKIM passes with the policy found."""

    __slots__ = ()
    name = "dmarc"
    section = "dmarc"
    requires = ("spf", "dkim")

    def prepare(self, context: MessageContext) -> Awaitable[PolicyDiscovery]:
        return discover_policy(context.message, context.resolver,
                               mode=self.settings(context.config).mode, deadline=context.deadline)

    def evaluate(self, context: MessageContext, prepared: PolicyDiscovery,
                 results: Mapping[str, Any]) -> Awaitable[DmarcResult]:
        return evaluate_dmarc(prepared, results["spf"], results["dkim"], context.resolver,
                              deadline=context.deadline)

    def temperror(self, reason: str, facts: SessionFacts) -> DmarcResult:
        return DmarcResult("temperror", None, reason=reason)

    def authres(self, result: DmarcResult, facts: SessionFacts) -> list[str]:
        m = result
        note = f"p={m.policy} dis={m.disposition.upper()}" + (" t=y" if m.testing else "")
        if m.reason and m.result != "pass":
            note += f"; {m.reason}"
        s = f"dmarc={m.result}{comment(note)}"
        if m.from_domain:
            s += f" header.from={property_value(m.from_domain)}"
        # The policy and disposition go in the comment, as OpenDMARC writes them, not as a
        # policy.dmarc= property: common scripts read every "dmarc=" token as a result word.
        return [s]

    def summary(self, result: DmarcResult) -> list[str]:
        m = result
        return [summary_line("DMARC", m.result, f"from={m.from_domain or '-'} policy={m.policy} "
                                                f"disposition={m.disposition}", m.reason)]

    def log_fields(self, result: DmarcResult) -> dict[str, Any]:
        return {"dmarc": result.result, "dmarc_policy": result.policy,
                "dmarc_disposition": result.disposition, "from_domain": result.from_domain}
