"""ARC chain validation (RFC 8617 section 5.2): the cv= of the chain as it arrived.

Like DKIM it is split into :func:`key_names` (what to fetch), the pure :func:`validate_chain`
(no I/O; runs in a worker process) and :func:`validate_arc` (fetch, then validate);
:class:`ArcCheck` is the first two as the engine runs them.

Steps, as section 5.2 orders them:

1. Collect the ARC sets; none at all -> ``none``.
2. Structure (section 4.2.1, 5.2 step 2-3): at most 50 sets, instances 1..N with exactly one
   ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results each; every field parses;
   the newest seal's cv= is not ``fail``; cv=none for instance 1 and cv=pass for the others.
3. The newest AMS validates (DKIM rules, RFC 6376 section 6.1, with i= as the instance).
4. oldest-pass: older AMSs are validated newest to oldest until one fails; ``oldest_pass`` is
   the lowest instance of that unbroken run, 0 when every AMS validates (section 5.2 step 5).
5. Every ARC-Seal validates, newest first (section 5.1.1 says what it signs).

Any failure gives ``fail`` with the reason.  RFC 8617 defines no temperror for cv=: a key
lookup that fails temporarily also gives ``fail``, with a reason starting ``temperror:`` so the
policy can choose to tempfail rather than act on it, and a sealer must not seal over it.
"""
from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Collection, Mapping

from .. import dkimcore
from ..authres import comment
from ..config import Config
from ..dkimcore import BodyHashes, DkimKey, DkimSyntaxError, HeaderIndex, Signature
from ..dns import DnsAnswer, Resolver
from ..message import Message, field_name
from ..results import ArcResult, SessionFacts
from .base import ContentCheck, summary_line
from .dkim import CLOCK_SKEW, KeyUnavailable, check_hashes, usable_key

SEAL = b"arc-seal"
MESSAGE_SIGNATURE = b"arc-message-signature"
AUTHENTICATION_RESULTS = b"arc-authentication-results"
_ARC_FIELDS = (SEAL, MESSAGE_SIGNATURE, AUTHENTICATION_RESULTS)
# RFC 8617 section 4.1.1: arc-info = instance [CFWS] ";" authres-payload
_AAR_INSTANCE = re.compile(rb"[ \t\r\n]*i[ \t\r\n]*=[ \t\r\n]*([0-9]{1,3})[ \t\r\n]*;")


class ChainError(Exception):
    """The chain is broken; the message says where."""


@dataclass(frozen=True)
class _ArcSet:
    """One complete ARC set: header positions and the parsed seal and message signature."""

    instance: int
    seal_at: int
    seal: Signature
    signature_at: int
    signature: Signature | DkimSyntaxError      # an old AMS may be broken (oldest-pass)
    results_at: int


def key_names(message: Message) -> list[str]:
    """Key names of every ARC-Seal and ARC-Message-Signature that parse (at most 50 sets)."""
    names: list[str] = []
    for position in message.indexes_of((SEAL, MESSAGE_SIGNATURE)):
        name, value = message.headers[position]
        kind = dkimcore.AS if field_name(name) == SEAL else dkimcore.AMS
        try:
            key = dkimcore.parse_signature(value, kind).key_name
        except DkimSyntaxError:
            continue
        if key not in names:
            names.append(key)
        if len(names) >= 2 * dkimcore.MAX_ARC_INSTANCE:
            break
    return names


def validate_chain(message: Message, keys: Mapping[str, DnsAnswer], now: float,
                   min_rsa_bits: int = 1024, bodies: BodyHashes | None = None) -> ArcResult:
    """cv= of the message's ARC chain (see the module docstring for the steps); ``bodies``:
    the message's body hashes when DKIM verification shares them."""
    if not any(n in message.positions for n in _ARC_FIELDS):
        return ArcResult("none")
    try:
        sets = _collect_sets(message)
    except ChainError as exc:
        return ArcResult("fail", reason=str(exc))
    count = len(sets)
    sealers = tuple(s.seal.domain for s in sets)
    ams_domain = sets[-1].signature.domain                     # type: ignore[union-attr]

    def result(word: str, reason: str | None = None, oldest_pass: int | None = None) -> ArcResult:
        return ArcResult(word, count, sealers, oldest_pass, ams_domain, reason)

    checker = _Checker(message, keys, now, min_rsa_bits, sets, bodies or BodyHashes(message.body))
    try:
        checker.check_message_signature(count)
        oldest_pass = 0
        for instance in range(count - 1, 0, -1):
            try:
                checker.check_message_signature(instance)
            except ChainError:
                oldest_pass = instance + 1
                break
        for instance in range(count, 0, -1):
            checker.check_seal(instance)
    except ChainError as exc:
        return result("fail", str(exc))
    return result("pass", oldest_pass=oldest_pass)


