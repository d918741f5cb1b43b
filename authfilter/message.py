"""Split a raw RFC 5322 message into header fields and body, once, in bulk.

Every check works from one :class:`Message`.  Line ends are normalised to CRLF first (bare LF
becomes CRLF, as dkimpy and OpenDKIM do), so canonicalization sees what went over the wire.
Header fields keep their exact bytes: ``(name, value)`` where ``name`` is everything before the
colon (obsolete WSP before the colon included, RFC 5322 s. 4.5.8, so simple canonicalization
sees it) and ``value`` everything after it, folding and the final CRLF included (the same shape
dkimpy uses).  Compare names with :func:`field_name`.

Nothing here raises on bad input: a line in the header block that is neither a field nor a
continuation is kept out of ``headers`` and described in ``errors``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

MAX_HEADER_FIELDS = 10_000          # past this the rest of the header block is ignored (errors says so)
_BARE_LF = re.compile(rb"\n(?<!\r\n)")    # starts with the literal LF: re scans for it at C speed
_FIELD_LINE = re.compile(rb"^([!-9;-~]+[ \t]*):", re.ASCII)   # RFC 5322 ftext, obs WSP before ':' kept


def normalize_line_ends(raw: bytes) -> bytes:
    """Bare LF -> CRLF; for proper CRLF input one C-speed search, and the same object back."""
    if _BARE_LF.search(raw) is None:
        return raw
    return _BARE_LF.sub(b"\r\n", raw)


@dataclass(slots=True)
class Message:
    raw: bytes                                   # CRLF-normalised whole message
    headers: list[tuple[bytes, bytes]]           # (name, value-after-colon incl. final CRLF)
    body: bytes                                  # after the empty line; b"" when there is none
    header_length: int                           # bytes of raw before the body
    errors: list[str] = field(default_factory=list)
    # field_name -> indexes into ``headers``, top first: every lookup by name is a dict get
    positions: dict[bytes, list[int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes, *, crlf_only: bool = False) -> "Message":
        """``crlf_only``: the caller knows that ``raw`` has no bare LF (the SMTP receiver notes
        them while it looks for the end of data), so the search for one is skipped."""
        if not crlf_only:
            raw = normalize_line_ends(raw)
        errors: list[str] = []
        if raw.startswith(b"\r\n"):
            head, body, header_length = b"", raw[2:], 2
        else:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                head = raw if raw.endswith(b"\r\n") or not raw else raw + b"\r\n"
                body, header_length = b"", len(raw)
                if raw:
                    errors.append("no empty line between header and body")
            else:
                head, body, header_length = raw[:end + 2], raw[end + 4:], end + 4
        headers: list[tuple[bytes, bytes]] = []
        positions: dict[bytes, list[int]] = {}
        for line in head.split(b"\r\n")[:-1] if head else ():
            if line[:1] in (b" ", b"\t"):
                if headers:
                    name, value = headers[-1]
                    headers[-1] = (name, value + line + b"\r\n")
                else:
                    errors.append("header block starts with a continuation line")
                continue
            if len(headers) >= MAX_HEADER_FIELDS:
                errors.append(f"more than {MAX_HEADER_FIELDS} header fields; the rest ignored")
                break
            m = _FIELD_LINE.match(line)
            if m is None:
                errors.append(f"malformed header line: {line[:60]!r}")
                continue
            positions.setdefault(field_name(m.group(1)), []).append(len(headers))
            headers.append((m.group(1), line[m.end():] + b"\r\n"))
        return cls(raw, headers, body, header_length, errors, positions)

    def get_all(self, name: bytes) -> list[bytes]:
        """Values of every field called ``name`` (case-insensitive), top to bottom."""
        headers = self.headers
        return [headers[i][1] for i in self.positions.get(name.lower(), ())]

    def count(self, name: bytes) -> int:
        return len(self.positions.get(name.lower(), ()))

    def indexes_of(self, names: Iterable[bytes]) -> list[int]:
        """Indexes into ``headers`` of every field with one of ``names`` (lower-case), top first."""
        found = [self.positions[n] for n in names if n in self.positions]
        return list(found[0]) if len(found) == 1 else sorted(i for f in found for i in f)


def field_name(name: bytes) -> bytes:
    """A field's name for comparisons: lower-case, without WSP before the colon."""
    return name.rstrip(b" \t").lower()


def unfold(value: bytes) -> bytes:
    """A header value with folding CRLFs removed and outer whitespace stripped (RFC 5322 s. 2.2.3)."""
    return value.replace(b"\r\n", b"").strip(b" \t")
