"""One stored row per DMARC evaluation: what RFC 9990 "Aggregate Reports" asks a report to carry.

A row is a plain tuple (``EvaluationRow``) in the store's column order, built in a few
microseconds because it is made in the SMTP path.  Multi-valued fields are encoded as text so
that identical messages give identical rows and the store can group them with ``GROUP BY``
(RFC 9990: one record per distinct row):

* ``dkim``: one ``domain TAB selector TAB result`` line per signature, in the order of
  RFC 9990 "DKIM Signatures in Aggregate Reports" (passing and aligned first), at most 100;
* ``reasons``: one ``type TAB comment`` line per policy override reason;
* ``policy``: the record's tags that a report shows or needs, as ``tag=value;...``.
"""
from __future__ import annotations

import ipaddress
from typing import NamedTuple

from ..results import SessionFacts, Verdict, ip_text

# RFC 9990 "Policy Override Reason": the types a report may carry.
OVERRIDE_TYPES = frozenset({"local_policy", "mailing_list", "other", "policy_test_mode",
                            "trusted_forwarder"})
DISPOSITIONS = ("none", "quarantine", "reject")
# RFC 9990 "DKIM Signatures in Aggregate Reports": "SHOULD contain no more than 100
# signatures for a given row".
MAX_SIGNATURES = 100
# Tags of the DMARC record kept with each row (policy_published, rua, ruf, and RFC 7489 pct).
POLICY_TAGS = ("p", "sp", "np", "adkim", "aspf", "fo", "t", "psd", "pct", "rua", "ruf")
MAX_COMMENT = 200
# The override comment of a DMARC temperror row: the same text for every such row, so that
# identical messages still group (the DNS error itself differs from one message to the next).
TEMPERROR_COMMENT = "DMARC temperror: a check failed for now, so the policy could not be applied"

_SPF_SCOPE = {"mailfrom": "mfrom", "helo": "helo"}
_RECORDED = frozenset({"pass", "fail", "temperror"})
_CLEAN = str.maketrans({"\t": " ", "\n": " ", "\r": " ", ";": ","})


class EvaluationRow(NamedTuple):
    """One DMARC evaluation, in the store's column order."""

    received: int            # UTC seconds
    policy_domain: str       # where the DMARC record was found
    org_domain: str          # the From domain's organizational domain (external rua check)
    header_from: str
    envelope_from: str       # "" for the null reverse-path
    envelope_to: str         # "" unless configured and the message had one recipient domain
    source_ip: str           # as the report writes it (IPv6 in full form)
    spf_domain: str
    spf_scope: str           # mfrom | helo
    spf_result: str
    dkim: str
    dkim_aligned: int        # 1 = DKIM passed in alignment (policy_evaluated/dkim)
    spf_aligned: int
    disposition: str         # none | quarantine | reject
    reasons: str
    policy: str
    discovery: str           # treewalk | psl


