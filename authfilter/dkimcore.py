"""Low-level DKIM pieces shared by DKIM verification, ARC validation, DKIM signing and ARC sealing.

Everything here is pure (no I/O, no clock) and works on bytes as :class:`~authfilter.message.Message`
gives them: header fields as ``(name, value)`` where ``value`` is everything after the colon,
folding and the final CRLF included, and a body whose line ends are CRLF.

* :func:`parse_tag_list` - the RFC 6376 section 3.2 tag=value grammar, strictly.
* :func:`canonicalize_header` / :func:`canonicalize_body` - section 3.4 "simple" and "relaxed",
  with bulk byte operations instead of Python work per line.
* :class:`HeaderIndex` - bottom-up selection of the fields named in ``h=`` (section 5.4.2).
* :class:`BodyHashes` - canonical bodies and body hashes computed once per message and shared by
  every signature with the same (canonicalization, ``l=``, hash).
* :func:`header_hash_input` - the exact bytes whose hash is signed (section 3.7).
* :func:`parse_signature` - DKIM-Signature, ARC-Message-Signature and ARC-Seal tag semantics.
* :func:`parse_key_record` / :func:`select_key_record` - the section 3.6.1 key record.
* :func:`verify_digest` - RSA PKCS#1 v1.5 and Ed25519 (RFC 8463) checks through ``cryptography``.

Errors are reported as :class:`DkimSyntaxError` (signature field) or :class:`KeyRecordError`
(key record) with a message that can go into an Authentication-Results comment.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass
from itertools import repeat
from typing import Container, Iterable, Sequence

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .message import Message, field_name

SIMPLE = "simple"
RELAXED = "relaxed"

# a= values -> (key type, hash name).  rsa-sha1 is parsed so that the verifier can name it in
# its result; RFC 8301 section 3.1 forbids accepting it.
ALGORITHMS = {
    "rsa-sha256": ("rsa", "sha256"),
    "ed25519-sha256": ("ed25519", "sha256"),
    "rsa-sha1": ("rsa", "sha1"),
}
_HASH_CONSTRUCTORS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}
_PREHASHED = {"sha256": Prehashed(hashes.SHA256()), "sha1": Prehashed(hashes.SHA1())}

MAX_ARC_INSTANCE = 50            # RFC 8617 section 4.2.1


class DkimSyntaxError(ValueError):
    """A signature header field that breaks RFC 6376 / RFC 8617 syntax or semantics."""


class KeyRecordError(ValueError):
    """A key record that cannot be used; ``revoked`` is set for an empty ``p=`` (section 3.6.1)."""

    def __init__(self, message: str, *, revoked: bool = False) -> None:
        super().__init__(message)
        self.revoked = revoked


# -- tag lists (RFC 6376 section 3.2) --------------------------------------------------------
# tag-spec = [FWS] tag-name [FWS] "=" [FWS] tag-value [FWS]; tag-name = ALPHA *(ALPHA/DIGIT/"_");
# tag-value = [ tval *( 1*(WSP / FWS) tval ) ]; tval = 1*VALCHAR, VALCHAR = %x21-3A / %x3C-7E,
# extended with UTF-8 (%x80-FF) as RFC 8616 section 4 allows.  FWS is unfolded before matching.
_TAG_SPEC = re.compile(
    rb"[ \t]*([A-Za-z][A-Za-z0-9_]*)[ \t]*=[ \t]*"
    rb"((?:[\x21-\x3a\x3c-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x3a\x3c-\x7e\x80-\xff]+)*)?)[ \t]*")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_WSP = re.compile(r"[ \t\r\n]+")


def parse_tag_list(value: bytes) -> dict[str, str]:
    """Parse a tag=value list, strictly (RFC 6376 section 3.2); a fresh dict per call.

    The same signature is parsed when its key name is wanted and again when it is verified,
    and the same key records recur, so parses are cached by value.
    """
    return dict(_parse_tag_list_cached(value))


@functools.lru_cache(maxsize=2048)
def _parse_tag_list_cached(value: bytes) -> dict[str, str]:
    """Parse a tag=value list, strictly (RFC 6376 section 3.2).

    Returns the tags in their order of appearance; values are decoded as UTF-8 (undecodable
    bytes become U+FFFD) with outer whitespace removed and inner whitespace kept.  Tag names are
    case-sensitive.  Raises :class:`DkimSyntaxError` for a malformed tag-spec, an empty tag-spec
    other than a trailing one, a CRLF not followed by whitespace, or a duplicate tag name.
    """
    text = value[:-2] if value.endswith(b"\r\n") else value
    text = _FOLD.sub(b"", text)
    if b"\r" in text or b"\n" in text:
        raise DkimSyntaxError("tag list has a line break that is not folding whitespace")
    tags: dict[str, str] = {}
    specs = text.split(b";")
    for position, spec in enumerate(specs):
        m = _TAG_SPEC.fullmatch(spec)
        if m is None:
            if position == len(specs) - 1 and not spec.strip(b" \t"):
                break                                   # the optional trailing ";"
            shown = spec.strip(b" \t")[:40].decode("utf-8", "replace")
            raise DkimSyntaxError(f"malformed tag {shown!r}" if shown else "empty tag in tag list")
        name = m.group(1).decode("ascii")
        if name in tags:
            raise DkimSyntaxError(f"duplicate tag {name}=")
        tags[name] = m.group(2).decode("utf-8", "replace")
    return tags


def strip_whitespace(text: str) -> str:
    """Remove all FWS (used for b=, bh= and p=, whose base64 may be folded anywhere)."""
    return _WSP.sub("", text)


_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def decode_base64(text: str, what: str) -> bytes:
    """Strict base64 with whitespace ignored; :class:`DkimSyntaxError` names ``what`` on error."""
    compact = strip_whitespace(text)
    if not _BASE64.fullmatch(compact):
        raise DkimSyntaxError(f"{what} is not valid base64")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise DkimSyntaxError(f"{what} is not valid base64") from None


_QP_TEXT = re.compile(rb"(?:[^=]|=[0-9A-Fa-f]{2})*")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode_dkim_quoted_printable(text: str) -> str:
    """DKIM-Quoted-Printable (RFC 6376 section 2.11), as used by i=; whitespace is ignored."""
    raw = strip_whitespace(text).encode("utf-8")
    if b"=" not in raw:
        return raw.decode("utf-8")
    if not _QP_TEXT.fullmatch(raw):
        raise DkimSyntaxError("bad quoted-printable escape")
    return _QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode("utf-8", "replace")


_B_TAG = re.compile(rb"[ \t\r\n]*b[ \t\r\n]*=")


def remove_b_value(value: bytes) -> bytes:
    """The signature field value with the b= tag's value emptied (RFC 6376 section 3.7);
    the rest, whitespace included, is kept byte for byte.  Tags start at the beginning and
    after each ";", so only those places are tried (a regex would try every position)."""
    start = 0
    while True:
        tag = _B_TAG.match(value, start)
        if tag is not None:
            end = value.find(b";", tag.end())
            return value[:tag.end()] + (value[end:] if end >= 0 else b"")
        start = value.find(b";", start) + 1
        if not start:
            return value


# -- canonicalization (RFC 6376 section 3.4) -------------------------------------------------
# Only C-speed operations touch a whole body.  Two scans can find the WSP runs ("  ") and the
# SP before a CRLF, and which is faster depends on the text: ``re``'s literal scan stops at
# every SP, so it runs at memchr speed where SP is rare (base64 attachments: 0.5 ms per 2 MB)
# and at half speed in prose; ``bytes.split``'s fastsearch takes 1.2-2.8 ms per 2 MB whatever
# the text.  A look at the first 4 KB picks one.  Either way the text is copied once, and only
# while matches are few (one per 64 bytes): past that, ``bytes.replace`` passes that halve
# every run at once cost less than a step per match.
_SP_RUN = re.compile(rb"  +")
_SP_CRLF = re.compile(rb" \r\n")
# Relaxed body canonicalization in one pass, once tabs are spaces: every SP followed by another
# SP or by CRLF goes (a run keeps its last SP; WSP at a line's end goes entirely).
_SP_TO_DROP = re.compile(rb" (?= |\r\n)")


def _few(data: bytes) -> int:
    """How many matches are "few" for ``data``."""
    return max(len(data) >> 6, 16)


def _sp_is_rare(data: bytes) -> bool:
    """Fewer than one SP per 12 bytes at the start of ``data``."""
    return data.count(b" ", 0, 4096) * 12 < min(len(data), 4096)


def _split_few(data: bytes, sep: bytes) -> list[bytes] | None:
    """``data.split(sep)``, or None when ``sep`` is not rare."""
    limit = _few(data)
    pieces = data.split(sep, limit)
    return None if len(pieces) > limit else pieces


def _collapse_wsp(data: bytes) -> bytes:
    """Every run of SP/HTAB made one SP.

    Tabs become spaces (nothing to do, at memchr speed, when there are none).  Where SP is
    rare, ``re`` replaces each run of two or more.  Otherwise one split at "  " finds every
    run: a run of n spaces leaves n // 2 separators and, when n is odd, a space at the start
    of the next piece; so every piece after the first, stripped of its leading spaces and
    dropped when that leaves nothing, joined with one SP, is the collapsed text (plus a final
    SP when the data ends with a run).  Very many runs (indented lines, whitespace art): "  "
    -> " " replace passes until none is left.
    """
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    if len(data) <= 4096 and b"  " not in data:      # a header value, mostly: nothing to do
        return data
    if _sp_is_rare(data):
        limit = _few(data)
        data, replaced = _SP_RUN.subn(b" ", data, count=limit)
        pieces = None if replaced == limit else [data]
    else:
        pieces = _split_few(data, b"  ")
    if pieces is None:
        while b"  " in data:
            data = data.replace(b"  ", b" ")
        return data
    if len(pieces) == 1:
        return pieces[0]
    kept = [pieces[0], *filter(None, map(bytes.lstrip, pieces[1:], repeat(b" ")))]
    if not pieces[-1].lstrip(b" "):
        kept.append(b"")                       # the data ends with a run: keep one SP of it
    return b" ".join(kept)


def _drop_sp_before_crlf(data: bytes) -> bytes:
    """SP CRLF -> CRLF, for text whose WSP runs are single SPs already."""
    if _sp_is_rare(data):
        limit = _few(data)
        data, replaced = _SP_CRLF.subn(b"\r\n", data, count=limit)
        return data.replace(b" \r\n", b"\r\n") if replaced == limit else data
    pieces = _split_few(data, b" \r\n")
    if pieces is None:
        return data.replace(b" \r\n", b"\r\n")
    return data if len(pieces) == 1 else b"\r\n".join(pieces)


def parse_canonicalization(value: str | None) -> tuple[str, str]:
    """c= -> (header algorithm, body algorithm); default simple/simple, "x" means x/simple.
    The names are ABNF literals, so case-insensitive (RFC 5234 section 2.3)."""
    if value is None:
        return SIMPLE, SIMPLE
    header, slash, body = value.lower().partition("/")
    body = body if slash else SIMPLE
    if header not in (SIMPLE, RELAXED) or body not in (SIMPLE, RELAXED):
        raise DkimSyntaxError(f"unknown canonicalization c={value}")
    return header, body


def canonicalize_header(name: bytes, value: bytes, algorithm: str) -> bytes:
    """One header field, CRLF-terminated, in ``simple`` or ``relaxed`` form (section 3.4.1/3.4.2).

    relaxed: name lower-cased, folding removed, WSP runs made one SP, WSP around the value
    removed, and so is WSP between the name and the colon.
    """
    if algorithm == SIMPLE:
        return name + b":" + value
    v = _collapse_wsp(value.replace(b"\r\n", b""))
    return field_name(name) + b":" + v.strip(b" ") + b"\r\n"


def canonicalize_body(body: bytes, algorithm: str) -> bytes:
    """The canonical body (section 3.4.3 simple, 3.4.4 relaxed, erratum 1384 for an empty
    relaxed body).  ``body`` must have CRLF line ends, as :class:`Message` gives it."""
    data, end, suffix = _canonical_body(body, algorithm)
    return (data if end == len(data) else data[:end]) + suffix


def _canonical_body(body: bytes, algorithm: str) -> tuple[bytes, int, bytes]:
    """The canonical body as ``data[:end] + suffix``, so that hashing it needs no copy; relaxed
    in C-speed passes over the whole body (:func:`_relaxed_body`), no Python work per line."""
    if algorithm == RELAXED:
        body = _relaxed_body(body)
    end = _end_without_trailing_empty_lines(body)
    if end is None:                        # last line has no CRLF: add one
        return body, len(body), b"\r\n"
    if end == 0:                           # no body, or nothing but empty lines
        return b"", 0, (b"\r\n" if algorithm == SIMPLE else b"")
    return body, end, b""


def _relaxed_body(body: bytes) -> bytes:
    """RFC 6376 s. 3.4.4 (a) and (b).  Where SP is rare (base64, SP-sparse text) one ``re`` pass
    drops what goes, while the drops are few (2 MB of SP-sparse text: 6.1 -> 2.1 ms); else, or
    past that many, the two passes of :func:`_collapse_wsp` and :func:`_drop_sp_before_crlf`
    (dropping a few first changes nothing they do: each dropped SP is one they drop too)."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    if _sp_is_rare(body):
        limit = _few(body)
        body, dropped = _SP_TO_DROP.subn(b"", body, count=limit)
        if dropped < limit:
            return body
    return _drop_sp_before_crlf(_collapse_wsp(body))


