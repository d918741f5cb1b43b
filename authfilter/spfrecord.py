"""SPF records: selection and the syntax of their terms (RFC 7208 s. 4.5, 4.6.1, 5, 6, 7, 12).

Pure functions, no DNS: the domain doctor walks a record's include/redirect tree with them and
words its findings itself.  (The filter evaluates SPF with pyspf, :mod:`authfilter.checks.spf`.)

Rules (section numbers of RFC 7208; s. 12 collects the ABNF):

* A record is a TXT string whose version section is exactly ``v=spf1``, then a space or the end
  (s. 4.5); ``v=spf10`` and ``v=spf1-all`` are not SPF records.
* A term with ``=`` after a ``name`` is a modifier (s. 4.6.1: ``name = ALPHA *( ALPHA / DIGIT /
  "-" / "_" / "." )``, which cannot hold the ``:`` of a mechanism); anything else is a directive:
  an optional qualifier, then a mechanism (s. 4.6.2, 5).
* ``ip4``/``ip6`` take an address of their family and a prefix length without leading zeros
  (s. 5.6); ``a`` and ``mx`` an optional ``:domain-spec`` and ``dual-cidr-length`` (s. 5.3, 5.4);
  ``ptr`` an optional ``:domain-spec`` (s. 5.5); ``include`` and ``exists`` a ``:domain-spec``
  (s. 5.2, 5.7).
* A ``domain-spec`` is a macro-string ending in a domain name, or in a macro (s. 7.1).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

# The mechanisms that take a domain-spec and so query the DNS (s. 4.6.4, 5.2-5.5, 5.7).
DNS_MECHANISMS = ("include", "a", "mx", "ptr", "exists")

_MACRO = re.compile(r"%(?:\{[slodiphcrtv][0-9]*r?[.\-+,/_=]*\}|[%_-])", re.IGNORECASE)
_MODIFIER = re.compile(r"([a-z][a-z0-9._-]*)=(.*)\Z", re.IGNORECASE)
_MECHANISM = re.compile(r"([+?~-]?)([a-z0-9]+)(.*)\Z", re.IGNORECASE)
_CIDR_SUFFIX = re.compile(r"/[0-9]*(?://[0-9]*)?\Z|//[0-9]*\Z")
# s. 12: ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT), ip6-cidr-length likewise with 0*2DIGIT
_DUAL_CIDR = re.compile(r"(?:/(0|[1-9][0-9]?))?(?://(0|[1-9][0-9]{0,2}))?\Z")


@dataclass(frozen=True, slots=True)
class Modifier:
    """``name=value`` (s. 4.6.1; ``redirect`` and ``exp`` in s. 6)."""

    name: str           # lower-case
    value: str


@dataclass(frozen=True, slots=True)
class Mechanism:
    """``[qualifier]name[rest]`` (s. 4.6.2, 5): ``rest`` is what follows the name, e.g.
    ``:example.com/24``.  A term that is not even name-shaped has ``name == ""``."""

    qualifier: str      # as written: "" (meaning "+") or one of + - ? ~
    name: str           # lower-case
    rest: str

    @property
    def is_all(self) -> bool:
        return self.name == "all" and not self.rest


def spf_records(txt_records: Iterable[str | bytes]) -> list[str]:
    """s. 4.5: the TXT records whose version section is exactly ``v=spf1``."""
    out = []
    for raw in txt_records:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " "):
            out.append(text)
    return out


def terms(record: str) -> list[str]:
    """The terms after the version section (s. 4.6.1: separated by spaces)."""
    return record.split()[1:]


def parse_term(term: str) -> Modifier | Mechanism:
    mod = _MODIFIER.match(term)
    if mod:
        return Modifier(mod.group(1).lower(), mod.group(2))
    m = _MECHANISM.match(term)
    if m is None:
        return Mechanism("", "", term)
    return Mechanism(m.group(1), m.group(2).lower(), m.group(3))


def final_all(record: str) -> str | None:
    """The qualifier of the record's first ``all`` (s. 5.1: terms after it are never used),
    ``"+"`` when none is written; None without ``all``."""
    for term in terms(record):
        parsed = parse_term(term)
        if isinstance(parsed, Mechanism) and parsed.is_all:
            return parsed.qualifier or "+"
    return None


def has_macro(text: str) -> bool:
    """Does ``text`` use a macro (s. 7), so that what it names depends on the message?"""
    return _MACRO.search(text) is not None


def domain_target(mechanism: Mechanism) -> tuple[str | None, str] | None:
    """The ``domain-spec`` (None when absent: the current domain applies) and the CIDR suffix
    of a DNS mechanism, or None when the term is malformed (s. 4.6.1, 5.2-5.5, 5.7)."""
    target, cidr = mechanism.rest, ""
    if mechanism.name in ("a", "mx"):
        suffix = _CIDR_SUFFIX.search(target)
        if suffix:
            target, cidr = target[:suffix.start()], target[suffix.start():]
    if target and not target.startswith(":") or (mechanism.name in ("include", "exists")
                                                 and not target):
        return None
    return (target[1:] if target else None), cidr


def domain_spec_problem(spec: str) -> str | None:
    """Syntax of a domain-spec (s. 7.1): macro-string then a domain-end."""
    if not spec:
        return "empty domain"
    without = _MACRO.sub("", spec)
    if "%" in without:
        return f"{spec!r} has an invalid macro (RFC 7208 s. 7.1)"
    if any(not 0x21 <= ord(c) <= 0x7e for c in without):
        return f"{spec!r} has characters a domain-spec cannot hold"
    if _MACRO.search(spec.rstrip(".").rsplit(".", 1)[-1]):
        return None                                 # domain-end is a macro
    labels = spec.rstrip(".").split(".")
    if len(labels) < 2 or not is_toplabel(labels[-1]):
        return f"{spec!r} does not end in a domain name (RFC 7208 s. 7.1 domain-end)"
    return None


def is_toplabel(label: str) -> bool:
    """s. 7.1: toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" )
    alphanum ).  Plain string tests: the regex this once was took time quadratic in a long
    label that failed to match (a 20 KB ``include:`` took 12 s)."""
    if not label.isascii() or not label:
        return False
    if label.isalnum():
        return not label.isdigit()
    return label[0].isalnum() and label[-1].isalnum() and label.replace("-", "").isalnum()


def ip_problem(kind: str, rest: str) -> str | None:
    """Syntax of what follows ``ip4``/``ip6`` (s. 5.6): ``:address[/prefix-length]``."""
    if not rest.startswith(":"):
        return f"{kind} needs :ADDRESS"
    address, _, length = rest[1:].partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    if (ip.version == 4) != (kind == "ip4"):
        return f"{address} is not an IPv{kind[-1]} address"
    if length and (not (length.isascii() and length.isdigit()) or len(length) > 3 or
                   int(length) > ip.max_prefixlen or (len(length) > 1 and length[0] == "0")):
        return f"/{length} is not a valid prefix length"
    return None


def cidr_problem(cidr: str) -> str | None:
    """Syntax of a ``dual-cidr-length`` (s. 5.6): ``/0-32``, ``//0-128``, both, or nothing
    (ASCII digits without leading zeros, as s. 12 writes them and pyspf reads them)."""
    m = _DUAL_CIDR.match(cidr)
    if not m or (m.group(1) and int(m.group(1)) > 32) or (m.group(2) and int(m.group(2)) > 128):
        return f"bad prefix length {cidr!r}"
    return None
