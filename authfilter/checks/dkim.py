"""DKIM verification of every DKIM-Signature of a message (RFC 6376, 8301, 8463, 8616).

Split in two so the CPU part can run in a worker process:

* :func:`key_names` says which key records to fetch; the engine fetches them with the resolver.
* :func:`verify_signatures` is pure: message + fetched answers + settings + the time -> one
  :class:`DkimResult` per signature.  No I/O; arguments and results pickle.
* :func:`verify_dkim` does both for callers that have a resolver at hand.
* :class:`DkimCheck` is the first two as the engine runs them (a content check,
  :mod:`authfilter.checks.base`).

Result words (RFC 8601 section 2.7.1) and when we give them:

``pass``       body hash and signature verify, key acceptable.
``fail``       body hash or signature does not verify; the body is shorter than l=; x= has
               passed; a=rsa-sha1 (RFC 8301 section 3.1; the reason says whether it would have
               verified).
``policy``     verified, but l= leaves appended content unsigned (``[dkim] partial_body``
               chooses; default policy); or not verified because it is over
               ``[dkim] max_signatures`` (one summary result stands for all of those, so the
               Authentication-Results header stays bounded).
``temperror``  the key lookup timed out or got SERVFAIL, or the key was not fetched in time.
``permerror``  signature syntax or semantics (section 3.5, 6.1.1), t= in the future, no key
               (NXDOMAIN/NODATA), revoked key, unusable or ambiguous key record, key that does
               not allow the signature (k=, h=, s=, t=s), RSA key under ``min_rsa_bits``
               (RFC 8301 section 3.2).

``neutral`` is not produced: RFC 6376 maps every outcome to SUCCESS, PERMFAIL or TEMPFAIL.
"""
from __future__ import annotations

import asyncio
import time
from typing import Collection, Container, Mapping

from .. import dkimcore
from ..authres import comment, property_value
from ..config import Config, DkimConfig
from ..dkimcore import BodyHashes, DkimKey, DkimSyntaxError, HeaderIndex, KeyRecordError, Signature
from ..dns import NODATA, NXDOMAIN, OK, TEMPERROR, DnsAnswer, Resolver
from ..message import Message
from ..results import DkimResult, SessionFacts
from .base import ContentCheck, summary_line

SIGNATURE_FIELD = b"dkim-signature"
# Seconds of clock difference tolerated for t= (not in the future) and x= (not yet expired).
CLOCK_SKEW = 900


def signature_fields(message: Message) -> list[tuple[int, tuple[bytes, bytes]]]:
    """Every DKIM-Signature field with its position in the header, top (newest) first."""
    return [(i, message.headers[i]) for i in message.positions.get(SIGNATURE_FIELD, ())]


def key_names(message: Message, max_signatures: int) -> list[str]:
    """Distinct key record names of the first ``max_signatures`` signatures that parse."""
    names: list[str] = []
    for _, (_, value) in signature_fields(message)[:max_signatures]:
        try:
            name = dkimcore.parse_signature(value).key_name
        except DkimSyntaxError:
            continue
        if name not in names:
            names.append(name)
    return names


def verify_signatures(message: Message, keys: Mapping[str, DnsAnswer], settings: DkimConfig,
                      now: float, bodies: BodyHashes | None = None) -> tuple[DkimResult, ...]:
    """One result per DKIM-Signature (top first), at most ``max_signatures`` + 1 results.
    ``bodies``: the message's body hashes when ARC validation shares them."""
    fields = signature_fields(message)
    if not fields:
        return ()
    index = HeaderIndex.of(message)
    bodies = bodies or BodyHashes(message.body)
    results = [_verify_one(position, field, index, bodies, keys, settings, now)
               for position, field in fields[:settings.max_signatures]]
    skipped = fields[settings.max_signatures:]
    if skipped:
        results.append(_over_limit(skipped, settings.max_signatures))
    return tuple(results)


