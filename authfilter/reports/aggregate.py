"""Aggregate reports (RFC 9990): rows grouped per policy domain and period, written as XML.

The XML is written with string templates rather than a DOM: a report for a busy domain can
have hundreds of thousands of records, and every value passes through :func:`_text`
(escaping, and characters XML 1.0 forbids removed) or is checked against the values the
schema allows (``_choice``) before it is written.

Two dialects:

* RFC 9990 (default): namespace ``urn:ietf:params:xml:ns:dmarc-2.0``, ``np``, ``t``, ``psd``
  and ``discovery_method`` in ``policy_published``; SPF scope is always ``mfrom``
  ("the only valid value", contents of the "spf" element); the override reasons of
  "Policy Override Reason".
* RFC 7489 Appendix C (``rfc7489_xml = true``): no namespace; ``pct`` and ``fo`` required;
  ``policy_test_mode`` reported as ``sampled_out``, its closest 7489 equivalent.
"""
from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from .rows import DISPOSITIONS, parse_policy
from .store import GroupedRecord, PublishedPolicy, Store

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"
DKIM_RESULTS = frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"})
SPF_RESULTS = frozenset({"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"})
RFC7489_REASONS = frozenset({"forwarded", "sampled_out", "trusted_forwarder", "mailing_list",
                             "local_policy", "other"})