async def validate_arc(message: Message, resolver: Resolver, *, deadline: float | None = None,
                       now: float | None = None, min_rsa_bits: int = 1024) -> ArcResult:
    """Fetch the ARC keys concurrently, then validate the chain."""
    names = key_names(message)
    answers = await asyncio.gather(*(resolver.query(n, "TXT", deadline=deadline) for n in names))
    return validate_chain(message, dict(zip(names, answers)), time.time() if now is None else now,
                          min_rsa_bits)


# -- structure ---------------------------------------------------------------------------------
def _collect_sets(message: Message) -> list[_ArcSet]:
    """The ARC sets, instance 1 first, after every structural check of section 5.2."""
    found: dict[tuple[int, bytes], tuple[int, object]] = {}
    for position in message.indexes_of(_ARC_FIELDS):
        name, value = message.headers[position]
        lname = field_name(name)
        label = name.decode("ascii", "replace")
        parsed: object = None
        if lname == AUTHENTICATION_RESULTS:
            m = _AAR_INSTANCE.match(value)
            if m is None:
                raise ChainError(f"{label} does not start with i=<instance>;")
            instance = int(m.group(1))
        else:
            try:
                tags = dkimcore.parse_tag_list(value)
            except DkimSyntaxError as exc:
                raise ChainError(f"{label}: {exc}") from None
            instance = _instance(tags.get("i"), label)
            kind = dkimcore.AS if lname == SEAL else dkimcore.AMS
            try:
                parsed = dkimcore.interpret_signature(tags, kind)
            except DkimSyntaxError as exc:
                if kind == dkimcore.AS:
                    raise ChainError(f"{label} i={instance}: {exc}") from None
                parsed = exc
        if not 1 <= instance <= dkimcore.MAX_ARC_INSTANCE:
            raise ChainError(f"{label} has instance i={instance}, outside 1..{dkimcore.MAX_ARC_INSTANCE}")
        if (instance, lname) in found:
            raise ChainError(f"more than one {label} with i={instance}")
        found[(instance, lname)] = (position, parsed)
    count = max(instance for instance, _ in found)
    sets = []
    for instance in range(1, count + 1):
        parts = [found.get((instance, f)) for f in _ARC_FIELDS]
        if None in parts:
            raise ChainError(f"ARC set i={instance} is incomplete")
        (seal_at, seal), (signature_at, signature), (results_at, _) = parts   # type: ignore[misc]
        sets.append(_ArcSet(instance, seal_at, seal, signature_at, signature, results_at))
    if sets[-1].seal.chain_status == "fail":
        raise ChainError(f"ARC-Seal i={count} has cv=fail")
    for arc_set in sets:
        expected = "none" if arc_set.instance == 1 else "pass"
        if arc_set.seal.chain_status != expected:
            raise ChainError(f"ARC-Seal i={arc_set.instance} has cv={arc_set.seal.chain_status}, "
                             f"expected cv={expected}")
    if isinstance(sets[-1].signature, DkimSyntaxError):
        raise ChainError(f"ARC-Message-Signature i={count}: {sets[-1].signature}")
    return sets


def _instance(text: str | None, label: str) -> int:
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 3:   # not "²"
        raise ChainError(f"{label} has no valid instance i=" + ("" if text is None else text))
    return int(text)


