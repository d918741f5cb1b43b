"""Real evaluations (engine + loopback DNS) recorded through the Recorder into SQLite and the
real PostgreSQL, turned into RFC 9990 reports that must validate against the schema and that
parsedmarc must read back with the counts that were recorded."""
from __future__ import annotations

import asyncio
import collections
import gzip

import parsedmarc
import pytest
from lxml import etree

from authfilter.config import Config
from authfilter.reports.aggregate import Reporter, build_reports, period_start
from authfilter.reports.backends import open_store
from authfilter.reports.recorder import Recorder
from tests.conftest import testdata as conformance_file
from tests.integration.test_report_fixtures import (  # noqa: F401  (fixtures)
    evaluate_mail, pg_url, sqlite_url, store_url)

DAY = 86400
WHEN = 1_777_000_000 - 1_777_000_000 % DAY + 3600      # 01:00 UTC on some day in 2026
REPORTER = Reporter(org_name="Receiver Inc.", email="dmarc-reports@receiver.example",
                    submitter="receiver.example")


def schema():
    return etree.XMLSchema(etree.parse(str(conformance_file("dmarc", "rfc9990-aggregate-schema.xsd"))))


def record_all(url: str, evaluated) -> Recorder:
    config = Config()
    config.reports.store = url
    config.reports.flush_interval = 0.05
    recorder = Recorder.from_config(config)

    async def run():
        await recorder.start()
        for i, e in enumerate(evaluated):
            recorder.record(e.facts, e.verdict, e.disposition, at=WHEN + i)
        await recorder.close()

    asyncio.run(run())
    return recorder


def expected_counts(evaluated) -> collections.Counter:
    """(policy domain, source, DMARC pass, disposition) -> messages, from the verdicts."""
    out = collections.Counter()
    for e in evaluated:
        d = e.verdict.dmarc
        ip = e.facts.client_ip
        shown = ip.exploded if ip.version == 6 else str(ip)
        out[(d.policy_domain, shown, d.result == "pass", e.disposition)] += 1
    return out


def test_engine_rows_become_valid_reports_that_parsedmarc_counts(zone, store_url):
    evaluated = evaluate_mail(zone)
    recorder = record_all(store_url, evaluated)
    assert (recorder.recorded, recorder.written, recorder.dropped) == (9, 9, 0)

    store = open_store(store_url)
    try:
        reports = list(build_reports(store, REPORTER, period_start(WHEN, DAY), DAY))
    finally:
        store.close()
    assert [r.policy_domain for r in reports] == ["example.com", "testing.example"]
    xsd = schema()
    seen = collections.Counter()
    for report in reports:
        data = gzip.decompress(report.gzipped(REPORTER))
        xsd.assertValid(etree.fromstring(data))
        parsed = parsedmarc.parse_aggregate_report_xml(data, offline=True)
        assert parsed["xml_namespace"] == "urn:ietf:params:xml:ns:dmarc-2.0"
        assert parsed["report_metadata"]["report_id"] == report.report_id
        assert parsed["policy_published"]["domain"] == report.policy_domain
        for rec in parsed["records"]:
            key = (parsed["policy_published"]["domain"], rec["source"]["ip_address"],
                   rec["alignment"]["dmarc"], rec["policy_evaluated"]["disposition"])
            seen[key] += rec["count"]
    assert seen == expected_counts(evaluated)