def _end_without_trailing_empty_lines(body: bytes) -> int | None:
    """Length of ``body`` up to and including the CRLF of its last non-empty line; 0 when
    every line is empty; None when the body does not end in CRLF (and is not empty).

    Trailing empty lines are a run of CRLF pairs.  ``rstrip`` of a growing tail finds the
    run's start without copying the body; a CR that belongs to the last line's content
    ("x\\r\\r\\n") is told apart by the last "\\r\\r" in the stripped tail (a CRLF body has
    no bare LF, so the tail is CR* (CR LF)*).
    """
    if not body:
        return 0
    if not body.endswith(b"\r\n"):
        return None
    window = 256
    while True:
        tail = body[-window:]
        kept = len(tail.rstrip(b"\r\n"))
        if kept or len(tail) == len(body):
            break
        window *= 16
    content_end = len(body) - len(tail) + kept
    cr_cr = tail.rfind(b"\r\r", kept)
    pairs_start = content_end + (cr_cr - kept + 1 if cr_cr >= 0 else 0)
    if pairs_start == 0:
        return 0
    return pairs_start + 2                 # keep the CRLF that ends the last non-empty line


# -- header selection (section 5.4.2) --------------------------------------------------------
class HeaderIndex:
    """Positions of every header field by lower-cased name, built once per message."""

    def __init__(self, headers: Sequence[tuple[bytes, bytes]],
                 positions: dict[bytes, list[int]] | None = None) -> None:
        """``positions``: the index a :class:`Message` built already (see :meth:`of`)."""
        self.headers = headers
        if positions is None:
            positions = {}
            for i, (name, _) in enumerate(headers):
                positions.setdefault(field_name(name), []).append(i)
        self._positions = positions

    @classmethod
    def of(cls, message: Message) -> "HeaderIndex":
        """The index of a parsed message, on the positions it already holds."""
        return cls(message.headers, message.positions)

    def positions(self, name: bytes) -> list[int]:
        """Indexes of the fields called ``name`` (lower-case), top to bottom."""
        return self._positions.get(name, [])

    def select(self, names: Iterable[str], hidden: Container[int] = ()) -> list[tuple[bytes, bytes]]:
        """The fields named in h=, in h= order; a repeated name takes the next instance from the
        bottom up, and a name with no instance left contributes nothing.

        ``hidden`` holds positions of fields that did not exist when the signature was made
        (the signature field itself; for ARC, the later ARC sets), so they cannot be selected.
        """
        used: dict[bytes, int] = {}
        out = []
        for name in names:
            key = name.lower().encode("utf-8", "replace")
            found = self._positions.get(key)
            if not found:
                continue
            if hidden:
                found = [i for i in found if i not in hidden]
            n = used.get(key, 0)
            if n < len(found):
                out.append(self.headers[found[-1 - n]])
                used[key] = n + 1
        return out