async def verify_dkim(message: Message, resolver: Resolver, settings: DkimConfig, *,
                      deadline: float | None = None, now: float | None = None
                      ) -> tuple[DkimResult, ...]:
    """Fetch the keys concurrently, then verify every signature."""
    names = key_names(message, settings.max_signatures)
    answers = await asyncio.gather(*(resolver.query(n, "TXT", deadline=deadline) for n in names))
    return verify_signatures(message, dict(zip(names, answers)), settings,
                             time.time() if now is None else now)


# -- one signature -----------------------------------------------------------------------------
def _verify_one(position: int, field: tuple[bytes, bytes], index: HeaderIndex, bodies: BodyHashes,
                keys: Mapping[str, DnsAnswer], settings: DkimConfig, now: float) -> DkimResult:
    try:
        sig = dkimcore.parse_signature(field[1], dkimcore.DKIM)
    except DkimSyntaxError as exc:
        try:
            tags = dkimcore.parse_tag_list(field[1])
        except DkimSyntaxError:
            return DkimResult("permerror", None, None, None, reason=f"signature syntax: {exc}")
        return _partial_result("permerror", tags, str(exc))

    def result(word: str, reason: str | None, key: DkimKey | None = None) -> DkimResult:
        return DkimResult(word, sig.domain, sig.selector, sig.algorithm, sig.identity,
                          sig.header_b, key.bits if key else None, reason)

    if sig.timestamp is not None and sig.timestamp > now + CLOCK_SKEW:
        return result("permerror", f"t= is {int(sig.timestamp - now)} s in the future")
    if sig.expiration is not None and sig.expiration + CLOCK_SKEW < now:
        return result("fail", f"signature expired {int(now - sig.expiration)} s ago (x=)")
    try:
        key = usable_key(keys.get(sig.key_name), sig.key_name)
    except KeyUnavailable as exc:
        return result(exc.result, exc.reason)
    problem = dkimcore.check_key(key, sig, settings.min_rsa_bits)
    if problem:
        return result("permerror", problem, key)

    failure = check_hashes(sig, field, index, bodies, key, hidden=(position,))
    if sig.algorithm == "rsa-sha1":                # RFC 8301 section 3.1
        return result("fail", "rsa-sha1 not acceptable (RFC 8301)"
                      + ("" if failure is None else f"; also {failure}"), key)
    if failure is not None:
        return result("fail", failure, key)
    unsigned = bodies.length(sig.body_canon) - sig.length if sig.length is not None else 0
    notes = []
    if unsigned > 0:                                # section 8.2: content appended after l=
        notes.append(f"l={sig.length} leaves {unsigned} bytes of the body unsigned")
    if key.testing:
        notes.append("key in testing mode (t=y)")
    return result(settings.partial_body if unsigned > 0 else "pass", "; ".join(notes) or None, key)


def check_hashes(sig: Signature, field: tuple[bytes, bytes], index: HeaderIndex,
                 bodies: BodyHashes, key: DkimKey, hidden: Container[int]) -> str | None:
    """Verify body hash and signature; None when both match, else why not.

    ``hidden``: header positions that h= may not select (see :meth:`HeaderIndex.select`).
    Shared with ARC-Message-Signature validation (RFC 8617 section 5.2 step 4)."""
    if sig.length is not None and sig.length > bodies.length(sig.body_canon):
        return (f"body is shorter than l={sig.length} "
                f"({bodies.length(sig.body_canon)} bytes): content was removed")
    if bodies.hash(sig.body_canon, sig.hash_name, sig.length) != sig.body_hash:
        return "body hash mismatch (body changed)"
    data = dkimcore.header_hash_input(index.select(sig.signed_headers, hidden), field,
                                      sig.header_canon)
    if not dkimcore.verify_digest(key, sig.hash_name, dkimcore.digest(data, sig.hash_name),
                                  sig.signature):
        return "signature did not verify"
    return None


