"""ARC sealing (RFC 8617 s. 5.1): add our ARC set after verification.

The set records our Authentication-Results as the ARC-Authentication-Results (AAR, s. 4.1.1),
signs the message with an ARC-Message-Signature (AMS, s. 4.1.2, relaxed/relaxed) and seals the
chain with an ARC-Seal (AS, s. 4.1.3) whose cv= is the chain status as it arrived:

* no ARC set yet: i=1, cv=none;
* a chain that validated: i=n+1, cv=pass, the seal covering every set (s. 5.1.1);
* a chain that failed validation: i=n+1, cv=fail, the seal covering our set only (s. 5.1.2);
* a chain whose newest seal already says cv=fail: not sealed (s. 5.1, step 1: the chain ended
  there); 50 sets already: not sealed (i= stops at 50, s. 4.2.1); a chain status that does not
  fit the sets present (e.g. ARC validation was off): not sealed; a chain that could not be
  validated because a key lookup failed for now (reason ``temperror: ...``): not sealed, since
  cv=fail would end a chain that may be good.

RFC 8617 allows exactly one set per instance, so one key signs it, RSA (rsa-sha256) by default;
an Ed25519 key may be configured instead, but few validators accept it yet.

Tags are written in alphabetical order with ``h=`` joined by plain colons, as the ARC test suite
writes them, and folded only between tags: relaxed canonicalization (the only one used here)
then reads every line break as the single space that was there, so what is hashed is exactly
the unfolded field.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import re
import time
from dataclasses import dataclass

from .. import dkimcore
from ..config import Config
from ..message import Message, field_name, fold_at_spaces
from ..results import ArcResult
from .keys import SigningConfigError, SigningKey, load_key

log = logging.getLogger("authfilter.signing")

AAR = b"ARC-Authentication-Results"
AMS = b"ARC-Message-Signature"
AS = b"ARC-Seal"
_ARC_FIELDS = {b"arc-authentication-results": AAR, b"arc-message-signature": AMS, b"arc-seal": AS}
_AAR_INSTANCE = re.compile(rb"[ \t\r\n]*i[ \t\r\n]*=[ \t\r\n]*([0-9]{1,3})[ \t\r\n]*;")


@dataclass(frozen=True, slots=True)
class SealOutcome:
    fields: tuple[bytes, ...] = ()      # ARC-Seal, ARC-Message-Signature, ARC-Authentication-
                                        # Results, to add on top in this order
    instance: int | None = None
    chain_status: str | None = None     # cv= we wrote
    skipped: str | None = None
    message: bytes = b""                # from seal_message only: sealed, or as it came (CRLF)

    def describe(self, sealer: "ArcSealer") -> str:
        """What the log says about it."""
        if self.skipped:
            return f"arc-seal skipped: {self.skipped}"
        return f"arc-seal i={self.instance} cv={self.chain_status} d={sealer.domain} s={sealer.selector}"


class ArcSealer:
    def __init__(self, domain: str, selector: str, key: SigningKey, headers: list[str]) -> None:
        self.domain = domain
        self.selector = selector
        self.key = key
        self.headers = frozenset(h.lower() for h in headers)

    @classmethod
    def from_config(cls, config: Config) -> "ArcSealer":
        """The sealer of ``[signing.arc]``; :class:`SigningConfigError` when it is not set up or
        its key cannot be used."""
        arc = config.signing.arc
        if not arc.domain:
            raise SigningConfigError("ARC sealing needs signing.arc.domain, selector and key_file")
        from ..addresses import AddressError, normalize_domain
        try:
            domain = normalize_domain(arc.domain)
        except AddressError as exc:
            raise SigningConfigError(f"signing.arc.domain: {exc}") from None
        return cls(domain, arc.selector, load_key(arc.key_file, arc.algorithm), arc.headers)

    def seal_message(self, raw: bytes, authres_value: str, chain: ArcResult, *,
                     now: float | None = None) -> SealOutcome:
        """:meth:`seal_fields` of the message ``raw``, with the message they go on top of."""
        message = Message.parse(raw)
        outcome = self.seal_fields(message, authres_value, chain, now=now)
        return dataclasses.replace(outcome, message=b"".join(outcome.fields) + message.raw)

    def seal_fields(self, message: Message, authres_value: str, chain: ArcResult, *,
                    bodies: dkimcore.BodyHashes | None = None,
                    now: float | None = None) -> SealOutcome:
        """Our ARC set for ``message`` as it will be relayed, or why RFC 8617 says not to seal.
        ``authres_value`` is our Authentication-Results field value (authserv-id and results,
        folded or not, without the field name); ``chain`` is the validation result of the
        chain as it arrived; ``bodies`` the body's hashes when they are known already (the
        verifier's relaxed SHA-256 hash is the one the AMS needs)."""
        sets, newest_cv, problem = _existing_sets(message)
        count = max(sets, default=0)
        cv = chain.result
        refusal = _refusal(count, newest_cv, problem, chain)
        if refusal:
            return SealOutcome(skipped=refusal)
        instance = count + 1
        timestamp = str(int(time.time() if now is None else now)).encode("ascii")
        common = [(b"a", self.key.algorithm.encode("ascii")), (b"d", self.domain.encode("ascii")),
                  (b"i", str(instance).encode("ascii")), (b"s", self.selector.encode("ascii")),
                  (b"t", timestamp)]

        aar = (AAR, fold_value(f"i={instance}; ".encode("ascii") + _unfold(authres_value), len(AAR)))
        names = [n for n in (field_name(name) for name, _ in message.headers)
                 if n.decode("ascii", "replace") in self.headers]
        bodies = bodies or dkimcore.BodyHashes(message.body)
        ams_tags = common + [(b"bh", base64.b64encode(bodies.hash(dkimcore.RELAXED, "sha256"))),
                             (b"c", b"relaxed/relaxed"), (b"h", b":".join(names))]
        selected = dkimcore.HeaderIndex.of(message).select(n.decode("ascii") for n in names)
        ams = (AMS, self._signed_value(AMS, ams_tags, selected))

        # s. 5.1.1: the seal covers every set, oldest first, AAR, AMS, AS each; s. 5.1.2: after
        # a failed chain, only our own set.
        sealed = [] if cv == "fail" else [sets[i][name] for i in range(1, instance) for name in (AAR, AMS, AS)]
        seal = (AS, self._signed_value(AS, common + [(b"cv", cv.encode("ascii"))], sealed + [aar, ams]))
        return SealOutcome(tuple(name + b":" + value for name, value in (seal, ams, aar)), instance, cv)

    def _signed_value(self, name: bytes, tags: list[tuple[bytes, bytes]],
                      selected: list[tuple[bytes, bytes]]) -> bytes:
        """The field value with b= filled in: the hash of the selected fields and of this
        field with an empty b= (RFC 6376 s. 3.7, relaxed), signed."""
        tags = sorted(tags + [(b"b", b"")])
        unsigned = b" " + b"; ".join(k + b"=" + v for k, v in tags)
        data = dkimcore.header_hash_input(selected, (name, unsigned), dkimcore.RELAXED)
        signature = base64.b64encode(self.key.sign_digest(hashlib.sha256(data).digest()))
        tags = [(k, signature if k == b"b" else v) for k, v in tags]
        return fold_value(b"; ".join(k + b"=" + v for k, v in tags), len(name))


