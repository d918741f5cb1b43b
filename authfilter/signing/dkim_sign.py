"""DKIM signing of outbound mail (RFC 6376 s. 5, RFC 8463).

The :class:`Signer` signs what it is given: which mail deserves a signature (the submission
listener, trusted networks) is the SMTP proxy's decision.  It refuses, leaving the message
unchanged, when the From header field is missing, repeated or names several addresses (RFC 6376
s. 5.4 needs one author domain to choose a key; references.md trap #6), or when the From domain
is not in the signing table.

Output is byte-identical to dkimpy's ``DKIM.sign`` for the same key, header list, canonicalization
and ``t=`` (tag order ``v a c d i q s t h bh b``, ``h=`` joined with `` : ``, folded at 72 columns):
receivers see exactly what a dkimpy signer would write.  The canonicalization, header selection
and hashing are :mod:`authfilter.dkimcore`'s, shared with our verifier; the RSA and Ed25519
operations are OpenSSL's through ``cryptography`` (PKCS#1 v1.5 and Ed25519 are deterministic).

Signing must be the last change made to a message: a header field added above the signature is
harmless, but any change to a signed field or to the body breaks it.

On SIGHUP the proxy builds a new :class:`Signer` from the reloaded config and swaps it in; if
that raises :class:`SigningConfigError` it keeps the old one.  A Signer is immutable, so a
message being signed while the swap happens uses one table from start to end.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Iterable

from .. import dkimcore
from ..addresses import author_addresses
from ..config import Config
from ..message import Message, field_name
from .table import SigningTable, TableKey

log = logging.getLogger("authfilter.signing")

SIGNATURE_FIELD = b"DKIM-Signature"
FOLD_COLUMNS = 72                       # dkimpy's line length, field name included on line one
_B_PLACEHOLDER = b"0" * 60              # puts b= on a line of its own before the real b= exists


@dataclass(frozen=True, slots=True)
class SigningOutcome:
    signatures: tuple[bytes, ...] = ()  # the DKIM-Signature fields to add on top, top one first
    from_domain: str | None = None
    keys: tuple[TableKey, ...] = ()
    skipped: str | None = None          # why nothing was signed
    message: bytes = b""                # from sign_message only: the message to send, signed
                                        # or as it came (CRLF)

    def describe(self) -> str:
        """What the log says about it."""
        if self.skipped:
            return f"dkim-sign skipped: {self.skipped}"
        return f"dkim-sign from={self.from_domain} " + " ".join(k.describe() for k in self.keys)


class HeaderPolicy:
    """Which header fields h= lists (RFC 6376 s. 5.4).

    Every present instance of a field in ``headers``; then one more instance of each field in
    ``oversign`` (even when absent, so none can be added) and of each present field in
    ``oversign_if_present`` (s. 5.4.2: naming a field more often than it occurs makes an added
    instance break the signature).
    """

    def __init__(self, headers: Iterable[str], oversign: Iterable[str] = (),
                 oversign_if_present: Iterable[str] = ()) -> None:
        self.oversign = tuple(dict.fromkeys(h.lower().encode("ascii") for h in oversign))
        self.oversign_if_present = tuple(dict.fromkeys(h.lower().encode("ascii")
                                                       for h in oversign_if_present))
        self.signed = frozenset(h.lower().encode("ascii") for h in headers) | \
            set(self.oversign) | set(self.oversign_if_present)

    def names(self, headers: list[tuple[bytes, bytes]]) -> list[bytes]:
        listed = [n for n in (field_name(name) for name, _ in headers) if n in self.signed]
        present = set(listed)
        return listed + list(self.oversign) + [n for n in self.oversign_if_present if n in present]


class Signer:
    def __init__(self, table: SigningTable, policy: HeaderPolicy,
                 canonicalization: str = "relaxed/relaxed") -> None:
        self.table = table
        self.policy = policy
        self.header_canon, self.body_canon = dkimcore.parse_canonicalization(canonicalization)
        self.canonicalization = f"{self.header_canon}/{self.body_canon}"

    @classmethod
    def from_config(cls, config: Config) -> "Signer":
        """Load and permission-check every configured key; :class:`SigningConfigError` names
        the file that cannot be used."""
        s = config.signing
        return cls(SigningTable.from_config(s),
                   HeaderPolicy(s.headers, s.oversign, s.oversign_if_present),
                   s.canonicalization)

    def sign_message(self, raw: bytes, *, now: float | None = None) -> SigningOutcome:
        """:meth:`signatures` of the message ``raw``, with the message they go on top of."""
        message = _wire_form(raw)
        outcome = self.signatures(message, now=now)
        return dataclasses.replace(outcome, message=b"".join(outcome.signatures) + message.raw)

    def signatures(self, message: Message, *, bodies: dkimcore.BodyHashes | None = None,
                   now: float | None = None) -> SigningOutcome:
        """Our DKIM-Signature field(s) for a parsed message (CRLF; a body without a final CRLF
        hashes as one with it, RFC 6376 s. 3.4.3 and 3.4.4), or why there are none.
        ``bodies``: the body's hashes when they are known already."""
        from_domain, refusal = _author_domain(message)
        if from_domain is None:
            return SigningOutcome(skipped=refusal)
        pattern, keys = self.table.lookup(from_domain)
        if pattern is None:
            return SigningOutcome(from_domain=from_domain,
                                  skipped=f"From domain {from_domain} is not in the signing table")
        if not keys:
            return SigningOutcome(from_domain=from_domain, skipped=f"no active key for {pattern}")
        timestamp = int(time.time() if now is None else now)
        names = self.policy.names(message.headers)
        selected = dkimcore.HeaderIndex.of(message).select(n.decode("ascii") for n in names)
        signed_part = b"".join(dkimcore.canonicalize_header(name, value, self.header_canon)
                               for name, value in selected)       # the same for every key
        bodies = bodies or dkimcore.BodyHashes(message.body)
        body_hash = base64.b64encode(bodies.hash(self.body_canon, "sha256"))
        fields = tuple(self._signature(key, names, signed_part, body_hash, timestamp) for key in keys)
        return SigningOutcome(fields, from_domain, keys)

    def _signature(self, entry: TableKey, names: list[bytes], signed_part: bytes,
                   body_hash: bytes, timestamp: int) -> bytes:
        """One DKIM-Signature field (RFC 6376 s. 3.5, 3.7), laid out as dkimpy lays it out;
        ``signed_part`` is the canonical form of the fields h= selects."""
        domain = entry.domain.encode("ascii")
        tags = [
            (b"v", b"1"),
            (b"a", entry.algorithm.encode("ascii")),
            (b"c", self.canonicalization.encode("ascii")),
            (b"d", domain),
            (b"i", b"@" + domain),
            (b"q", b"dns/txt"),
            (b"s", entry.selector.encode("ascii")),
            (b"t", str(timestamp).encode("ascii")),
            (b"h", b" : ".join(names)),
            (b"bh", body_hash),
            (b"b", _B_PLACEHOLDER),
        ]
        unsigned = fold(_join(tags), len(SIGNATURE_FIELD))
        data = signed_part + dkimcore.header_hash_input((), (SIGNATURE_FIELD, b" " + unsigned),
                                                        self.header_canon)
        tags[-1] = (b"b", base64.b64encode(entry.key.sign_digest(hashlib.sha256(data).digest())))
        return SIGNATURE_FIELD + b": " + fold(_join(tags) + b"\r\n", len(SIGNATURE_FIELD))


