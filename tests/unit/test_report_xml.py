"""The aggregate report XML: schema-valid whatever the rows and records contain."""
from __future__ import annotations

import gzip

import pytest
from lxml import etree

from authfilter.reports.aggregate import AggregateReport, Reporter, period_start, report_id
from authfilter.reports.rows import TEMPERROR_COMMENT
from authfilter.reports.store import GroupedRecord
from tests.conftest import testdata as conformance_file

NS = {"d": "urn:ietf:params:xml:ns:dmarc-2.0"}
REPORTER = Reporter("Receiver <&> Inc.", "dmarc@receiver.example", "receiver.example",
                    extra_contact_info="https://receiver.example/dmarc")


@pytest.fixture(scope="module")
def xsd():
    return etree.XMLSchema(etree.parse(str(conformance_file("dmarc", "rfc9990-aggregate-schema.xsd"))))


def record(**changes) -> GroupedRecord:
    base = dict(policy_domain="example.com", source_ip="192.0.2.1", header_from="example.com",
                envelope_from="example.com", envelope_to="", spf_domain="example.com",
                spf_scope="mfrom", spf_result="pass", dkim="example.com\ts1\tpass",
                dkim_aligned=1, spf_aligned=1, disposition="none", reasons="", count=3)
    base.update(changes)
    return GroupedRecord(**base)


def report(policy: dict, records: list[GroupedRecord], discovery="treewalk") -> AggregateReport:
    return AggregateReport("example.com", 1777939200, 1777939200 + 86399,
                           report_id("receiver.example", "example.com", 1777939200, 1777939200 + 86399),
                           policy, discovery, "example.com", records)


def test_valid_with_every_optional_part(xsd):
    r = report({"p": "quarantine", "sp": "reject", "np": "reject", "adkim": "s", "aspf": "s",
                "t": "y", "psd": "n", "fo": "1:d"},
               [record(), record(source_ip="2001:0db8:0000:0000:0000:0000:0000:0001",
                                 envelope_to="receiver.example", envelope_from="",
                                 dkim="a.example\ts\tfail\nb.example\t\tpermerror",
                                 dkim_aligned=0, spf_aligned=0, spf_result="softfail",
                                 disposition="quarantine",
                                 reasons="mailing_list\tList-Id: <x.lists.example>\nother\t")])
    root = etree.fromstring(r.xml(REPORTER))
    xsd.assertValid(root)
    assert root.findtext("d:report_metadata/d:org_name", namespaces=NS) == "Receiver <&> Inc."
    assert root.findtext("d:report_metadata/d:extra_contact_info", namespaces=NS) == \
        "https://receiver.example/dmarc"
    reasons = root.findall("d:record/d:row/d:policy_evaluated/d:reason", NS)
    assert [(x.findtext("d:type", namespaces=NS), x.findtext("d:comment", namespaces=NS))
            for x in reasons] == [("mailing_list", "List-Id: <x.lists.example>"), ("other", None)]
    assert root.findtext("d:record[2]/d:identifiers/d:envelope_to", namespaces=NS) == \
        "receiver.example"


def test_a_dmarc_temperror_row_is_valid_and_shows_the_temperror_results_rfc9990(xsd):
    """A DMARC temperror that was accepted: the underlying temperror results in auth_results,
    no aligned pass in policy_evaluated, and the ``other`` reason its row carries."""
    r = report({"p": "quarantine"},
               [record(spf_result="temperror", dkim="example.com\ts1\ttemperror", dkim_aligned=0,
                       spf_aligned=0, reasons=f"other\t{TEMPERROR_COMMENT}")])
    root = etree.fromstring(r.xml(REPORTER))
    xsd.assertValid(root)
    row = "d:record/d:row/d:policy_evaluated/"
    assert [root.findtext(row + tag, namespaces=NS) for tag in ("d:disposition", "d:dkim", "d:spf",
                                                               "d:reason/d:type")] == \
        ["none", "fail", "fail", "other"]
    assert [root.findtext(f"d:record/d:auth_results/d:{m}/d:result", namespaces=NS)
            for m in ("dkim", "spf")] == ["temperror", "temperror"]


def test_values_outside_the_schema_are_replaced_and_explained(xsd):
    r = report({"p": "bogus", "adkim": "x", "t": "maybe", "fo": "0\x01"},
               [record(dkim="ex\x00ample.com\ts<1>\tunknown", spf_result="pass?",
                       spf_scope="helo", disposition="discard", header_from="a&b.example")])
    root = etree.fromstring(r.xml(REPORTER))
    xsd.assertValid(root)
    assert root.findtext("d:policy_published/d:p", namespaces=NS) == "none"
    errors = [e.text for e in root.findall("d:report_metadata/d:error", NS)]
    assert errors == ["p=bogus is not valid; reported as p=none",
                      "adkim=x is not valid; reported as adkim=r",
                      "t=maybe is not valid; reported as t=n"]
    rec = root.find("d:record", NS)
    assert rec.findtext("d:auth_results/d:dkim/d:domain", namespaces=NS) == "example.com"
    assert rec.findtext("d:auth_results/d:dkim/d:selector", namespaces=NS) == "s<1>"
    assert rec.findtext("d:auth_results/d:dkim/d:result", namespaces=NS) == "neutral"
    assert rec.findtext("d:auth_results/d:spf/d:scope", namespaces=NS) == "mfrom"
    assert rec.findtext("d:row/d:policy_evaluated/d:disposition", namespaces=NS) == "none"
    assert rec.findtext("d:identifiers/d:header_from", namespaces=NS) == "a&b.example"


def test_defaults_are_filled_in():
    root = etree.fromstring(report({"p": "reject"}, [record()]).xml(REPORTER))
    published = {e.tag.split("}")[1]: e.text for e in root.find("d:policy_published", NS)}
    assert published == {"domain": "example.com", "adkim": "r", "aspf": "r", "p": "reject",
                         "sp": "reject", "np": "reject", "t": "n", "psd": "u", "fo": "0",
                         "discovery_method": "treewalk"}


def test_file_name_and_gzip_are_stable():
    r = report({"p": "none"}, [record()])
    assert r.filename(REPORTER) == (f"receiver.example!example.com!1777939200!1778025599!"
                                    f"{r.report_id}.xml.gz")
    assert r.filename(REPORTER, compressed=False).endswith(f"!{r.report_id}.xml")
    assert r.report_id.isalnum() and len(r.report_id) == 32
    assert r.gzipped(REPORTER) == r.gzipped(REPORTER)
    assert gzip.decompress(r.gzipped(REPORTER)) == r.xml(REPORTER)
    assert r.message_count == 3


def test_report_id_differs_per_domain_and_period():
    ids = {report_id("r.example", d, b, b + 86399) for d in ("a.example", "b.example")
           for b in (0, 86400)}
    assert len(ids) == 4


def test_periods_align_to_utc_midnight():
    assert period_start(1777939200 + 5000, 86400) == 1777939200
    assert period_start(1777939200 + 5000, 3600) == 1777939200 + 3600


def test_rfc7489_dialect():
    r = report({"p": "reject", "pct": "250", "t": "y"},
               [record(reasons="policy_test_mode\t\ntrusted_forwarder\t", spf_scope="helo")])
    root = etree.fromstring(r.xml(REPORTER, rfc7489=True))
    assert root.tag == "feedback"
    assert root.findtext("policy_published/pct") == "100"
    assert [t.text for t in root.findall("record/row/policy_evaluated/reason/type")] == \
        ["sampled_out", "trusted_forwarder"]
    assert root.findtext("record/auth_results/spf/scope") == "helo"
    assert root.find("policy_published/np") is None
