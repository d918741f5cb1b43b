"""Author domains from the From header field, parsed strictly (RFC 5322 s. 3.4 and 3.6.2).

DMARC is only as good as the From parser in front of it: a mail user agent shows one address
while a lax parser evaluates another (references.md trap #6).  This module therefore parses the
full RFC 5322 grammar instead of searching for ``@``:

* address lists with display names, quoted strings with quoted-pairs, nested comments;
* group syntax, which RFC 6854 allows in From (its mailboxes are authors; an empty group has none);
* the obsolete forms RFC 5322 s. 4 says a parser must accept: empty list elements, words and
  periods mixed in display names (``John Q. Public``), CFWS around the dots of local parts and
  domains, source routes in angle addresses (``<@relay:user@example.com>``);
* RFC 2047 encoded words are decoded only in display names, after the structure is known, so an
  encoded ``<`` or ``@`` can never change which address is parsed (RFC 2047 s. 5: they are not
  allowed in an addr-spec, where they stay plain atoms);
* UTF-8 in local parts and domains (RFC 6532); the domain becomes an A-label (RFC 5890 s. 2.3.2.1,
  as RFC 9989 s. 5.3.1 requires), lower-cased, without a trailing dot.

Anything else (unbalanced ``<>``, unterminated quotes or comments, stray characters, address
literals, domains that are not DNS names) is a *problem*; callers decide what problems mean
(DMARC treats any as permerror).  Input longer than :data:`MAX_FIELD_LENGTH` is not parsed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from email.errors import MessageError
from email.header import decode_header, make_header
from functools import lru_cache
from typing import NamedTuple, Sequence

try:
    import idna as _idna            # IDNA 2008 + UTS #46 mapping, as mail user agents use
except ImportError:                 # the standard library's IDNA 2003 codec otherwise
    _idna = None

MAX_FIELD_LENGTH = 4_096            # characters of one unfolded From value we parse (~4 x the 998 line limit;
                                    # the parse costs ~3 us per token, on the event loop)

# atext plus UTF-8 (RFC 6532 s. 3.2); bytes that are not UTF-8 (surrogate-escaped) are tolerated
# too: legacy 8-bit display names are common, and a domain holding them fails normalize_domain.
_ATOM_OR_SPECIAL = re.compile(r"[ \t\r\n]*(?:([A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\U0010ffff]+)"
                              r"|([<>@,;:.]))")  # specials that are tokens of their own
_WSP = re.compile(r"[ \t\r\n]*")
_LDH_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z", re.ASCII)
_ASCII_NAME = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                         r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z", re.ASCII | re.IGNORECASE)
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=\Z")


class AddressError(ValueError):
    """The text is not what RFC 5322 allows; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    display_name: str | None        # decoded (RFC 2047), for logs only
    local_part: str                 # as written (quoted strings keep their quotes)
    domain: str                     # A-label form, lower case, no trailing dot