def _refusal(count: int, newest_cv: str | None, problem: str | None, chain: ArcResult) -> str | None:
    """Why RFC 8617 forbids (or we decline) sealing this chain, or None."""
    cv = chain.result
    if newest_cv == "fail":
        return "the newest ARC-Seal has cv=fail: the chain ended there (RFC 8617 s. 5.1)"
    if count >= dkimcore.MAX_ARC_INSTANCE:
        return f"{count} ARC sets already; i= stops at {dkimcore.MAX_ARC_INSTANCE} (RFC 8617 s. 4.2.1)"
    if cv not in ("none", "pass", "fail") or (count == 0) != (cv == "none"):
        return f"chain result arc={cv} does not fit the {count} ARC set(s) present"
    if cv == "pass" and problem:
        return f"arc=pass but {problem}"
    if cv == "fail" and (chain.reason or "").startswith("temperror"):
        # a key lookup failed for now: sealing cv=fail would end a chain that may be good
        return f"chain not validated ({chain.reason})"
    return None


def _existing_sets(message: Message) -> tuple[dict[int, dict[bytes, tuple[bytes, bytes]]], str | None, str | None]:
    """ARC fields by instance, the cv= of the newest seal, and the first structural problem."""
    sets: dict[int, dict[bytes, tuple[bytes, bytes]]] = {}
    problem = None
    for name, value in message.headers:
        kind = _ARC_FIELDS.get(field_name(name))
        if kind is None:
            continue
        instance = _instance(kind, value)
        if instance is None:
            problem = problem or f"an {kind.decode()} field has no valid i="
            continue
        fields = sets.setdefault(instance, {})
        if kind in fields:
            problem = problem or f"instance {instance} has two {kind.decode()} fields"
        fields[kind] = (name, value)
    for instance in range(1, max(sets, default=0) + 1):
        if len(sets.get(instance, ())) != 3:
            problem = problem or f"ARC set {instance} is incomplete"
    newest_cv = None
    if sets:
        seal = sets[max(sets)].get(AS)
        if seal is not None:
            try:
                newest_cv = dkimcore.parse_tag_list(seal[1]).get("cv", "").strip().lower() or None
            except dkimcore.DkimSyntaxError:
                problem = problem or "the newest ARC-Seal is malformed"
    return sets, newest_cv, problem


def _instance(kind: bytes, value: bytes) -> int | None:
    if kind == AAR:
        m = _AAR_INSTANCE.match(value)
        text = m.group(1).decode("ascii") if m else None
    else:
        try:
            text = dkimcore.parse_tag_list(value).get("i", "").strip()
        except dkimcore.DkimSyntaxError:
            return None
    if not text or not text.isdigit() or not 1 <= int(text) <= dkimcore.MAX_ARC_INSTANCE:
        return None
    return int(text)


def _unfold(text: str) -> bytes:
    """One line: folding removed, any other CR or LF (never valid inside a field) made a space."""
    return text.replace("\r\n", "").replace("\r", " ").replace("\n", " ").strip().encode("utf-8")


def fold_value(value: bytes, name_length: int) -> bytes:
    """`` value`` + CRLF, folded at its spaces (:func:`~authfilter.message.fold_at_spaces`)
    after ``Name:`` and the leading space."""
    return b" " + fold_at_spaces(value, name_length + 2) + b"\r\n"
