"""What the proxy feeds the operator's tools after real traffic: the Prometheus endpoint read
over HTTP, and DMARC report rows in a real SQLite store."""
import smtplib
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from authfilter.reports.recorder import Recorder
from authfilter.reports.store import open_store
from tests.integration.test_proxy import send, sink, start_proxy  # noqa: F401  (fixtures)
from tests.mailtools import message, publish_domain, signed


def scrape(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_move_with_real_traffic(zone, sink, start_proxy):
    publish_domain(zone, "example.org")
    zone.add("spammer.test", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    proxy = start_proxy()
    endpoint = proxy.server.metrics.start_http("127.0.0.1:0")
    try:
        send(proxy, signed(message()))
        with pytest.raises(smtplib.SMTPDataError):
            send(proxy, message(from_addr="ceo@example.org"), mail_from="x@spammer.test")
        time.sleep(0.1)                          # the session-closed bookkeeping of the 2nd
        m = scrape(endpoint.url)
    finally:
        endpoint.stop()
    assert m[("authfilter_messages_total", (("action", "accept"),))] == 1
    assert m[("authfilter_messages_total", (("action", "reject"),))] == 1
    assert m[("authfilter_results_total", (("method", "dmarc"), ("result", "pass")))] == 1
    assert m[("authfilter_results_total", (("method", "dmarc"), ("result", "fail")))] == 1
    assert m[("authfilter_sessions_total", ())] == 2
    assert m[("authfilter_end_of_data_duration_seconds_count", ())] == 2
    assert m[("authfilter_check_duration_seconds_count", (("check", "total"),))] == 2
    assert m[("authfilter_dns_queries_total", ())] > 0


def test_report_rows_are_recorded_for_relayed_and_rejected_mail(zone, sink, start_proxy, tmp_path):
    publish_domain(zone, "example.org")
    zone.add("spammer.test", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    proxy = start_proxy()
    url = f"sqlite:///{tmp_path}/reports.sqlite"
    recorder = Recorder(lambda: open_store(url), flush_interval=0.05)
    proxy.call(recorder.start)
    proxy.server.observers.append(recorder)
    send(proxy, signed(message()))
    with pytest.raises(smtplib.SMTPDataError):
        send(proxy, message(from_addr="ceo@example.org"), mail_from="x@spammer.test")
    proxy.call(recorder.close)
    store = open_store(url)
    try:
        now = int(time.time())
        assert store.count_rows(now - 3600, now + 3600) == 2
        rows = sorted(store.source_counts(now - 3600, now + 3600))
    finally:
        store.close()
    assert rows == [("example.org", "127.0.0.1", 0, "reject", 1),
                    ("example.org", "127.0.0.1", 1, "none", 1)]
