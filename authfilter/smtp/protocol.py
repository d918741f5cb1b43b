"""SMTP grammar and replies without I/O: every rule here is a plain function call in a test.

Covers the parts of RFC 5321 a relaying proxy must understand itself: command lines, the
reverse-path / forward-path of MAIL and RCPT with their ESMTP parameters (RFC 1870 SIZE,
RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461 RET ENVID NOTIFY ORCPT, RFC 4954 AUTH), RFC 3461
xtext, Postfix's XFORWARD command, and multi-line replies (RFC 5321 s. 4.2).  Parameters are
checked, never rewritten: the proxy passes the client's MAIL and RCPT lines on unchanged.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

CRLF = b"\r\n"

# -- replies --------------------------------------------------------------------------------


def reply(code: int, text: str) -> bytes:
    """One reply, possibly multi-line: ``text`` lines are joined with ``code-`` continuation
    (RFC 5321 s. 4.2.1).  Replies carry RFC 3463 enhanced codes in ``text`` themselves."""
    lines = text.split("\n")
    out = [f"{code}-{line}" for line in lines[:-1]] + [f"{code} {lines[-1]}"]
    return ("\r\n".join(out) + "\r\n").encode("utf-8", "replace")


# Replies the proxy itself gives; codes and enhanced codes follow RFC 5321 s. 4.2 and RFC 3463.
OK = b"250 2.0.0 Ok\r\n"
RESET_OK = b"250 2.0.0 Ok\r\n"
START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
BYE = b"221 2.0.0 Bye\r\n"
NOT_RECOGNIZED = b"500 5.5.2 Error: command not recognized\r\n"
LINE_TOO_LONG = b"500 5.5.2 Error: line too long\r\n"
BAD_BYTES = b"500 5.5.2 Error: bad characters in command\r\n"
NOT_IMPLEMENTED = b"502 5.5.1 Error: command not implemented\r\n"
NEED_HELO = b"503 5.5.1 Error: send HELO/EHLO first\r\n"
NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
NESTED_MAIL = b"503 5.5.1 Error: nested MAIL command\r\n"
NO_VALID_RCPT = b"554 5.5.1 Error: no valid recipients\r\n"
TOO_MANY_RCPT = b"452 4.5.3 Error: too many recipients\r\n"
SIZE_EXCEEDED = b"552 5.3.4 Error: message file too big\r\n"
BARE_CR = b"550 5.5.2 Error: bare <CR> received\r\n"      # Postfix's words for a bare LF
VRFY_REPLY = b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
HELP_REPLY = b"214 2.0.0 See RFC 5321\r\n"
TIMEOUT = b"421 4.4.2 Error: timeout exceeded\r\n"
TOO_MANY_ERRORS = b"421 4.7.0 Error: too many errors\r\n"
TOO_MANY_SESSIONS = b"421 4.3.2 Too many connections, try again later\r\n"
TOO_MANY_FROM_CLIENT = b"421 4.7.0 Too many connections from your address, try again later\r\n"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down, try again later\r\n"
UPSTREAM_UNAVAILABLE = b"451 4.3.0 Service temporarily unavailable, try again later\r\n"
XFORWARD_DENIED = b"550 5.7.0 Error: insufficient authorization\r\n"
XFORWARD_IN_TRANSACTION = b"503 5.5.1 Error: MAIL transaction in progress\r\n"
TLS_READY = b"220 2.0.0 Ready to start TLS\r\n"
TLS_ALREADY = b"554 5.5.1 Error: TLS already active\r\n"


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply from the upstream server: code and text lines (without the code prefix)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def to_bytes(self) -> bytes:
        return reply(self.code, "\n".join(self.lines))

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400


class ReplyError(ValueError):
    """The upstream sent something that is not an SMTP reply."""


_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -]|\r?$)(.*?)\r?$", re.DOTALL)


def parse_reply_line(line: bytes) -> tuple[int, bool, str]:
    """``b"250-PIPELINING\\r\\n"`` -> ``(250, True, "PIPELINING")`` (True: more lines follow)."""
    m = _REPLY_LINE.match(line.rstrip(b"\n"))
    if m is None:
        raise ReplyError(f"not an SMTP reply line: {line[:80]!r}")
    return int(m.group(1)), m.group(2) == b"-", m.group(3).decode("utf-8", "replace")




# -- commands -------------------------------------------------------------------------------


def split_command(line: bytes) -> tuple[str, bytes]:
    """``b"mail FROM:<a@b>"`` -> ``("MAIL", b"FROM:<a@b>")``.  The verb is upper-cased ASCII;
    a verb with non-ASCII or control bytes comes back as ``""`` (not recognized)."""
    verb, _, arg = line.partition(b" ")
    if not verb.isalpha() or not verb.isascii():
        return "", arg
    return verb.decode("ascii").upper(), arg.strip(b" \t")


def has_bad_bytes(line: bytes) -> bool:
    """NUL and other control bytes have no place in a command line (RFC 5321 s. 4.1.1)."""
    return bool(_CONTROL.search(line))


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class SyntaxProblem(ValueError):
    """A command argument that breaks the grammar; ``reply`` is what to answer."""

    def __init__(self, reply_bytes: bytes):
        super().__init__(reply_bytes.decode("ascii", "replace").strip())
        self.reply = reply_bytes


@dataclass(frozen=True, slots=True)
class PathArgument:
    """The argument of MAIL FROM: or RCPT TO:."""

    address: str                                # without <>, source route removed; "" = null path
    params: tuple[tuple[str, str | None], ...] = field(default=())  # (KEYWORD, value or None)

    def param(self, keyword: str) -> str | None:
        for k, v in self.params:
            if k == keyword:
                return v if v is not None else ""
        return None


MAIL_PARAMETERS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"})
RCPT_PARAMETERS = frozenset({"NOTIFY", "ORCPT"})
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


def parse_path_argument(arg: bytes, prefix: str, *, allowed: frozenset[str],
                        null_allowed: bool) -> PathArgument:
    """Parse ``FROM:<addr> PARAM=value ...`` (``prefix`` = ``"FROM:"``) or ``TO:<addr> ...``.

    RFC 5321 s. 4.1.2 (Path, quoted local parts, source routes that are ignored per s. 3.3),
    s. 4.1.1.11 (parameters: 555 when not recognized).  Like Postfix, a space after the colon
    and an address without angle brackets are tolerated.
    """
    head = arg[:len(prefix)]
    if head.upper() != prefix.encode():
        raise SyntaxProblem(reply(501, f"5.5.4 Syntax: {'MAIL FROM' if prefix == 'FROM:' else 'RCPT TO'}:<address>"))
    rest = arg[len(prefix):].lstrip(b" ")
    if rest.startswith(b"<"):
        end = _closing_bracket(rest)
        if end < 0:
            raise SyntaxProblem(reply(501, "5.1.7 Bad address syntax: missing '>'"))
        raw_address, tail = rest[1:end], rest[end + 1:]
        if tail and not tail.startswith(b" "):
            raise SyntaxProblem(reply(501, "5.5.4 Bad syntax after the address"))
    else:
        raw_address, _, tail = rest.partition(b" ")
    if raw_address.startswith(b"@"):                    # <@a,@b:user@c>: ignore the route
        colon = raw_address.find(b":")
        if colon < 0:
            raise SyntaxProblem(reply(501, "5.1.7 Bad address syntax: bad source route"))
        raw_address = raw_address[colon + 1:]
    if not raw_address and not null_allowed:
        raise SyntaxProblem(reply(501, "5.1.3 Bad recipient address syntax"))
    address = raw_address.decode("utf-8", "replace")
    if any(c in address for c in "\r\n\x00"):
        raise SyntaxProblem(reply(501, "5.1.7 Bad address syntax"))
    return PathArgument(address, parse_parameters(tail, allowed))


def _closing_bracket(text: bytes) -> int:
    """Index of the '>' that closes the path, skipping quoted strings and quoted pairs."""
    first = text.find(b">")
    if first > 0 and b'"' not in text[:first] and b"\\" not in text[:first]:
        return first                                    # the usual path: nothing quoted
    i, quoted = 1, False
    while i < len(text):
        c = text[i]
        if c == 0x5C:                                   # backslash: quoted-pair
            i += 2
            continue
        if c == 0x22:
            quoted = not quoted
        elif c == 0x3E and not quoted:
            return i
        i += 1
    return -1


def parse_parameters(tail: bytes, allowed: frozenset[str]) -> tuple[tuple[str, str | None], ...]:
    """``SIZE=100 BODY=8BITMIME SMTPUTF8`` -> ``(("SIZE","100"),("BODY","8BITMIME"),("SMTPUTF8",None))``.

    Unknown keywords get 555 5.5.4 (RFC 5321 s. 4.1.1.11); a repeated keyword or a bad value
    for the keywords the proxy itself acts on (SIZE, BODY) gets 501 5.5.4.
    """
    params: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for word in tail.split():
        text = word.decode("utf-8", "replace")
        key, eq, value = text.partition("=")
        if not _KEYWORD.match(key) or (eq and not value):
            raise SyntaxProblem(reply(501, f"5.5.4 Bad parameter syntax: {text[:40]}"))
        key = key.upper()
        if key not in allowed:
            raise SyntaxProblem(reply(555, f"5.5.4 Unsupported option: {key[:40]}"))
        if key in seen:
            raise SyntaxProblem(reply(501, f"5.5.4 Duplicate parameter: {key}"))
        seen.add(key)
        params.append((key, value if eq else None))
    checks = dict(params)
    if "SIZE" in checks and not (checks["SIZE"] or "").isdigit():
        raise SyntaxProblem(reply(501, "5.5.4 Bad SIZE parameter"))
    if "BODY" in checks and (checks["BODY"] or "").upper() not in ("7BIT", "8BITMIME"):
        raise SyntaxProblem(reply(501, "5.5.4 Unsupported BODY parameter"))
    if "SMTPUTF8" in checks and checks["SMTPUTF8"] is not None:
        raise SyntaxProblem(reply(501, "5.5.4 SMTPUTF8 takes no value"))
    return tuple(params)


def helo_argument(arg: bytes) -> str | None:
    """The EHLO/HELO domain or address literal, or None when missing (501)."""
    name = arg.split(b" ", 1)[0]
    if not name:
        return None
    return name.decode("utf-8", "replace")


# -- xtext (RFC 3461 s. 4) -------------------------------------------------------------------
# xchar: "!".."~" except "+" and "="; hexchar: "+" and two hex digits (upper case in the RFC,
# lower case tolerated).
_XTEXT = re.compile(r"^(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*$")
_XCHARS = re.compile(r"^[!-*,-<>-~]*$")
_XTEXT_HEX = re.compile(rb"\+([0-9A-Fa-f]{2})")


def xtext_decode(value: str) -> str:
    """``"a+2Bb"`` -> ``"a+b"`` (escapes are UTF-8 bytes).  Raises ValueError on a '+' not
    followed by two hex digits or on characters xtext does not allow."""
    if not _XTEXT.match(value):
        raise ValueError(f"bad xtext: {value[:40]!r}")
    if "+" not in value:
        return value
    raw = _XTEXT_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), value.encode("ascii"))
    return raw.decode("utf-8", "replace")


def xtext_encode(value: str) -> str:
    """Characters outside ``!``..``~``, and ``+`` and ``=``, become ``+XX`` (UTF-8 bytes)."""
    if _XCHARS.match(value):
        return value
    return "".join(chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}"
                   for b in value.encode("utf-8"))


# -- XFORWARD (Postfix XFORWARD_README) -----------------------------------------------------
XFORWARD_ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
XFORWARD_EHLO_KEYWORD = "XFORWARD " + " ".join(XFORWARD_ATTRIBUTES)
_UNAVAILABLE = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")
MAX_XFORWARD_VALUE = 255
MAX_XFORWARD_LINE = 512                                 # RFC 5321 s. 4.5.3.1.4 command line


def parse_xforward(arg: bytes) -> dict[str, str | None]:
    """``NAME=mx.example ADDR=IPV6:2001:db8::1`` -> ``{"NAME": "mx.example", "ADDR": "2001:db8::1"}``.

    Values are xtext-decoded; ``[UNAVAILABLE]`` (any case) becomes ``None``; the ``IPV6:``
    prefix of ADDR is removed.  Raises :class:`SyntaxProblem` (501) on an unknown attribute,
    a missing ``=``, a value longer than 255 or bad xtext.
    """
    words = arg.split()
    if not words:
        raise SyntaxProblem(reply(501, "5.5.4 Syntax: XFORWARD attribute=value..."))
    attrs: dict[str, str | None] = {}
    for word in words:
        text = word.decode("utf-8", "replace")
        name, eq, value = text.partition("=")
        name = name.upper()
        if not eq or name not in XFORWARD_ATTRIBUTES:
            raise SyntaxProblem(reply(501, f"5.5.4 Bad XFORWARD attribute: {text[:40]}"))
        if len(value) > MAX_XFORWARD_VALUE:
            raise SyntaxProblem(reply(501, "5.5.4 XFORWARD attribute value too long"))
        try:
            decoded = xtext_decode(value) if value else ""
        except ValueError:
            raise SyntaxProblem(reply(501, f"5.5.4 Bad xtext in XFORWARD {name}")) from None
        if decoded.upper() in _UNAVAILABLE:
            attrs[name] = None
            continue
        if "+" in value and (not decoded.isprintable() or any(c.isspace() for c in decoded)):
            raise SyntaxProblem(reply(501, f"5.5.4 Bad characters in XFORWARD {name}"))
        if name == "ADDR" and decoded[:5].upper() == "IPV6:":
            decoded = decoded[5:]
        attrs[name] = decoded
    return attrs


def format_xforward(attrs: dict[str, str | None], supported: frozenset[str]) -> list[bytes]:
    """XFORWARD command lines for the attributes the upstream announced, each within 512 bytes.

    ``None`` values are sent as ``[UNAVAILABLE]``; an IPv6 ADDR gets the ``IPV6:`` prefix.
    """
    words = []
    for name in XFORWARD_ATTRIBUTES:
        if name not in attrs or name not in supported:
            continue
        value = attrs[name]
        if value is None:
            words.append(f"{name}=[UNAVAILABLE]")
            continue
        if name == "ADDR" and ":" in value:
            value = "IPV6:" + value
        words.append(f"{name}={xtext_encode(value)}")
    lines, current = [], "XFORWARD"
    for w in words:
        if len(current) + 1 + len(w) + 2 > MAX_XFORWARD_LINE and current != "XFORWARD":
            lines.append(current)
            current = "XFORWARD"
        current += " " + w
    if current != "XFORWARD":
        lines.append(current)
    return [(line + "\r\n").encode("ascii") for line in lines]


def xforward_client_ip(attrs: dict[str, str | None]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The forwarded client address when it is an IP address, else None."""
    addr = attrs.get("ADDR")
    if not addr:
        return None
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        return None


def ehlo_keywords(reply_obj: Reply) -> dict[str, str]:
    """An EHLO reply as ``{KEYWORD: parameters}`` (RFC 5321 s. 4.1.1.1), first line skipped."""
    out = {}
    for line in reply_obj.lines[1:]:
        key, _, params = line.partition(" ")
        out[key.upper()] = params
    return out