_NEEDS_WORK = re.compile("[&<>\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: str) -> str:
    """``value`` as XML character data."""
    if not _NEEDS_WORK.search(value):
        return value
    value = _FORBIDDEN.sub("", value)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- periods ----------------------------------------------------------------------------------
def period_start(timestamp: int, period: int) -> int:
    """Periods are aligned to UTC midnight (RFC 7489 s. 7.2 asked generators to "adhere to hour
    boundaries"; RFC 9990 keeps daily reports as the norm); ``period`` divides a day."""
    return timestamp - timestamp % period


def period_end(begin: int, period: int) -> int:
    """The last second of the period: ``date_range`` is inclusive."""
    return begin + period - 1


def report_id(submitter: str, domain: str, begin: int, end: int) -> str:
    """A Report-ID unique per reporter, domain and period and the same on every node and every
    retry, so that a re-sent report has the same identity and file name (RFC 9990 "Email":
    "If a report generator needs to re-send a report, the system MUST use the same
    filename").  Hex only, so it is also a valid ``unique-id`` of the file name."""
    digest = hashlib.sha256(f"{submitter}!{domain}!{begin}!{end}".encode()).hexdigest()
    return digest[:32]


@dataclass(frozen=True, slots=True)
class Reporter:
    """Who we are in a report's metadata."""

    org_name: str
    email: str
    submitter: str                   # the domain in subjects and file names
    extra_contact_info: str = ""


@dataclass
class AggregateReport:
    policy_domain: str
    begin: int
    end: int
    report_id: str
    policy: dict[str, str]
    discovery: str
    org_domain: str
    records: list[GroupedRecord] = field(default_factory=list)

    @property
    def message_count(self) -> int:
        return sum(r.count for r in self.records)

    def filename(self, reporter: Reporter, *, compressed: bool = True) -> str:
        """RFC 9990 "Email": ``receiver!policy-domain!begin!end!unique-id.xml[.gz]``."""
        ext = "xml.gz" if compressed else "xml"
        return (f"{reporter.submitter}!{self.policy_domain}!{self.begin}!{self.end}!"
                f"{self.report_id}.{ext}")

    def xml(self, reporter: Reporter, *, rfc7489: bool = False) -> bytes:
        return "".join(_feedback(self, reporter, rfc7489)).encode("utf-8")

    def gzipped(self, reporter: Reporter, *, rfc7489: bool = False) -> bytes:
        # mtime=0: the same report gives the same bytes on every node and retry.
        return gzip.compress(self.xml(reporter, rfc7489=rfc7489), compresslevel=6, mtime=0)


def build_reports(store: Store, reporter: Reporter, begin: int, period: int,
                  domain: str | None = None) -> Iterator[AggregateReport]:
    """Every report of one period (one per policy domain with rows), or only ``domain``'s."""
    end = period_end(begin, period)
    policies = store.published_policies(begin, begin + period, domain)
    current: AggregateReport | None = None
    for record in store.grouped_records(begin, begin + period, domain):
        if current is None or record.policy_domain != current.policy_domain:
            if current is not None:
                yield current
            current = _new_report(record.policy_domain, begin, end, reporter,
                                  policies.get(record.policy_domain))
        current.records.append(record)
    if current is not None:
        yield current


def _new_report(domain: str, begin: int, end: int, reporter: Reporter,
                published: PublishedPolicy | None) -> AggregateReport:
    published = published or PublishedPolicy("", "treewalk", domain)
    return AggregateReport(domain, begin, end, report_id(reporter.submitter, domain, begin, end),
                           parse_policy(published.policy), published.discovery,
                           published.org_domain)


# -- XML --------------------------------------------------------------------------------------
def _choice(value: str | None, allowed: Iterable[str], fallback: str) -> str:
    return value if value in allowed else fallback


def _policy_published(report: AggregateReport, rfc7489: bool, errors: list[str]) -> str:
    """Published values with their RFC 9989 s. 5.3 defaults filled in ("Unspecified tags have
    their default values"); a value outside the schema's list is replaced by the default and
    explained in an ``error`` element."""
    tags = report.policy

    def pick(tag: str, allowed: Iterable[str], default: str) -> str:
        value = tags.get(tag)
        if value is None or value == "":
            return default
        if value not in allowed:
            errors.append(f"{tag}={value} is not valid; reported as {tag}={default}")
            return default
        return value

    p = pick("p", DISPOSITIONS, "none")
    sp = pick("sp", DISPOSITIONS, p)
    parts = [f"<policy_published><domain>{_text(report.policy_domain)}</domain>",
             f"<adkim>{pick('adkim', ('r', 's'), 'r')}</adkim>",
             f"<aspf>{pick('aspf', ('r', 's'), 'r')}</aspf>",
             f"<p>{p}</p><sp>{sp}</sp>"]
    fo = _text(tags.get("fo") or "0")
    if rfc7489:
        pct = tags.get("pct", "100")
        parts.append(f"<pct>{pct if pct.isdigit() and int(pct) <= 100 else '100'}</pct>")
        parts.append(f"<fo>{fo}</fo>")
    else:
        parts.append(f"<np>{pick('np', DISPOSITIONS, sp)}</np>")
        parts.append(f"<t>{pick('t', ('y', 'n'), 'n')}</t>")
        parts.append(f"<psd>{pick('psd', ('y', 'n', 'u'), 'u')}</psd>")
        parts.append(f"<fo>{fo}</fo>")
        method = _choice(report.discovery, ("treewalk", "psl"), "treewalk")
        parts.append(f"<discovery_method>{method}</discovery_method>")
    parts.append("</policy_published>")
    return "".join(parts)


def _reasons(text: str, rfc7489: bool) -> str:
    out = []
    for line in text.split("\n") if text else ():
        kind, _, comment = line.partition("\t")
        if rfc7489:
            kind = ("sampled_out" if kind == "policy_test_mode"
                    else _choice(kind, RFC7489_REASONS, "other"))
        comment_xml = f"<comment>{_text(comment)}</comment>" if comment else ""
        out.append(f"<reason><type>{kind}</type>{comment_xml}</reason>")
    return "".join(out)


def _dkim_results(text: str) -> str:
    out = []
    for line in text.split("\n") if text else ():
        domain, selector, result = (line.split("\t") + ["", ""])[:3]
        out.append(f"<dkim><domain>{_text(domain)}</domain><selector>{_text(selector)}</selector>"
                   f"<result>{_choice(result, DKIM_RESULTS, 'neutral')}</result></dkim>")
    return "".join(out)


def _record(r: GroupedRecord, rfc7489: bool) -> str:
    scope = _choice(r.spf_scope, ("mfrom", "helo"), "mfrom") if rfc7489 else "mfrom"
    envelope_to = f"<envelope_to>{_text(r.envelope_to)}</envelope_to>" if r.envelope_to else ""
    return (f"<record><row><source_ip>{_text(r.source_ip)}</source_ip><count>{r.count}</count>"
            f"<policy_evaluated><disposition>{_choice(r.disposition, DISPOSITIONS, 'none')}"
            f"</disposition><dkim>{'pass' if r.dkim_aligned else 'fail'}</dkim>"
            f"<spf>{'pass' if r.spf_aligned else 'fail'}</spf>{_reasons(r.reasons, rfc7489)}"
            f"</policy_evaluated></row><identifiers>{envelope_to}"
            f"<envelope_from>{_text(r.envelope_from)}</envelope_from>"
            f"<header_from>{_text(r.header_from)}</header_from></identifiers>"
            f"<auth_results>{_dkim_results(r.dkim)}<spf><domain>{_text(r.spf_domain)}</domain>"
            f"<scope>{scope}</scope><result>{_choice(r.spf_result, SPF_RESULTS, 'none')}</result>"
            f"</spf></auth_results></record>\n")


def _feedback(report: AggregateReport, reporter: Reporter, rfc7489: bool) -> Iterator[str]:
    errors: list[str] = []
    policy = _policy_published(report, rfc7489, errors)
    yield '<?xml version="1.0" encoding="UTF-8"?>\n'
    yield "<feedback>\n" if rfc7489 else f'<feedback xmlns="{NAMESPACE}">\n'
    extra = (f"<extra_contact_info>{_text(reporter.extra_contact_info)}</extra_contact_info>"
             if reporter.extra_contact_info else "")
    yield (f"<report_metadata><org_name>{_text(reporter.org_name)}</org_name>"
           f"<email>{_text(reporter.email)}</email>{extra}"
           f"<report_id>{report.report_id}</report_id>"
           f"<date_range><begin>{report.begin}</begin><end>{report.end}</end></date_range>"
           + "".join(f"<error>{_text(e)}</error>" for e in errors)
           + "</report_metadata>\n")
    yield policy + "\n"
    for record in report.records:
        yield _record(record, rfc7489)
    yield "</feedback>\n"