def test_report_content_follows_rfc_9990(zone, sqlite_url):
    evaluated = evaluate_mail(zone)
    record_all(sqlite_url, evaluated)
    store = open_store(sqlite_url)
    try:
        example, testing = build_reports(store, REPORTER, period_start(WHEN, DAY), DAY)
    finally:
        store.close()
    ns = {"d": "urn:ietf:params:xml:ns:dmarc-2.0"}
    root = etree.fromstring(example.xml(REPORTER))
    policy = root.find("d:policy_published", ns)
    assert [(e.tag.split("}")[1], e.text) for e in policy] == [
        ("domain", "example.com"), ("adkim", "r"), ("aspf", "r"), ("p", "reject"),
        ("sp", "quarantine"), ("np", "quarantine"), ("t", "n"), ("psd", "u"), ("fo", "0"),
        ("discovery_method", "treewalk")]
    assert root.findtext("d:report_metadata/d:date_range/d:begin", namespaces=ns) == \
        str(period_start(WHEN, DAY))
    assert root.findtext("d:report_metadata/d:date_range/d:end", namespaces=ns) == \
        str(period_start(WHEN, DAY) + DAY - 1)
    records = root.findall("d:record", ns)
    # 8 messages from example.com's domain tree in 6 records: the two identical passes and
    # the two identical rejects are grouped.
    assert len(records) == 6
    counts = {r.findtext("d:row/d:source_ip", namespaces=ns): int(r.findtext("d:row/d:count",
                                                                             namespaces=ns))
              for r in records if r.findtext("d:identifiers/d:header_from", namespaces=ns)
              == "example.com"}
    assert counts["192.0.2.10"] == 2 and counts["203.0.113.5"] == 2
    assert "2001:0db8:0000:0000:0000:0000:0000:0005" in counts
    # DKIM selector and SPF scope are reported; sub.example.com is in example.com's report.
    signed = [r for r in records if r.findtext("d:row/d:source_ip", namespaces=ns) == "192.0.2.10"][0]
    assert signed.findtext("d:auth_results/d:dkim/d:selector", namespaces=ns) == "s1"
    assert signed.findtext("d:auth_results/d:spf/d:scope", namespaces=ns) == "mfrom"
    assert {r.findtext("d:identifiers/d:header_from", namespaces=ns) for r in records} == \
        {"example.com", "sub.example.com"}
    # The null sender: envelope_from present but empty (RFC 9990 s. 2.1.4.9).
    null = [r for r in records if r.findtext("d:row/d:source_ip", namespaces=ns) == "203.0.113.9"
            and r.findtext("d:identifiers/d:header_from", namespaces=ns) == "example.com"][0]
    assert null.find("d:identifiers/d:envelope_from", ns) is not None
    assert not null.findtext("d:identifiers/d:envelope_from", namespaces=ns)
    # t=y: the disposition is one step below p=reject and says why.
    root = etree.fromstring(testing.xml(REPORTER))
    evaluated_policy = root.find("d:record/d:row/d:policy_evaluated", ns)
    assert evaluated_policy.findtext("d:disposition", namespaces=ns) == "quarantine"
    assert evaluated_policy.findtext("d:reason/d:type", namespaces=ns) == "policy_test_mode"
    assert root.findtext("d:policy_published/d:t", namespaces=ns) == "y"
    schema().assertValid(root)


def test_rfc7489_switch_gives_the_old_format_that_parsedmarc_reads(zone, sqlite_url):
    evaluated = evaluate_mail(zone)
    record_all(sqlite_url, evaluated)
    store = open_store(sqlite_url)
    try:
        reports = list(build_reports(store, REPORTER, period_start(WHEN, DAY), DAY))
    finally:
        store.close()
    data = reports[1].xml(REPORTER, rfc7489=True)
    root = etree.fromstring(data)
    assert root.tag == "feedback" and root.nsmap == {}
    assert [e.tag for e in root.find("policy_published")] == [
        "domain", "adkim", "aspf", "p", "sp", "pct", "fo"]
    assert root.findtext("record/row/policy_evaluated/reason/type") == "sampled_out"
    parsed = parsedmarc.parse_aggregate_report_xml(data, offline=True)
    assert parsed["policy_published"]["pct"] == "100"
    assert sum(r["count"] for r in parsed["records"]) == 1


@pytest.mark.parametrize("mode,method", [("rfc7489", "psl")])
def test_discovery_method_follows_the_dmarc_mode(zone, sqlite_url, mode, method):
    evaluated = evaluate_mail(zone)[:1]
    config = Config()
    config.dmarc.mode = mode
    config.reports.store = sqlite_url
    recorder = Recorder.from_config(config)

    async def run():
        await recorder.start()
        recorder.record(evaluated[0].facts, evaluated[0].verdict, "none", at=WHEN)
        await recorder.close()

    asyncio.run(run())
    store = open_store(sqlite_url)
    try:
        (report,) = build_reports(store, REPORTER, period_start(WHEN, DAY), DAY)
    finally:
        store.close()
    assert f"<discovery_method>{method}</discovery_method>" in report.xml(REPORTER).decode()
