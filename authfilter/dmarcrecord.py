"""DMARC policy records: tag parsing and validation (RFC 9989 s. 4.7-4.8; RFC 7489 s. 6.3-6.4
with RFC 9091 s. 3.2).

Pure functions, no DNS: the evaluator, the report builder and the domain doctor share them.

Rules applied (RFC 9989 unless the mode is ``"rfc7489"``):

* A record must start with ``v=DMARC1`` (value case-sensitive; s. 4.7 ``v``).  Anything else is
  not a DMARC record and is discarded; several DMARC records at one name are all discarded
  (s. 4.10 step 2; RFC 7489 s. 6.6.3 step 5).
* Tag names are matched case-insensitively, as are keyword values (RFC 5234 quoted strings are
  case-insensitive); unknown tags are ignored (s. 4.7).  A repeated tag keeps its first value.
* Invalid values of ``adkim aspf fo psd t`` (and ``pct rf ri`` in RFC 7489 mode) fall back to the
  default (s. 4.8: "discarded in favor of default values").
* ``p``: absent -> ``none`` (s. 4.7 ``p``).  An invalid ``p`` (RFC 7489: absent or invalid), or an
  invalid ``sp``/``np``: if ``rua`` holds a valid URI the record acts as ``p=none``; otherwise no
  DMARC processing applies (s. 4.10.1), which :attr:`DmarcRecord.policy_error` reports and the
  evaluator turns into ``permerror`` (s. 9.2: "improperly formatted DMARC Policy Record").
* RFC 9989 ignores the historic ``pct rf ri``; RFC 7489 mode ignores ``psd t``.  It reads
  ``np``, which RFC 9091 s. 3.2 added to RFC 7489 ("Its syntax is identical to that of the 'p'
  tag"), so an invalid ``np`` is treated as an invalid ``sp`` is (RFC 7489 s. 6.6.3 step 6), as
  RFC 9989 s. 4.10.1 does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

MODES = ("rfc9989", "rfc7489")
POLICIES = ("none", "quarantine", "reject")

_VERSION = re.compile(r"[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")
_TAG = re.compile(r"([A-Za-z]+)[ \t]*=(.*)\Z", re.DOTALL)   # each tag's rule checks its value
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@$&'()*+=]|%[0-9A-Fa-f]{2})+"
                  r"(?:![0-9]+[kmgtKMGT]?)?\Z")      # obs-dmarc-report-size accepted, then dropped
_TAGS_9989 = frozenset("v p sp np adkim aspf fo psd t rua ruf".split())
_TAGS_7489 = frozenset("v p sp np adkim aspf fo pct rf ri rua ruf".split())


@dataclass(frozen=True, slots=True)
class RecordError:
    """The text is not a (single) DMARC record."""

    reason: str


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """One parsed record.  ``p``/``sp``/``np`` are the policies in force after the fallback rules
    (``sp``/``np`` are ``None`` when not published); ``tags`` is what was published.
    Parsed records are cached and shared: treat ``tags`` as read-only."""

    tags: dict[str, str]
    p: str = "none"
    sp: str | None = None
    np: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    psd: str = "u"
    testing: bool = False                       # t=y
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: tuple[str, ...] = ("0",)
    pct: int = 100                              # RFC 7489 only
    rf: tuple[str, ...] = ("afrf",)             # RFC 7489 only
    ri: int = 86400                             # RFC 7489 only
    policy_error: str | None = None             # set: no DMARC processing (s. 4.10.1)
    problems: tuple[str, ...] = field(default=())

    def policy_for(self, relation: str) -> str:
        """The policy for an Author Domain that is the record's own domain (``"self"``), an
        existing subdomain (``"subdomain"``) or a non-existent one (``"nonexistent"``)
        (s. 4.7 ``np`` ``sp``, s. 4.10.1)."""
        if relation == "self":
            return self.p
        if relation == "subdomain":
            return self.sp or self.p
        if relation == "nonexistent":
            return self.np or self.sp or self.p
        raise ValueError(f"unknown relation {relation!r}")

    @property
    def needs_existence_check(self) -> bool:
        """Only an ``np`` that differs from the subdomain policy makes existence matter."""
        return self.np is not None and self.np != (self.sp or self.p)


def is_dmarc_record(text: str | bytes) -> bool:
    """Does the TXT string start with the DMARC version tag (s. 4.7 ``v``)?"""
    return bool(_VERSION.match(_as_text(text)))


def parse_record(text: str | bytes, *, mode: str = "rfc9989") -> DmarcRecord | RecordError:
    """Parse one TXT string (character-strings already joined, s. 4.5)."""
    if mode not in MODES:
        raise ValueError(f"unknown DMARC mode {mode!r}")
    text = _as_text(text)
    version = _VERSION.match(text)
    if version is None:
        return RecordError("not a DMARC record: it does not start with v=DMARC1")
    tags: dict[str, str] = {"v": "DMARC1"}
    problems: list[str] = []
    for segment in text[version.end():].split(";"):
        segment = segment.strip(" \t")
        if not segment:
            continue
        m = _TAG.match(segment)
        if m is None:
            problems.append(f"malformed tag {segment[:40]!r} ignored")
            continue
        name, value = m.group(1).lower(), m.group(2).strip(" \t")
        if name in tags:
            problems.append(f"tag {name} repeated; first value kept")
            continue
        tags[name] = value
    known = _TAGS_9989 if mode == "rfc9989" else _TAGS_7489
    for name in tags:
        if name not in known:
            problems.append(f"tag {name} is not used by {mode.upper()}; ignored")
    return _build(tags, mode, problems)


def select_record(txt_records: Iterable[str | bytes], *, mode: str = "rfc9989"
                  ) -> DmarcRecord | RecordError | None:
    """The DMARC record among the TXT records at one ``_dmarc`` name.

    ``None``: no DMARC record; :class:`RecordError`: several, all discarded (s. 4.10 step 2).
    """
    dmarc = [t for t in txt_records if is_dmarc_record(t)]
    if not dmarc:
        return None
    if len(dmarc) > 1:
        return RecordError(f"{len(dmarc)} DMARC records at one name; all discarded")
    return parse_record(dmarc[0], mode=mode)


def _as_text(text: str | bytes) -> str:
    # Values are printable ASCII (s. 4.8 dmarc-value); other bytes become U+FFFD and fail checks.
    return text.decode("ascii", "replace") if isinstance(text, bytes) else text


def _build(tags: dict[str, str], mode: str, problems: list[str]) -> DmarcRecord:
    def keyword(name: str, allowed: tuple[str, ...], default: str) -> str:
        value = tags.get(name)
        if value is None:
            return default
        if value.lower() in allowed:
            return value.lower()
        problems.append(f"{name}={value} is not valid; default {name}={default} used")
        return default

    values: dict = {
        "adkim": keyword("adkim", ("r", "s"), "r"),
        "aspf": keyword("aspf", ("r", "s"), "r"),
        "rua": _uris(tags, "rua", problems),
        "ruf": _uris(tags, "ruf", problems),
        "fo": failure_options(tags, problems),
    }
    if mode == "rfc9989":
        values["psd"] = keyword("psd", ("y", "n", "u"), "u")
        values["testing"] = keyword("t", ("y", "n"), "n") == "y"
        values["pct"] = 100
    else:
        values["pct"] = _number(tags, "pct", 100, 100, problems)
        values["ri"] = _number(tags, "ri", 86400, 2**32 - 1, problems)
        values["rf"] = tuple(f.strip().lower() for f in tags.get("rf", "afrf").split(":"))

    p, policy_problem = _policies(tags, mode)
    values.update(p)
    policy_error = None
    if policy_problem:
        if values["rua"]:
            problems.append(f"{policy_problem}; acting as p=none because rua is valid")
            values.update(p="none", sp=None, np=None)
        else:
            policy_error = f"{policy_problem} and no valid rua: no DMARC processing"
    return DmarcRecord(tags=tags, policy_error=policy_error, problems=tuple(problems), **values)


def _policies(tags: dict[str, str], mode: str) -> tuple[dict[str, str | None], str | None]:
    """p/sp/np as published, and what is wrong with them (s. 4.10.1; RFC 7489 s. 6.6.3 step 6)."""
    out: dict[str, str | None] = {"p": "none", "sp": None, "np": None}
    bad: list[str] = []
    for name in ("p", "sp", "np"):
        value = tags.get(name)
        if value is None:
            if name == "p" and mode == "rfc7489":
                bad.append("p is missing")          # RFC 7489 s. 6.3: REQUIRED
            continue
        if value.lower() in POLICIES:
            out[name] = value.lower()
        else:
            bad.append(f"{name}={value} is not valid")
    return out, ", ".join(bad) or None


def _uris(tags: dict[str, str], name: str, problems: list[str]) -> tuple[str, ...]:
    """Valid DMARC URIs of rua/ruf, without the obsolete size suffix (s. 4.8 dmarc-urilist)."""
    value = tags.get(name)
    if value is None:
        return ()
    valid: list[str] = []
    for uri in value.split(","):
        uri = uri.strip(" \t")
        if _URI.match(uri):
            valid.append(uri.split("!", 1)[0])
        else:
            problems.append(f"{name}: {uri[:60]!r} is not a valid URI; ignored")
    return tuple(valid)


def failure_options(tags: dict[str, str], problems: list[str]) -> tuple[str, ...]:
    """fo: colon-separated 0/1/d/s, 0 and 1 exclusive, each at most once (s. 4.8 dmarc-fo)."""
    value = tags.get("fo")
    if value is None:
        return ("0",)
    options = [o.strip(" \t").lower() for o in value.split(":")]
    if (all(o in ("0", "1", "d", "s") for o in options) and len(set(options)) == len(options)
            and not {"0", "1"} <= set(options)):
        return tuple(options)
    problems.append(f"fo={value} is not valid; default fo=0 used")
    return ("0",)


def _number(tags: dict[str, str], name: str, default: int, maximum: int,
            problems: list[str]) -> int:
    value = tags.get(name)
    if value is None:
        return default
    # ASCII digits only, and few enough for int() (over 4300 digits it raises ValueError)
    digits = value.lstrip("0") or "0"
    if value.isascii() and value.isdigit() and len(digits) <= len(str(maximum)) \
            and int(digits) <= maximum:
        return int(digits)
    problems.append(f"{name}={value} is not valid; default {name}={default} used")
    return default