class KeyUnavailable(Exception):
    """No usable key: ``result`` is temperror or permerror, ``reason`` says why."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


def usable_key(answer: DnsAnswer | None, name: str) -> DkimKey:
    """The key from the TXT answer at ``name`` (section 6.1.2), or :class:`KeyUnavailable`:
    temperror for DNS trouble or a lookup that was not made, permerror for no key, a revoked
    key or an unusable record.  Shared with ARC validation."""
    if answer is None:
        raise KeyUnavailable("temperror", f"key {name} was not looked up in time")
    if answer.status == TEMPERROR:
        raise KeyUnavailable("temperror", f"key lookup {name}: {answer.reason or 'temporary DNS failure'}")
    if answer.status in (NXDOMAIN, NODATA):
        raise KeyUnavailable("permerror", f"no key at {name} ({answer.status})")
    if answer.status != OK:
        raise KeyUnavailable("permerror", f"key lookup {name}: {answer.reason}")
    try:
        return dkimcore.select_key_record(answer.records)
    except KeyRecordError as exc:
        raise KeyUnavailable("permerror", f"{exc} at {name}") from None


def _partial_result(word: str, tags: dict[str, str], reason: str) -> DkimResult:
    """A result for a signature we did not verify, with what its tags tell."""
    domain = tags.get("d")
    return DkimResult(word, domain.lower() if domain else None, tags.get("s"),
                      tags["a"].lower() if "a" in tags else None,
                      header_b=dkimcore.strip_whitespace(tags["b"])[:8] if "b" in tags else None,
                      reason=reason)


def _over_limit(skipped: list[tuple[int, tuple[bytes, bytes]]], limit: int) -> DkimResult:
    """One ``policy`` result standing for every signature past the limit (RFC 6376 section 6.1
    lets verifiers limit the signatures they check)."""
    try:
        tags = dkimcore.parse_tag_list(skipped[0][1][1])
    except DkimSyntaxError:
        tags = {}
    more = f"; {len(skipped) - 1} more not verified either" if len(skipped) > 1 else ""
    return _partial_result("policy", tags, f"not verified: over the limit of {limit} signatures{more}")


# -- the check, as the engine runs it ----------------------------------------------------------
DkimResults = tuple[DkimResult, ...]


class DkimCheck(ContentCheck[DkimResults]):
    """One result per DKIM-Signature, top first; none for an unsigned message."""

    __slots__ = ()
    name = "dkim"
    section = "dkim"

    def dns_names(self, message: Message, config: Config) -> Collection[str]:
        return key_names(message, self.settings(config).max_signatures)

    def verify(self, message: Message, keys: Mapping[str, DnsAnswer], config: Config, now: float,
               bodies: BodyHashes) -> DkimResults:
        return verify_signatures(message, keys, self.settings(config), now, bodies)

    def temperror(self, reason: str, facts: SessionFacts) -> DkimResults:
        return (DkimResult("temperror", None, None, None, reason=reason),)

    def authres(self, results: DkimResults, facts: SessionFacts) -> list[str]:
        if not results:
            return ["dkim=none"]
        entries = []
        for d in results:
            s = f"dkim={d.result}{comment(d.reason)}"
            for prop, val in (("header.d", d.domain), ("header.i", d.identity),
                              ("header.s", d.selector), ("header.a", d.algorithm),
                              ("header.b", d.header_b)):
                if val:
                    s += f" {prop}={property_value(val)}"
            entries.append(s)
        return entries

    def summary(self, results: DkimResults) -> list[str]:
        if not results:
            return [summary_line("DKIM", "none", "(no signature)")]
        return [summary_line("DKIM", d.result, f"d={d.domain} s={d.selector} a={d.algorithm}",
                             d.reason) for d in results]

    def log_fields(self, results: DkimResults) -> dict[str, str]:
        return {"dkim": ",".join(f"{d.result}:{d.domain or '-'}:{d.selector or '-'}"
                                 for d in results) or "none"}

    def metric_keys(self, results: DkimResults) -> list[tuple[str, str]]:
        return [("dkim", d.result) for d in results] or [("dkim", "none")]

    def to_json(self, results: DkimResults) -> list[dict]:
        return [d.to_dict() for d in results]