# -- signatures ----------------------------------------------------------------------------------
class _Checker:
    """Validates the AMS and AS of each instance against one message."""

    def __init__(self, message: Message, keys: Mapping[str, DnsAnswer], now: float,
                 min_rsa_bits: int, sets: list[_ArcSet], bodies: BodyHashes) -> None:
        self.message = message
        self.keys = keys
        self.now = now
        self.min_rsa_bits = min_rsa_bits
        self.sets = sets
        self.index = HeaderIndex.of(message)
        self.bodies = bodies

    def check_message_signature(self, instance: int) -> None:
        """RFC 8617 section 5.2 step 4/5: the AMS of ``instance`` validates like DKIM.  Header
        fields of this and later ARC sets (except this set's AAR, which existed when the AMS was
        made) are hidden from h=."""
        arc_set = self.sets[instance - 1]
        label = f"ARC-Message-Signature i={instance}"
        if isinstance(arc_set.signature, DkimSyntaxError):
            raise ChainError(f"{label}: {arc_set.signature}")
        key = self._key(arc_set.signature, label)
        hidden = {p for s in self.sets[instance - 1:] for p in (s.seal_at, s.signature_at)}
        hidden.update(s.results_at for s in self.sets[instance:])
        failure = check_hashes(arc_set.signature, self.message.headers[arc_set.signature_at],
                               self.index, self.bodies, key, hidden)
        if failure:
            raise ChainError(f"{label}: {failure}")

    def check_seal(self, instance: int) -> None:
        """RFC 8617 section 5.1.1: the AS of ``instance`` signs, relaxed, the AAR, AMS and AS of
        every instance from 1 up to it, in that order, itself last with b= empty."""
        arc_set = self.sets[instance - 1]
        label = f"ARC-Seal i={instance}"
        key = self._key(arc_set.seal, label)
        headers = self.message.headers
        signed = []
        for earlier in self.sets[:instance]:
            signed += [headers[earlier.results_at], headers[earlier.signature_at]]
            if earlier.instance < instance:
                signed.append(headers[earlier.seal_at])
        data = dkimcore.header_hash_input(signed, headers[arc_set.seal_at], dkimcore.RELAXED)
        if not dkimcore.verify_digest(key, arc_set.seal.hash_name,
                                      dkimcore.digest(data, arc_set.seal.hash_name), arc_set.seal.signature):
            raise ChainError(f"{label}: signature did not verify")

    def _key(self, sig: Signature, label: str) -> DkimKey:
        """The key for ``sig`` after the checks that do not need the message: algorithm
        (RFC 8301: no rsa-sha1), t= not in the future, x= not passed, key usable."""
        if sig.algorithm == "rsa-sha1":
            raise ChainError(f"{label}: rsa-sha1 not acceptable (RFC 8301)")
        if sig.timestamp is not None and sig.timestamp > self.now + CLOCK_SKEW:
            raise ChainError(f"{label}: t= is in the future")
        if sig.expiration is not None and sig.expiration + CLOCK_SKEW < self.now:
            raise ChainError(f"{label}: expired (x=)")
        try:
            key = usable_key(self.keys.get(sig.key_name), sig.key_name)
        except KeyUnavailable as exc:
            prefix = "temperror: " if exc.result == "temperror" else ""
            raise ChainError(f"{prefix}{label}: {exc.reason}") from None
        problem = dkimcore.check_key(key, sig, self.min_rsa_bits)
        if problem:
            raise ChainError(f"{label}: {problem}")
        return key


# -- the check, as the engine runs it ----------------------------------------------------------
class ArcCheck(ContentCheck[ArcResult]):
    """cv= of the chain as it arrived (``[arc] enabled``); its keys follow the DKIM key rules
    (``[dkim] min_rsa_bits``)."""

    __slots__ = ()
    name = "arc"
    section = "arc"

    def dns_names(self, message: Message, config: Config) -> Collection[str]:
        return key_names(message) if self.settings(config).enabled else ()

    def verify(self, message: Message, keys: Mapping[str, DnsAnswer], config: Config, now: float,
               bodies: BodyHashes) -> ArcResult:
        if not self.settings(config).enabled:
            return ArcResult("none", reason="ARC validation disabled")
        return validate_chain(message, keys, now, config.dkim.min_rsa_bits, bodies)

    def temperror(self, reason: str, facts: SessionFacts) -> ArcResult:
        return ArcResult("fail", reason=f"temperror: {reason}")     # see the module docstring

    def authres(self, result: ArcResult, facts: SessionFacts) -> list[str]:
        a = result
        s = f"arc={a.result}{comment(a.reason)}"
        if a.instances:
            sealers = f" sealers={','.join(a.sealers)}" if a.sealers else ""
            s += comment(f"i={a.instances}{sealers}")
            if a.oldest_pass is not None:
                s += f" header.oldest-pass={a.oldest_pass}"
            if facts.client_ip is not None:
                s += f" smtp.remote-ip={facts.client_text}"
        return [s]

    def summary(self, result: ArcResult) -> list[str]:
        return [summary_line("ARC", result.result, f"{result.instances} instance(s)",
                             result.reason)]
