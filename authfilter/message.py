"""Split a raw RFC 5322 message into header fields and body, once, in bulk.

Every check works from one :class:`Message`.  Line ends are normalised to CRLF first (bare LF
becomes CRLF, as dkimpy and OpenDKIM do), so canonicalization sees what went over the wire.
Header fields keep their exact bytes: ``(name, value)`` where ``name`` is everything before the
colon (obsolete WSP before the colon included, RFC 5322 s. 4.5.8, so simple canonicalization
sees it) and ``value`` everything after it, folding and the final CRLF included (the same shape
dkimpy uses).  Compare names with :func:`field_name`.

Nothing here raises on bad input: a line in the header block that is neither a field nor a
continuation is kept out of ``headers`` and described in ``errors``.

Parsing is linear in the size of the header block, however often a field is folded; still, a
1.6 MB header costs a quarter of a second, so three limits bound what a message may carry
(:func:`header_limit_problem`, which front-ends ask before parsing, C-speed counting only):
:data:`MAX_HEADER_BYTES` of header block, :data:`MAX_FIELD_LINES` lines in one field and
:data:`MAX_HEADER_FIELDS` fields.  :meth:`Message.parse` itself never refuses: over a limit it
describes the problem in ``errors`` (and past :data:`MAX_HEADER_FIELDS` ignores the rest).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import repeat
from typing import Iterable

MAX_HEADER_FIELDS = 10_000          # past this the rest of the header block is ignored (errors says so)
MAX_HEADER_BYTES = 256 * 1024       # header block, its empty line included (Exchange Online's limit)
MAX_FIELD_LINES = 1_000             # lines of one field: its first line and continuation lines
HEADER_TOO_BIG = f"message header over {MAX_HEADER_BYTES} bytes"
MAX_ERRORS = 20                     # problems described per message; the rest are counted
_BARE_LF = re.compile(rb"\n(?<!\r\n)")    # starts with the literal LF: re scans for it at C speed
_FIELD_LINE = re.compile(rb"^([!-9;-~]+[ \t]*):", re.ASCII)   # RFC 5322 ftext, obs WSP before ':' kept
_FIELD_START = re.compile(rb"\r\n(?![ \t])")    # the line end before a field's first line


def normalize_line_ends(raw: bytes) -> bytes:
    """Bare LF -> CRLF; for proper CRLF input one C-speed search, and the same object back."""
    if _BARE_LF.search(raw) is None:
        return raw
    return _BARE_LF.sub(b"\r\n", raw)


def header_limit_problem(raw: bytes) -> str | None:
    """Which limit the header block of ``raw`` (CRLF lines, as :meth:`Message.parse` takes it)
    goes over, as a phrase for a reply (``"message header over 262144 bytes"``), or None.

    For front-ends, before anything parses the message: a bounded search for the empty line
    and three counts at C speed (about 2 us for a usual header); only a header with more
    continuation lines in all than one field may have is split into fields, also in C
    (a few ms for a 256 KB header of short lines; parsing it takes ten times that).
    """
    if raw.startswith(b"\r\n"):
        return None
    end = raw.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        if len(raw) > MAX_HEADER_BYTES:
            return HEADER_TOO_BIG
        end = len(raw)                               # no body: all of it is header
    folds = raw.count(b"\r\n ", 0, end) + raw.count(b"\r\n\t", 0, end)
    if raw.count(b"\r\n", 0, end) + 1 - folds > MAX_HEADER_FIELDS:
        return f"message header with more than {MAX_HEADER_FIELDS} fields"
    if folds >= MAX_FIELD_LINES and max(map(bytes.count, _FIELD_START.split(raw[:end]),
                                            repeat(b"\r\n"))) >= MAX_FIELD_LINES:
        return f"message header field with more than {MAX_FIELD_LINES} lines"
    return None


def _note(errors: list[str], problem: str) -> None:
    """Describe a problem with the message, up to :data:`MAX_ERRORS` of them (a header of a
    million bad lines must not make a million strings)."""
    if len(errors) < MAX_ERRORS:
        errors.append(problem)
    elif len(errors) == MAX_ERRORS:
        errors.append("more problems in the header block, not listed")


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
        if header_length > MAX_HEADER_BYTES:
            _note(errors, f"header block of {header_length} bytes (limit {MAX_HEADER_BYTES})")
        headers: list[tuple[bytes, bytes]] = []
        positions: dict[bytes, list[int]] = {}
        # A field's continuation lines are collected and joined once, when the next field
        # starts: linear in the header's size however often a field is folded.
        folded: list[bytes] | None = None        # the last field's lines while it has several
        for line in head.split(b"\r\n")[:-1] if head else ():
            if line[:1] in (b" ", b"\t"):
                if not headers:
                    _note(errors, "header block starts with a continuation line")
                elif folded is None:
                    folded = [headers[-1][1], line, b"\r\n"]
                else:
                    folded += (line, b"\r\n")
                continue
            if folded is not None:
                _fold_limit(errors, headers[-1][0], folded)
                headers[-1] = (headers[-1][0], b"".join(folded))
                folded = None
            if len(headers) >= MAX_HEADER_FIELDS:
                _note(errors, f"more than {MAX_HEADER_FIELDS} header fields; the rest ignored")
                break
            m = _FIELD_LINE.match(line)
            if m is None:
                _note(errors, f"malformed header line: {line[:60]!r}")
                continue
            positions.setdefault(field_name(m.group(1)), []).append(len(headers))
            headers.append((m.group(1), line[m.end():] + b"\r\n"))
        if folded is not None:
            _fold_limit(errors, headers[-1][0], folded)
            headers[-1] = (headers[-1][0], b"".join(folded))
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


def _fold_limit(errors: list[str], name: bytes, folded: list[bytes]) -> None:
    """``folded``: a field's value pieces, [first line, line, CRLF, line, CRLF, ...]."""
    lines = (len(folded) + 1) // 2
    if lines > MAX_FIELD_LINES:
        shown = name[:40].decode("ascii", "replace")
        _note(errors, f"header field {shown} has {lines} lines (limit {MAX_FIELD_LINES})")


