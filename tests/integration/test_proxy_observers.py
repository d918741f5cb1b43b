"""What the proxy feeds the operator's tools after real traffic: the Prometheus endpoint read
over HTTP, and DMARC report rows in a real SQLite store."""
import smtplib
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from authfilter.reports.backends import open_store
from authfilter.reports.recorder import Recorder
from tests.integration.test_proxy import send
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


def test_inbound_listener_seals_relayed_mail_with_arc(zone, sink, start_proxy, tmp_path):
    """RFC 8617: our ARC set carries our results; both our validator and dkimpy accept it."""
    import asyncio
    import os

    import dkim

    from authfilter.checks.arc import validate_arc
    from authfilter.message import Message
    from tests.mailtools import dkim_key
    from tests.proxyrunner import proxy_config

    publish_domain(zone, "example.org")
    seal_key = dkim_key()
    key_file = tmp_path / "arc.key"
    key_file.write_bytes(seal_key.private_pem)
    os.chmod(key_file, 0o600)
    zone.add("arc._domainkey.mx.test", "TXT", seal_key.record)
    config = proxy_config(sink.address)
    config.signing.arc.domain, config.signing.arc.selector = "mx.test", "arc"
    config.signing.arc.key_file = str(key_file)
    config.proxy.listeners[0].arc_seal = True
    proxy = start_proxy(config)
    send(proxy, signed(message()))
    delivered = sink.messages[-1].content
    assert delivered.startswith(b"Authentication-Results: mx.test;"), delivered
    assert b"\r\nARC-Seal: " in delivered and b" cv=none;" in delivered
    assert b"ARC-Authentication-Results: i=1; mx.test;" in delivered
    chain = asyncio.run(validate_arc(Message.parse(delivered), proxy.server.resolver))
    assert (chain.result, chain.instances, chain.sealers) == ("pass", 1, ("mx.test",))
    records = {b"arc._domainkey.mx.test.": seal_key.record.encode()}
    cv, _, reason = dkim.arc_verify(delivered, dnsfunc=lambda name, timeout=5: records.get(name))
    assert cv == b"pass", reason


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_one_log_line_per_message_with_session_results_action_and_queue_id(
        zone, sink, start_proxy, caplog, fmt):
    import json
    import logging

    from authfilter.logsetup import formatter_for
    from tests.proxyrunner import proxy_config

    publish_domain(zone, "example.org")
    config = proxy_config(sink.address)
    config.logging.format = fmt
    proxy = start_proxy(config)
    with caplog.at_level(logging.INFO, logger="authfilter.message"):
        send(proxy, signed(message()))
        send(proxy, signed(message()))
    # rendered by the formatter serve installs for this format (authfilter.logsetup)
    formatter = formatter_for(config)
    lines = [formatter.format(r) if fmt == "json" else r.getMessage()
             for r in caplog.records if r.name == "authfilter.message"]
    assert len(lines) == 2
    if fmt == "json":
        records = [json.loads(line) for line in lines]
    else:
        import shlex            # values with spaces are JSON-quoted: shell quoting reads them
        records = [dict(part.split("=", 1) for part in shlex.split(line)) for line in lines]
        assert lines[0].startswith("session=")
    first, second = records
    assert first["session"] != second["session"]
    assert (first["client"], first["mail_from"], first["from_domain"]) == \
        ("127.0.0.1", "<alice@example.org>", "example.org")
    assert (first["spf"], first["dmarc"], first["action"]) == ("pass", "pass", "accept")
    assert first["dkim"] == "pass:example.org:sel"
    assert first["queue_id"] == sink_queue_id(first["upstream"]) and float(first["ms"]) > 0
    assert "Hello." not in lines[0]                            # never a message body


def sink_queue_id(upstream: str) -> str:
    return upstream.rsplit(" ", 1)[-1]