def report_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as the report schema's IPAddress pattern accepts it: dotted IPv4, or IPv6
    with all eight groups (the schema has no pattern for ``::``); IPv4-mapped becomes IPv4."""
    if ip.version == 4:
        return ip_text(ip)
    mapped = ip.ipv4_mapped
    return ip_text(mapped) if mapped is not None else ip.exploded


def domain_of(address: str | None) -> str:
    if not address:
        return ""
    return address.rpartition("@")[2].strip().rstrip(".").lower()


def policy_text(record: dict[str, str] | None) -> str:
    if not record:
        return ""
    return ";".join(f"{tag}={str(record[tag]).translate(_CLEAN).strip()}"
                    for tag in POLICY_TAGS if tag in record)


def parse_policy(text: str) -> dict[str, str]:
    """Inverse of :func:`policy_text`."""
    tags = {}
    for item in text.split(";"):
        tag, sep, value = item.partition("=")
        if sep:
            tags[tag] = value
    return tags


def _relaxed_aligned(domain: str, org_domain: str) -> bool:
    return bool(org_domain) and (domain == org_domain or domain.endswith("." + org_domain))


def dkim_text(verdict: Verdict, header_from: str, org_domain: str) -> str:
    """The signatures in the order of RFC 9990 "DKIM Signatures in Aggregate Reports":
    passing in strict alignment, passing in relaxed alignment, other passing, not passing.
    Signatures without ``d=`` are left out (a report row needs a domain)."""
    found = []
    for sig in verdict.dkim:
        if not sig.domain:
            continue
        domain = sig.domain.translate(_CLEAN).strip().rstrip(".").lower()
        if sig.result != "pass":
            rank = 3
        elif domain == header_from:
            rank = 0
        elif _relaxed_aligned(domain, org_domain):
            rank = 1
        else:
            rank = 2
        found.append((rank, domain, (sig.selector or "").translate(_CLEAN).strip().lower(),
                      sig.result))
    found.sort()
    return "\n".join(f"{d}\t{s}\t{r}" for _, d, s, r in found[:MAX_SIGNATURES])


def override_reasons(verdict: Verdict, disposition: str, override_reason: str | None) -> str:
    """RFC 9990 "Policy Override Reason": a reason when, and only when, the disposition
    applied is not the one the policy asks for (``none`` for mail that passes).
    ``override_reason`` is a type (``"trusted_forwarder"``), ``"type: comment"``, or free text
    (reported as ``other`` with the text as comment).  A temperror that was not tempfailed
    (its policy asks for less than reject) is ``other``: RFC 9989 s. 5.3.6, "the Domain Owner
    Assessment Policy cannot be applied to the message"."""
    dmarc = verdict.dmarc
    expected = dmarc.policy if dmarc.result in ("fail", "temperror") else "none"
    if disposition == expected:
        return ""
    if override_reason:
        head, sep, rest = override_reason.partition(":")
        head = head.strip()
        if head in OVERRIDE_TYPES:
            kind, comment = head, rest.strip() if sep else ""
        else:
            kind, comment = "other", override_reason.strip()
        return f"{kind}\t{comment.translate(_CLEAN)[:MAX_COMMENT]}"
    if dmarc.result == "temperror":
        return f"other\t{TEMPERROR_COMMENT}"
    if dmarc.testing and dmarc.result == "fail":
        return "policy_test_mode\t"
    return "local_policy\t"


def row_from_verdict(facts: SessionFacts, verdict: Verdict, disposition: str,
                     override_reason: str | None, *, received: int, discovery: str,
                     with_envelope_to: bool) -> EvaluationRow | None:
    """The row for one evaluation, or None when there is nothing to report: the client's
    address is unknown, or no DMARC policy applies (result none or permerror, or a temperror before a policy record was read), so no
    report can go anywhere.

    A temperror with a policy record (say, an aligned identifier whose check failed for now)
    is a row: its auth_results carry the underlying ``temperror`` results (RFC 9990's schema:
    "DKIM and SPF results, uninterpreted with respect to DMARC"), and policy_evaluated has no
    aligned pass.
    (A tempfailed message is not recorded at all: the retry is the message that counts.)"""
    dmarc = verdict.dmarc
    if dmarc.result not in _RECORDED or not dmarc.policy_domain or not dmarc.from_domain:
        return None
    if facts.client_ip is None:     # RFC 9990's source_ip is required: no row can say who
        return None
    header_from = dmarc.from_domain.rstrip(".").lower()
    org_domain = (dmarc.org_domain or dmarc.policy_domain).rstrip(".").lower()
    envelope_to = ""
    if with_envelope_to and facts.recipients:
        domains = {domain_of(r) for r in facts.recipients}
        if len(domains) == 1:
            envelope_to = domains.pop()
    spf = verdict.spf
    return EvaluationRow(
        received, dmarc.policy_domain.rstrip(".").lower(), org_domain, header_from,
        domain_of(facts.mail_from), envelope_to, report_ip(facts.client_ip),
        (spf.domain or "").rstrip(".").lower(), _SPF_SCOPE.get(spf.identity, "mfrom"),
        spf.result, dkim_text(verdict, header_from, org_domain),
        1 if dmarc.dkim_aligned else 0, 1 if dmarc.spf_aligned else 0,
        disposition, override_reasons(verdict, disposition, override_reason),
        policy_text(dmarc.record), discovery)