def field_name(name: bytes) -> bytes:
    """A field's name for comparisons: lower-case, without WSP before the colon."""
    return name.rstrip(b" \t").lower()


def unfold(value: bytes) -> bytes:
    """A header value with folding CRLFs removed and outer whitespace stripped (RFC 5322 s. 2.2.3)."""
    return value.replace(b"\r\n", b"").strip(b" \t")


# -- edits --------------------------------------------------------------------------------
LINE_COLUMNS = 78                   # RFC 5322 s. 2.1.1: lines SHOULD be no longer
MAX_LINE = 998                      # ... and MUST be no longer (without the CRLF)


def fold_at_spaces(value: bytes, column: int) -> bytes:
    """``value`` with a CRLF put before some of its spaces, so that lines, the first starting
    at ``column``, stay within :data:`LINE_COLUMNS` where a space allows it.  Removing the
    CRLFs gives ``value`` back (RFC 5322 s. 2.2.3 unfolding), and relaxed canonicalization
    (RFC 6376 s. 3.4.2) sees the same bytes folded or not."""
    if column + len(value) <= LINE_COLUMNS:
        return value
    words = value.split(b" ")
    lines, line, used = [], words[0], column + len(words[0])
    for word in words[1:]:
        if line and used + 1 + len(word) > LINE_COLUMNS:
            lines.append(line)
            line, used = word, 1 + len(word)
        else:
            line += b" " + word
            used += 1 + len(word)
    lines.append(line)
    return b"\r\n ".join(lines)

HeaderField = tuple[str, str]
"""``(name, value)`` of a field we add: ``value`` is what follows ``name: `` (no leading space),
folded with CRLF + WSP where it is long, without the final CRLF.  Every writer renders it as
``name: value CRLF`` (:func:`render_fields`), which is also what our signatures hash."""


def render_fields(fields: Iterable[HeaderField]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("utf-8") for name, value in fields)


def split_field(field_bytes: bytes) -> HeaderField:
    """``b"Name: value\\r\\n"`` (as our signers make them) -> ``("Name", "value")``."""
    name, _, value = field_bytes.partition(b":")
    return name.decode("ascii"), value.removeprefix(b" ").removesuffix(b"\r\n").decode("utf-8")


def removal_of(message: Message, indexes: Iterable[int]) -> list[tuple[str, int]]:
    """``(field name, 1-based index among the fields of that name)`` of the fields at
    ``indexes`` of ``message.headers``: the form a milter's SMFIR_CHGHEADER takes, and a
    proxy applies with :func:`remove_from_head`.  Highest index of a name first, so that a
    receiver applying them one after the other does not shift the ones still to come."""
    out = []
    for i in indexes:
        name = message.headers[i][0]
        nth = message.positions[field_name(name)].index(i) + 1
        out.append((name.rstrip(b" \t").decode("ascii"), nth))
    return sorted(out, key=lambda r: (r[0].lower(), -r[1]))


def remove_from_head(head: bytes, remove: Iterable[tuple[str, int]]) -> bytes:
    """The header block ``head`` (CRLF lines) without the fields ``remove`` names, each with
    its continuation lines; every other line, even one that is not a field, is kept as it is.
    Fields are counted per name as :meth:`Message.parse` counts them."""
    doomed: dict[bytes, set[int]] = {}
    for name, nth in remove:
        doomed.setdefault(name.lower().encode("ascii"), set()).add(nth)
    if not doomed:
        return head
    seen: dict[bytes, int] = {}
    out: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        m = _FIELD_LINE.match(line)
        dropping = False
        if m is not None:
            name = field_name(m.group(1))
            seen[name] = seen.get(name, 0) + 1
            dropping = seen[name] in doomed.get(name, ())
        if not dropping:
            out.append(line)
    return b"".join(line + b"\r\n" for line in out)


def with_fields_on_top(message: Message, fields: Iterable[HeaderField]) -> Message:
    """``message`` with ``fields`` inserted at the top (the same object when none)."""
    top = render_fields(fields)
    if not top:
        return message
    head = Message.parse(top + message.raw[:message.header_length], crlf_only=True)
    return Message(top + message.raw, head.headers, message.body, len(top) + message.header_length,
                   list(message.errors), head.positions)


def without_fields(message: Message, indexes: Iterable[int]) -> Message:
    """``message`` without the header fields at ``indexes`` (the same object when none)."""
    gone = set(indexes)
    if not gone:
        return message
    head = remove_from_head(message.raw[:message.header_length], removal_of(message, gone))
    kept = [h for i, h in enumerate(message.headers) if i not in gone]
    positions: dict[bytes, list[int]] = {}
    for i, (name, _) in enumerate(kept):
        positions.setdefault(field_name(name), []).append(i)
    return Message(head + message.body, kept, message.body, len(head), list(message.errors),
                   positions)