def header_hash_input(selected: Iterable[tuple[bytes, bytes]], signature_field: tuple[bytes, bytes],
                      algorithm: str) -> bytes:
    """The bytes whose hash is signed (section 3.7): the selected fields canonicalized, then the
    signature field itself with b= emptied and without its final CRLF."""
    parts = [canonicalize_header(n, v, algorithm) for n, v in selected]
    name, value = signature_field
    if value.endswith(b"\r\n"):
        value = value[:-2]
    emptied = remove_b_value(value)
    if algorithm == SIMPLE:
        parts.append(name + b":" + emptied)
    else:
        parts.append(canonicalize_header(name, emptied, RELAXED)[:-2])
    return b"".join(parts)


def digest(data: bytes, hash_name: str) -> bytes:
    return _HASH_CONSTRUCTORS[hash_name](data).digest()


class BodyHashes:
    """Canonical forms and hashes of one body, each computed at most once."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._canonical: dict[str, tuple[bytes, int, bytes]] = {}
        self._hashes: dict[tuple[str, int | None, str], bytes] = {}

    def _parts(self, algorithm: str) -> tuple[bytes, int, bytes]:
        parts = self._canonical.get(algorithm)
        if parts is None:
            parts = self._canonical[algorithm] = _canonical_body(self.body, algorithm)
        return parts

    def length(self, algorithm: str) -> int:
        _, end, suffix = self._parts(algorithm)
        return end + len(suffix)

    def hash(self, algorithm: str, hash_name: str, length: int | None = None) -> bytes:
        """Hash of the canonical body, or of its first ``length`` octets (l=)."""
        key = (algorithm, length, hash_name)
        value = self._hashes.get(key)
        if value is None:
            data, end, suffix = self._parts(algorithm)
            if length is not None and length < end + len(suffix):
                end, suffix = min(end, length), suffix[:max(0, length - end)]
            hasher = _HASH_CONSTRUCTORS[hash_name]()
            with memoryview(data) as view:
                hasher.update(view[:end])
            hasher.update(suffix)
            value = self._hashes[key] = hasher.digest()
        return value

    def computed(self) -> dict[tuple[str, int | None, str], bytes]:
        """The hashes computed so far (small and picklable: what a worker process sends back)."""
        return dict(self._hashes)

    def learn(self, hashes: dict[tuple[str, int | None, str], bytes]) -> None:
        """Take hashes another process computed over the same body."""
        self._hashes.update(hashes)


# -- signature fields -------------------------------------------------------------------------
DKIM = "dkim"          # DKIM-Signature (RFC 6376 section 3.5)
AMS = "ams"            # ARC-Message-Signature (RFC 8617 section 4.1.2)
AS = "as"              # ARC-Seal (RFC 8617 section 4.1.3)

_REQUIRED = {
    DKIM: ("v", "a", "b", "bh", "d", "h", "s"),
    AMS: ("i", "a", "b", "bh", "d", "h", "s"),
    AS: ("i", "a", "b", "cv", "d", "s"),
}
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_DIGITS = re.compile(r"[0-9]{1,12}")
_LENGTH = re.compile(r"[0-9]{1,76}")


@dataclass(frozen=True, slots=True)
class Signature:
    """The interpreted tags of one DKIM-Signature, ARC-Message-Signature or ARC-Seal."""

    kind: str
    tags: dict[str, str]
    algorithm: str                  # a=, lower-case
    key_type: str                   # rsa | ed25519
    hash_name: str                  # sha256 | sha1
    domain: str                     # d=, lower-case
    selector: str                   # s=
    signature: bytes                # b= decoded
    header_b: str                   # the first 8 characters of b= (RFC 6008)
    header_canon: str
    body_canon: str
    signed_headers: tuple[str, ...] = ()   # h=, lower-case (not for ARC-Seal)
    body_hash: bytes = b""                 # bh= decoded (not for ARC-Seal)
    length: int | None = None              # l=
    timestamp: int | None = None           # t=
    expiration: int | None = None          # x=
    identity: str | None = None            # i= (DKIM; default "@" + d)
    instance: int | None = None            # i= (ARC)
    chain_status: str | None = None        # cv= (ARC-Seal)

    @property
    def key_name(self) -> str:
        return key_name(self.selector, self.domain)


def key_name(selector: str, domain: str) -> str:
    """The DNS name of a key record (section 3.6.2.1)."""
    return f"{selector}._domainkey.{domain}".lower()


@functools.lru_cache(maxsize=1024)
def parse_signature(value: bytes, kind: str = DKIM) -> Signature:
    """Interpret a signature field value; raise :class:`DkimSyntaxError` naming the problem.

    Rules: RFC 6376 section 3.5 and 6.1.1 for DKIM (v=1, required tags, h= names From, i= in
    d= or a subdomain, q= includes dns/txt, x= not before t=); RFC 8617 section 4.1 for ARC
    (i= is the instance 1..50, no v=, ARC-Seal has cv= and must not have h=, and only relaxed
    header canonicalization is defined for it).  Cached by value: the engine asks for a
    signature's key name before verifying it.
    """
    tags = parse_tag_list(value)
    return interpret_signature(tags, kind)


def interpret_signature(tags: dict[str, str], kind: str) -> Signature:
    missing = [t for t in _REQUIRED[kind] if t not in tags]
    if missing:
        raise DkimSyntaxError("missing required tag" + ("s " if len(missing) > 1 else " ")
                              + " ".join(f"{t}=" for t in missing))
    if kind == DKIM and tags["v"] != "1":
        raise DkimSyntaxError(f"unsupported version v={tags['v']}")
    algorithm = tags["a"].lower()
    if algorithm not in ALGORITHMS:
        raise DkimSyntaxError(f"unsupported algorithm a={tags['a']}")
    key_type, hash_name = ALGORITHMS[algorithm]
    domain = tags["d"].lower()
    if not _DOMAIN.fullmatch(domain) or len(domain) > 253:
        raise DkimSyntaxError(f"d={tags['d']} is not a domain name")
    selector = tags["s"]
    if not _DOMAIN.fullmatch(selector) or len(selector) + len(domain) > 240:
        raise DkimSyntaxError(f"s={tags['s']} is not a valid selector")
    b_compact = strip_whitespace(tags["b"])
    signature = decode_base64(b_compact, "b=")
    if not signature:
        raise DkimSyntaxError("b= is empty")
    timestamp = _number(tags, "t")
    expiration = _number(tags, "x")
    if timestamp is not None and expiration is not None and expiration < timestamp:
        raise DkimSyntaxError("x= is earlier than t=")

    fields: dict = {}
    if kind == AS:
        if "h" in tags:
            raise DkimSyntaxError("h= is not allowed in ARC-Seal")
        cv = tags["cv"].lower()
        if cv not in ("none", "pass", "fail"):
            raise DkimSyntaxError(f"unknown cv={tags['cv']}")
        header_canon = body_canon = RELAXED            # RFC 8617 section 5.1.1
        fields.update(chain_status=cv)
    else:
        header_canon, body_canon = parse_canonicalization(tags.get("c"))
        names = tuple(n.lower() for n in (strip_whitespace(x) for x in tags["h"].split(":")))
        if not all(_FIELD_NAME.fullmatch(n) for n in names):
            raise DkimSyntaxError("h= is not a list of header field names")
        if kind == DKIM and "from" not in names:
            raise DkimSyntaxError("h= does not include From (RFC 6376 section 5.4)")
        if kind == AMS and "arc-seal" in names:
            raise DkimSyntaxError("h= includes ARC-Seal (RFC 8617 section 4.1.2)")
        query = tags.get("q")
        if query is not None and "dns/txt" not in (strip_whitespace(m).lower() for m in query.split(":")):
            raise DkimSyntaxError(f"no supported query method in q={query}")
        length = None
        if "l" in tags:
            if not _LENGTH.fullmatch(tags["l"]):
                raise DkimSyntaxError(f"l={tags['l']} is not a number")
            length = int(tags["l"])
        fields.update(signed_headers=names, body_hash=decode_base64(tags["bh"], "bh="),
                      length=length)
    if kind == DKIM:
        fields["identity"] = _identity(tags.get("i"), domain)
    else:
        instance = _number(tags, "i")
        if instance is None or not 1 <= instance <= MAX_ARC_INSTANCE:
            raise DkimSyntaxError(f"i={tags['i']} is not an instance from 1 to {MAX_ARC_INSTANCE}")
        fields["instance"] = instance
    return Signature(kind=kind, tags=tags, algorithm=algorithm, key_type=key_type,
                     hash_name=hash_name, domain=domain, selector=selector, signature=signature,
                     header_b=b_compact[:8], header_canon=header_canon, body_canon=body_canon,
                     timestamp=timestamp, expiration=expiration, **fields)


def _number(tags: dict[str, str], name: str) -> int | None:
    text = tags.get(name)
    if text is None:
        return None
    if not _DIGITS.fullmatch(text):
        raise DkimSyntaxError(f"{name}={text} is not a number")
    return int(text)


def _identity(value: str | None, domain: str) -> str:
    """i= decoded; it must be in d= or a subdomain of it (section 3.5); default "@" + d."""
    if value is None:
        return "@" + domain
    identity = decode_dkim_quoted_printable(value)
    local, at, idomain = identity.rpartition("@")
    idomain = idomain.lower()
    if not at or not (idomain == domain or idomain.endswith("." + domain)):
        raise DkimSyntaxError(f"i={identity} is not in d={domain} or a subdomain")
    return identity


# -- key records (section 3.6.1) --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DkimKey:
    key_type: str                       # rsa | ed25519
    public_key: object                  # cryptography RSAPublicKey | Ed25519PublicKey
    bits: int
    hashes: frozenset[str] | None       # h=; None = any
    testing: bool                       # t=y
    strict: bool                        # t=s: i= domain must equal d=


def parse_key_record(txt: bytes) -> DkimKey:
    """Parse one TXT record as a DKIM key; raise :class:`KeyRecordError` (``revoked`` for an
    empty p=).  Results are cached by record text (keys repeat across messages)."""
    result = _parse_key_record_cached(txt)
    if isinstance(result, KeyRecordError):
        raise KeyRecordError(str(result), revoked=result.revoked)
    return result


@functools.lru_cache(maxsize=2048)
def _parse_key_record_cached(txt: bytes) -> DkimKey | KeyRecordError:
    try:
        return _parse_key_record(txt)
    except KeyRecordError as exc:
        return exc


def _parse_key_record(txt: bytes) -> DkimKey:
    try:
        tags = parse_tag_list(txt)
    except DkimSyntaxError as exc:
        raise KeyRecordError(f"key record syntax: {exc}") from None
    if "v" in tags and (next(iter(tags)) != "v" or tags["v"] != "DKIM1"):
        raise KeyRecordError("key record v= is not DKIM1 or not the first tag")
    key_type = tags.get("k", "rsa").lower()
    if key_type not in ("rsa", "ed25519"):
        raise KeyRecordError(f"unknown key type k={tags['k']}")
    services = {strip_whitespace(s).lower() for s in tags.get("s", "*").split(":")}
    if not services & {"*", "email"}:
        raise KeyRecordError(f"key is not for email (s={tags['s']})")
    if "p" not in tags:
        raise KeyRecordError("key record has no p=")
    p = strip_whitespace(tags["p"])
    if not p:
        raise KeyRecordError("key revoked (empty p=)", revoked=True)
    try:
        data = decode_base64(p, "p=")
    except DkimSyntaxError as exc:
        raise KeyRecordError(f"key record {exc}") from None
    public_key, bits = _load_public_key(key_type, data)
    hashes_tag = tags.get("h")
    acceptable = frozenset(strip_whitespace(h).lower() for h in hashes_tag.split(":")) \
        if hashes_tag is not None else None
    flags = {strip_whitespace(f).lower() for f in tags.get("t", "").split(":")}
    return DkimKey(key_type, public_key, bits, acceptable, "y" in flags, "s" in flags)


def _load_public_key(key_type: str, data: bytes) -> tuple[object, int]:
    if key_type == "ed25519":
        if len(data) != 32:                       # RFC 8463 section 4: the raw 32-byte key
            raise KeyRecordError(f"ed25519 key is {len(data)} bytes, not 32")
        return ed25519.Ed25519PublicKey.from_public_bytes(data), 256
    try:                                          # SubjectPublicKeyInfo, what everyone publishes
        key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        try:                                      # bare RSAPublicKey (the text of section 3.6.1)
            pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(data) + \
                  b"-----END RSA PUBLIC KEY-----\n"
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyRecordError("p= is not an RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyRecordError("p= is not an RSA public key")
    return key, key.key_size


def select_key_record(records: Sequence[bytes]) -> DkimKey:
    """The one usable key among the TXT records at a key name.

    Records that are not DKIM keys (other TXT data) are skipped; several usable keys is an
    error (we cannot tell which one the signer meant).  With no usable key, the error of the
    record that looked most like a key is raised.
    """
    keys: list[DkimKey] = []
    errors: list[KeyRecordError] = []
    for txt in records:
        try:
            keys.append(parse_key_record(txt))
        except KeyRecordError as exc:
            errors.append(exc)
    if len(keys) == 1:
        return keys[0]
    if len(keys) > 1:
        raise KeyRecordError(f"{len(keys)} key records at one name")
    if not errors:
        raise KeyRecordError("no key record")
    if len(errors) == 1:
        raise errors[0]
    revoked = [e for e in errors if e.revoked]
    if revoked:
        raise revoked[0]
    raise KeyRecordError(f"none of {len(errors)} TXT records is a usable key ({errors[0]})")


def check_key(key: DkimKey, sig: Signature, min_rsa_bits: int) -> str | None:
    """Why ``key`` may not verify ``sig`` (key type, h=, RFC 8301 size, t=s), or None."""
    if key.key_type != sig.key_type:
        return f"key type k={key.key_type} does not match a={sig.algorithm}"
    if key.hashes is not None and sig.hash_name not in key.hashes:
        return f"key h= does not allow {sig.hash_name}"
    if key.key_type == "rsa" and key.bits < min_rsa_bits:
        return f"RSA key of {key.bits} bits is below {min_rsa_bits} (RFC 8301 section 3.2)"
    if key.strict and sig.identity is not None:
        if sig.identity.rpartition("@")[2].lower() != sig.domain:
            return "key has t=s but i= is a subdomain of d="
    return None


def verify_digest(key: DkimKey, hash_name: str, header_digest: bytes, signature: bytes) -> bool:
    """Check ``signature`` over the hash of the header data: RSASSA-PKCS1-v1_5 (RFC 6376
    section 3.3.1) or, for Ed25519, a PureEdDSA signature of the SHA-256 digest (RFC 8463
    section 3)."""
    try:
        if key.key_type == "ed25519":
            key.public_key.verify(signature, header_digest)            # type: ignore[attr-defined]
        else:
            key.public_key.verify(signature, header_digest, padding.PKCS1v15(),  # type: ignore
                                  _PREHASHED[hash_name])
    except (InvalidSignature, ValueError):
        return False
    return True
