"""Where a report may go: ``rua``/``ruf`` URIs, external-destination checks, suppression.

* URIs (RFC 9989 ``rua``; RFC 9990 "Transport"): a comma-separated list of URIs; only
  ``mailto:`` is supported, with an optional size limit ``!<n>[kmgt]`` after it.
* External destinations (RFC 9990 "Verifying External Destinations"): when the destination
  host is not in the policy's organizational domain, ``<policy-domain>._report._dmarc.<host>``
  must hold a TXT record starting with ``v=DMARC1``; its own ``rua=`` may replace the URI if
  it keeps the host.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from ..dns import Resolver

_SIZE = re.compile(r"^(\d+)([kmgt]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class ReportUri:
    address: str              # local@host, as given (local part case kept)
    max_bytes: int | None     # the URI's size limit, None = none

    @property
    def host(self) -> str:
        return self.address.rpartition("@")[2].lower().rstrip(".")

    def fits(self, size: int) -> bool:
        """RFC 9990 "Transport": a URI whose limit the report exceeds "MUST NOT be used"."""
        return self.max_bytes is None or size <= self.max_bytes


@dataclass
class Destinations:
    """The outcome of checking a report's URIs."""

    uris: list[ReportUri]
    skipped: list[str]        # why URIs were left out, for the log
    retry: bool = False       # a DNS failure: ask again later rather than give up


def parse_uris(value: str | None) -> tuple[list[ReportUri], list[str]]:
    """``rua``/``ruf`` -> (mailto URIs, problems).  Other schemes are reported as problems."""
    uris, problems = [], []
    for raw in (value or "").split(","):
        raw = raw.strip()
        if not raw:
            continue
        uri, bang, size = raw.partition("!")
        max_bytes = None
        if bang:
            m = _SIZE.match(size.strip())
            if not m:
                problems.append(f"{raw}: bad size limit")
                continue
            max_bytes = int(m.group(1)) * _UNITS[m.group(2).lower()]
        scheme, colon, rest = uri.partition(":")
        if not colon or scheme.lower() != "mailto":
            problems.append(f"{raw}: only mailto: URIs are supported")
            continue
        address = unquote(rest.partition("?")[0]).strip()       # RFC 6068: no hfields here
        local, at, host = address.rpartition("@")
        if not at or not local or not host or " " in address or "," in address:
            problems.append(f"{raw}: not a mail address")
            continue
        uris.append(ReportUri(address, max_bytes))
    return uris, problems


def within(domain: str, parent: str) -> bool:
    return domain == parent or domain.endswith("." + parent)


def is_suppressed(entries: list[str], *, domain: str | None = None,
                  address: str | None = None) -> bool:
    """The suppression list names domains (matching subdomains too) and addresses."""
    for entry in entries:
        entry = entry.lower().strip().lstrip(".")
        if "@" in entry:
            if address and address.lower() == entry:
                return True
        elif (domain and within(domain.lower(), entry)) or \
                (address and within(address.rpartition("@")[2].lower(), entry)):
            return True
    return False


def _authorization_records(answer_records: tuple) -> list[dict[str, str]]:
    """RFC 9990 "Verifying External Destinations" step 6: tag lists whose first tag is
    ``v=DMARC1``."""
    found = []
    for txt in answer_records:
        text = txt.decode("utf-8", "replace") if isinstance(txt, bytes) else str(txt)
        tags: dict[str, str] = {}
        for i, part in enumerate(p for p in text.split(";") if p.strip()):
            name, eq, value = part.partition("=")
            name, value = name.strip(), value.strip()
            if i == 0 and (name != "v" or value != "DMARC1"):
                break
            if eq:
                tags.setdefault(name, value)
        else:
            if tags.get("v") == "DMARC1":
                found.append(tags)
    return found


async def authorized(uris: list[ReportUri], policy_domain: str, org_domain: str,
                     resolver: Resolver, tag: str = "rua") -> Destinations:
    """The URIs a report may be sent to (RFC 9990 "Verifying External Destinations")."""
    out = Destinations([], [])
    org_domain = org_domain or policy_domain
    for uri in uris:
        host = uri.host
        if within(host, org_domain):
            out.uris.append(uri)
            continue
        try:
            name = f"{policy_domain.encode('idna').decode()}._report._dmarc.{host}"
        except UnicodeError:
            out.skipped.append(f"{uri.address}: {policy_domain} has no A-label form")
            continue
        if len(name) > MAX_NAME:
            out.skipped.append(f"{uri.address}: {name[:60]}... is too long to ask (step 4)")
            continue
        answer = await resolver.query(name, "TXT")
        if answer.status == "temperror":
            out.retry = True
            out.skipped.append(f"{uri.address}: {name}: DNS failure, will retry")
            continue
        records = _authorization_records(answer.records) if answer.ok else []
        if not records:
            out.skipped.append(f"{uri.address}: not authorized: no v=DMARC1 record at {name}")
            continue
        override = records[0].get(tag)
        if not override:
            out.uris.append(uri)
            continue
        replacements, _ = parse_uris(override)
        if not replacements or any(r.host != host for r in replacements):
            # "MUST NOT generate a report to either the original or the override URI"
            out.skipped.append(f"{uri.address}: {name} overrides it with another host")
            continue
        out.uris.extend(replacements)
    return out
