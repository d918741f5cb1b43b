"""Authentication-Results (RFC 8601): build ours, remove forged ones.

We write the header ourselves rather than through the ``authres`` package: building is a few
string joins, and we need properties the package has no keyword for (``header.b``).  The tests parse what we write with ``authres`` to prove it is well formed.
Each check writes its own results (``Check.authres``, :mod:`authfilter.checks.base`) with
:func:`property_value` and :func:`comment`; this module puts them in one header.

Stripping (RFC 8601 §5): any Authentication-Results field whose authserv-id equals ours was not
written by us for this message (we add ours after stripping), so it is removed.  Only the
authserv-id is read, with a small grammar, not the whole header (parsing costs milliseconds).
"""
from __future__ import annotations

import re

from .message import fold_at_spaces, normalize_line_ends
from .results import SessionFacts, Verdict

HEADER_NAME = "Authentication-Results"
MAX_COMMENT = 200
MAX_PROPERTY = 320            # the longest domain is 253; local-part@domain may be 320

# RFC 2045 token: no CTLs, SPACE or tspecials.  RFC 8601 pvalue also allows "@" and "." inside.
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~@/]+$")
_COMMENT_SPECIAL = re.compile(r"[()\\]")          # quoted-pair'd inside a comment


def property_value(v: str) -> str:
    """A property value: bare when it is a token or local@domain, else a quoted-string.  An
    address longer than :data:`MAX_PROPERTY` is given as its domain (what SPF checked, RFC
    7208 s. 4.1), anything else that long is shortened, so that no line of the header can pass
    998 characters (RFC 5322 s. 2.1.1)."""
    if len(v) > MAX_PROPERTY:
        local, at, domain = v.rpartition("@")
        v = domain if at and len(domain) <= MAX_PROPERTY else v[:MAX_PROPERTY - 3] + "..."
    if v and _TOKEN.match(v) and v.count("@") <= 1:
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str | None) -> str:
    """`` (text)`` on one line, shortened and escaped as a comment; empty for no text."""
    if not text:
        return ""
    text = " ".join(text.split())  # one line: no CR/LF/tabs from DNS or library messages
    if len(text) > MAX_COMMENT:
        text = text[:MAX_COMMENT - 3] + "..."
    if not text.isascii():
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    if "(" in text or ")" in text or "\\" in text:
        text = _COMMENT_SPECIAL.sub(r"\\\g<0>", text)
    return " (" + text + ")"


def result_strings(facts: SessionFacts, verdict: Verdict) -> list[str]:
    """One ``method=result ...`` string per result, in the order they appear in the header:
    each check's own (:meth:`~authfilter.checks.base.Check.authres`), in registry order."""
    parts: list[str] = []
    for check, result in verdict.reported():
        parts += check.authres(result, facts)
    return parts


def build_header(authserv_id: str, facts: SessionFacts, verdict: Verdict) -> str:
    """The whole field, ending in CRLF: one result per line (after a tab), each folded at its
    spaces to stay within 78 columns where it can (RFC 5322 s. 2.1.1)."""
    results = (fold_at_spaces(r.encode("utf-8"), 1).decode("utf-8")
               for r in result_strings(facts, verdict))
    body = ";\r\n\t".join([property_value(authserv_id), *results])
    return f"{HEADER_NAME}: {body}\r\n"


def header_value(authserv_id: str, facts: SessionFacts, verdict: Verdict) -> str:
    """The same header unfolded on one line, without the field name (for logs and JSON)."""
    return "; ".join([property_value(authserv_id)] + result_strings(facts, verdict))


# -- stripping ------------------------------------------------------------------------------
_AR_NAME = re.compile(rb"authentication-results[ \t]*:", re.IGNORECASE)
_AUTHSERV_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[^ \t\r\n;()]+', re.DOTALL)


def _skip_cfws(value: bytes, i: int = 0) -> int:
    """Index of the first byte after folding whitespace and (nested) comments (RFC 5322 CFWS)."""
    depth = 0
    while i < len(value):
        c = value[i:i + 1]
        if c == b"\\" and depth:
            i += 2
            continue
        if c == b"(":
            depth += 1
        elif c == b")" and depth:
            depth -= 1
        elif not depth and c not in (b" ", b"\t", b"\r", b"\n"):
            return i
        i += 1
    return i


def authserv_id_of(value: bytes) -> str | None:
    """The authserv-id of an A-R field value (comments and folding before it skipped)."""
    m = _AUTHSERV_TOKEN.match(value, _skip_cfws(value))
    if m is None:
        return None
    ident = m.group(0)
    if ident.startswith(b'"'):
        ident = re.sub(rb"\\(.)", rb"\1", ident[1:-1])
    return ident.decode("utf-8", "replace").lower()


def strip_our_headers(raw: bytes, authserv_id: str) -> bytes:
    """Remove every Authentication-Results field claiming ``authserv_id`` (RFC 8601 §5)."""
    raw = normalize_line_ends(raw)
    end = 0 if raw.startswith(b"\r\n") else raw.find(b"\r\n\r\n")
    head_end = len(raw) if end < 0 else end + 2
    head = raw[:head_end]
    if not _AR_NAME.search(head):
        return raw
    fields: list[list[bytes]] = []           # each field: its first line and continuation lines
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    ours = authserv_id.lower()
    kept = [f for f in fields if not _claims(f, ours)]
    return b"\r\n".join(b"\r\n".join(f) for f in kept) + raw[head_end:]


def _claims(field_lines: list[bytes], ours: str) -> bool:
    m = _AR_NAME.match(field_lines[0])
    if m is None:
        return False
    value = b"\r\n".join(field_lines)[m.end():]
    return authserv_id_of(value) == ours