@dataclass(frozen=True, slots=True)
class AuthorAddresses:
    """What the From header field(s) of a message name as authors."""

    field_count: int
    mailboxes: tuple[Mailbox, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def domains(self) -> tuple[str, ...]:
        """Distinct author domains in order of appearance."""
        return tuple(dict.fromkeys(m.domain for m in self.mailboxes))


def author_addresses(from_values: Sequence[bytes | str]) -> AuthorAddresses:
    """Parse every From field value (bytes as in :class:`~authfilter.message.Message`).

    All fields are parsed even when there are several, so the caller can name the domains.
    """
    mailboxes: list[Mailbox] = []
    problems: list[str] = []
    for value in from_values:
        try:
            mailboxes.extend(parse_address_list(value))
        except AddressError as exc:
            problems.append(str(exc))
    return AuthorAddresses(len(from_values), tuple(mailboxes), tuple(problems))


def parse_address_list(value: bytes | str) -> list[Mailbox]:
    """Mailboxes of an RFC 5322 address-list (groups included); raises :class:`AddressError`."""
    if len(value) <= _MEMO_LENGTH:
        return list(_parse_short(value))
    return _parse(value)


# The same From values come again and again (each sender's, each list's): short ones are
# remembered, so a repeated value costs a dict lookup instead of ~10 us of parsing.
_MEMO_LENGTH = 256


@lru_cache(maxsize=4096)
def _parse_short(value: bytes | str) -> tuple[Mailbox, ...]:
    return tuple(_parse(value))


def _parse(value: bytes | str) -> list[Mailbox]:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")   # RFC 6532; stray bytes stay visible
    text = value.replace("\r\n", "")                         # unfold (RFC 5322 s. 2.2.3)
    if len(text) > MAX_FIELD_LENGTH:
        raise AddressError(f"field longer than {MAX_FIELD_LENGTH} characters; not parsed")
    return _Parser(_tokenize(text)).address_list()


def normalize_domain(text: str) -> str:
    """A domain as DMARC compares it: A-labels, lower case, no trailing dot.

    Raises :class:`AddressError` when it cannot be a DNS name (empty labels, labels over 63
    octets, names over 253, characters that are neither LDH/underscore nor valid IDNA).
    """
    name = text.strip().rstrip(".")
    if _ASCII_NAME.match(name) and len(name) <= 253:     # the usual case, in one regex
        return name.lower()
    if not name:
        raise AddressError("empty domain")
    labels: list[str] = []
    for label in name.split("."):
        if label.isascii():
            labels.append(label.lower())
        else:
            labels.extend(_to_alabel(label).split("."))
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise AddressError(f"domain {text!r}: {label!r} is not a valid DNS label")
    result = ".".join(labels)
    if len(result) > 253:
        raise AddressError(f"domain {text[:60]!r}...: longer than 253 octets")
    return result


def _to_alabel(label: str) -> str:
    try:
        if _idna is not None:
            return _idna.encode(label, uts46=True).decode("ascii")
        return label.encode("idna").decode("ascii")
    except (UnicodeError, ValueError) as exc:       # idna.IDNAError is a UnicodeError
        raise AddressError(f"domain label {label!r} is not a valid IDN: {exc}") from None


# -- tokens -----------------------------------------------------------------------------------
class _Token(NamedTuple):
    kind: str       # "atom", "quoted", "literal", or one of the specials '<>@,;:.'
    text: str       # the atom, the quoted string's content (unescaped), the literal
    raw: str        # as written


def _tokenize(text: str) -> list[_Token]:
    """Split into atoms, quoted strings, domain literals and specials; CFWS is dropped.

    Comments nest and may hold quoted-pairs (RFC 5322 s. 3.2.2); UTF-8 counts as atext, qtext,
    ctext and dtext (RFC 6532 s. 3.2).
    """
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        simple = _ATOM_OR_SPECIAL.match(text, i)
        if simple is not None:
            atom, special = simple.groups()
            tokens.append(_Token("atom", atom, atom) if atom else _Token(special, special, special))
            i = simple.end()
            continue
        i = _WSP.match(text, i).end()
        if i == n:
            break
        c = text[i]
        if c == "(":
            i = _skip_comment(text, i)
        elif c == ")":
            raise AddressError(f"unbalanced ')' at position {i}")
        elif c == '"':
            i = _quoted(text, i, tokens)
        elif c == "[":
            end = _bracketed_end(text, i)
            tokens.append(_Token("literal", text[i:end], text[i:end]))
            i = end
        else:
            raise AddressError(f"character {c!r} not allowed at position {i}")
    return tokens


def _skip_comment(text: str, i: int) -> int:
    depth, start = 0, i
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        elif c == "\x00":
            raise AddressError(f"NUL in comment at position {i}")
        i += 1
    raise AddressError(f"unterminated comment starting at position {start}")


def _quoted(text: str, i: int, tokens: list[_Token]) -> int:
    start, out = i, []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            tokens.append(_Token("quoted", "".join(out), text[start:i + 1]))
            return i + 1
        if c == "\x00":
            raise AddressError(f"NUL in quoted string at position {i}")
        out.append(c)               # qtext, WSP, obs-qtext and UTF-8 (RFC 6532)
        i += 1
    raise AddressError(f"unterminated quoted string starting at position {start}")


def _bracketed_end(text: str, i: int) -> int:
    start = i
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "]":
            return i + 1
        if c == "[" or c == "\x00":
            raise AddressError(f"{c!r} inside domain literal at position {i}")
        i += 1
    raise AddressError(f"unterminated domain literal starting at position {start}")


# -- grammar ----------------------------------------------------------------------------------
class _Parser:
    """Recursive descent over the tokens (RFC 5322 s. 3.4 plus obs- forms of s. 4.4)."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos].kind if self.pos < len(self.tokens) else None

    def take(self, kind: str) -> _Token:
        if self.peek() != kind:
            found = self.tokens[self.pos].raw if self.pos < len(self.tokens) else "end of field"
            raise AddressError(f"expected {kind!r}, found {found!r}")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def address_list(self) -> list[Mailbox]:
        boxes: list[Mailbox] = []
        while self.peek() is not None:
            if self.peek() == ",":                   # obs-addr-list: empty elements
                self.pos += 1
                continue
            boxes.extend(self.address(in_group=False))
            if self.peek() is not None:
                self.take(",")
        return boxes

    def address(self, *, in_group: bool) -> list[Mailbox]:
        words = self.phrase()
        kind = self.peek()
        if kind == "<":
            return [self.angle_addr(words)]
        if kind == "@":
            return [Mailbox(None, _local_part(words), self.addr_domain())]
        if kind == ":" and words:
            if in_group:
                raise AddressError("group inside a group")
            return self.group()
        if not words:
            raise AddressError(f"expected an address, found {self._here()!r}")
        raise AddressError(f"{_raw(words)!r} is not an address (no '@' or '<...>')")

    def group(self) -> list[Mailbox]:
        self.take(":")
        boxes: list[Mailbox] = []
        while self.peek() != ";":
            if self.peek() is None:
                raise AddressError("group not terminated by ';'")
            if self.peek() == ",":                   # obs-group-list
                self.pos += 1
                continue
            boxes.extend(self.address(in_group=True))
            if self.peek() not in (";", None):
                self.take(",")
        self.take(";")
        return boxes

    def phrase(self) -> list[_Token]:
        """Words, with the periods obs-phrase allows after the first word."""
        words: list[_Token] = []
        while self.peek() in ("atom", "quoted") or (self.peek() == "." and words):
            words.append(self.tokens[self.pos])
            self.pos += 1
        return words

    def angle_addr(self, display: list[_Token]) -> Mailbox:
        self.take("<")
        if self.peek() in ("@", ","):                # obs-route: "@a,@b:" before the addr-spec
            while self.peek() in ("@", ","):
                if self.take(self.peek()).kind == "@":
                    self.domain()
            self.take(":")
        if self.peek() == ">":
            raise AddressError("empty address '<>'")
        local = _local_part(self.phrase())
        domain = self.addr_domain()
        self.take(">")
        return Mailbox(_display_name(display), local, domain)

    def addr_domain(self) -> str:
        self.take("@")
        return self.domain()

    def domain(self) -> str:
        """dot-atom or obs-domain; a trailing dot is tolerated and removed."""
        if self.peek() == "literal":
            raise AddressError(f"address literal {self.tokens[self.pos].raw!r} has no domain name")
        parts = [self.take("atom").text]
        while self.peek() == ".":
            self.pos += 1
            if self.peek() != "atom":
                break                               # trailing dot ("example.com.")
            parts.append(self.take("atom").text)
        return normalize_domain(".".join(parts))

    def _here(self) -> str:
        return self.tokens[self.pos].raw if self.pos < len(self.tokens) else "end of field"


def _local_part(words: list[_Token]) -> str:
    """dot-atom, quoted-string or obs-local-part: word *("." word)."""
    if not words:
        raise AddressError("address without a local part")
    for index, token in enumerate(words):
        if (token.kind == ".") != (index % 2 == 1):
            raise AddressError(f"{_raw(words)!r} is not a valid local part")
    if words[-1].kind == ".":
        raise AddressError(f"{_raw(words)!r} is not a valid local part")
    return _readable("".join(t.raw for t in words))


def _readable(text: str) -> str:
    """Bytes that were not UTF-8 become U+FFFD, so the text can be logged and serialized."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _raw(words: list[_Token]) -> str:
    return _readable(" ".join(t.raw for t in words))


def _display_name(words: list[_Token]) -> str | None:
    """Display name for humans: quoted strings unescaped, RFC 2047 words decoded in atoms only."""
    if not words:
        return None
    pieces: list[str] = []
    previous_encoded = False
    for token in words:
        encoded = token.kind == "atom" and bool(_ENCODED_WORD.match(token.text))
        text = _decode_encoded_word(token.text) if encoded else token.text
        if pieces and token.kind != "." and not (encoded and previous_encoded):
            pieces.append(" ")                      # RFC 2047 s. 6.2: none between encoded words
        pieces.append(text)
        previous_encoded = encoded
    return _readable("".join(pieces))


def _decode_encoded_word(word: str) -> str:
    try:
        return str(make_header(decode_header(word)))
    except (MessageError, LookupError, UnicodeError, ValueError):
        # HeaderParseError, CharsetError (a charset name that is not one), unknown charsets,
        # bad base64 or quoted-printable: the word as written (RFC 2047 s. 6.3 allows it)
        return word