def _wire_form(raw: bytes) -> Message:
    """The message as SMTP carries it: CRLF line ends, and a CRLF after the last line (RFC 5321
    s. 4.1.1.4), which every verifier then reads alike (Mail::DKIM and libopendkim disagree
    with the others about a body without one)."""
    message = Message.parse(raw)
    if message.body and not message.body.endswith(b"\r\n"):
        message = Message.parse(message.raw + b"\r\n")
    return message


def _author_domain(message: Message) -> tuple[str | None, str | None]:
    """(the From domain, None), or (None, why there is no single author domain to sign for)."""
    # A header block with lines that are not fields is read differently by different
    # receivers, so a signature over it may verify nowhere; a header without a body is fine.
    malformed = [e for e in message.errors if not e.startswith("no empty line")]
    if malformed:
        return None, f"malformed header: {malformed[0]}"
    authors = author_addresses(message.get_all(b"from"))
    if authors.field_count != 1:
        return None, f"{authors.field_count} From header fields"
    if authors.problems:
        return None, f"From not parsable: {authors.problems[0]}"
    if len(authors.mailboxes) != 1:
        return None, f"From names {len(authors.mailboxes)} addresses"
    return authors.mailboxes[0].domain, None


def _join(tags: list[tuple[bytes, bytes]]) -> bytes:
    return b"; ".join(name + b"=" + value for name, value in tags)


def fold(value: bytes, name_length: int) -> bytes:
    """Fold a tag list at :data:`FOLD_COLUMNS` as dkimpy's ``fold`` does.

    The first line has room for ``FOLD_COLUMNS - name_length`` octets, later lines for 71 after
    their leading space; each line breaks at its last space that fits, or hard where there is
    none (inside base64, where whitespace is ignored: RFC 6376 s. 3.5).  A final CRLF counts
    toward the last line's length.  ``value`` must not contain folding already.  (Unlike dkimpy,
    a final CRLF left alone never makes a line of a single space.)
    """
    limit = FOLD_COLUMNS - name_length
    if len(value) <= limit or (value.endswith(b"\r\n") and len(value) <= limit + 2):
        return value
    out = []
    while len(value) > limit:
        space = value.rfind(b" ", 0, limit)
        cut, resume = (limit, limit) if space < 0 else (space, space + 1)
        out.append(value[:cut])
        value = value[resume:]
        limit = FOLD_COLUMNS - 1
    if value == b"\r\n":                # the CRLF alone: end the last line with it
        return b"\r\n ".join(out) + b"\r\n"
    return b"\r\n ".join(out + [value])
