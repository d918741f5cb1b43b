"""The /metrics endpoint read over HTTP, after real calls with real Verdict objects."""
from __future__ import annotations

import asyncio
import math
import socket
import threading
import urllib.request

import pytest

from authfilter import metrics as metrics_module
from authfilter.metrics import Metrics, WorkersEndpoint
from authfilter.results import ArcResult, DkimResult, DmarcResult, SpfResult, Verdict
from tests.scrape import scrape


def verdict(dmarc: str = "pass", dkim: tuple[str, ...] = ("pass",), helo: str | None = None) -> Verdict:
    return Verdict(
        spf=SpfResult("pass", "mailfrom", "example.com", "a@example.com"),
        dkim=tuple(DkimResult(r, "example.com", "s1", "rsa-sha256") for r in dkim),
        arc=ArcResult("none"),
        dmarc=DmarcResult(dmarc, "example.com", policy_domain="example.com", policy="reject"),
        helo_spf=SpfResult(helo, "helo", "mail.example.com") if helo else None,
    )


@pytest.fixture
def served():
    metrics = Metrics()
    server = metrics.start_http("127.0.0.1:0")
    yield metrics, server
    server.stop()


def test_counters_and_histograms_move(served):
    metrics, server = served
    before = scrape(server.url)
    assert before[("authfilter_sessions_open", ())] == 0

    metrics.session_opened()
    metrics.session_opened()
    metrics.message_done(verdict(), "accept", {"spf": 0.002, "dkim": 0.004, "arc": 0.0001,
                                               "dmarc": 0.0003, "total": 0.007,
                                               "end_of_data": 0.012, "not_a_check": 1.0})
    metrics.message_done(verdict("fail", dkim=("fail", "pass"), helo="fail"), "reject",
                         {"total": 0.3, "end_of_data": 0.31})
    metrics.message_done(verdict("none", dkim=()), "accept", {"total": 0.001})
    metrics.session_closed()
    metrics.upstream_error("after_data")

    s = scrape(server.url)
    assert s[("authfilter_sessions_total", ())] == 2
    assert s[("authfilter_sessions_open", ())] == 1
    assert s[("authfilter_messages_total", (("action", "accept"),))] == 2
    assert s[("authfilter_messages_total", (("action", "reject"),))] == 1
    result = lambda m, r: s[("authfilter_results_total", (("method", m), ("result", r)))]
    assert result("spf", "pass") == 3
    assert result("spf_helo", "fail") == 1
    assert result("dkim", "pass") == 2 and result("dkim", "fail") == 1
    assert result("dkim", "none") == 1          # an unsigned message still counts once
    assert result("arc", "none") == 3
    assert (result("dmarc", "pass"), result("dmarc", "fail"), result("dmarc", "none")) == (1, 1, 1)

    total = lambda suffix, **labels: s[(f"authfilter_check_duration_seconds_{suffix}",
                                        tuple(sorted({"check": "total", **labels}.items())))]
    assert total("count") == 3
    assert total("sum") == pytest.approx(0.308)
    assert total("bucket", le="0.001") == 1     # the 1 ms one
    assert total("bucket", le="0.01") == 2
    assert total("bucket", le="0.5") == 3
    assert s[("authfilter_check_duration_seconds_count", (("check", "spf"),))] == 1
    assert s[("authfilter_check_duration_seconds_count", (("check", "dmarc"),))] == 1
    assert s[("authfilter_end_of_data_duration_seconds_count", ())] == 2
    assert s[("authfilter_end_of_data_duration_seconds_sum", ())] == pytest.approx(0.322)
    assert s[("authfilter_upstream_errors_total", (("kind", "after_data"),))] == 1
    assert s[("authfilter_upstream_errors_total", (("kind", "refused"),))] == 0
    assert s[("authfilter_worker_restarts_total", (("worker", "0"),))] == 0
    assert s[("process_open_fds", ())] > 0
    assert not any("not_a_check" in str(key) for key in s)


def test_dns_counters_come_from_the_resolver(zone, resolver):
    zone.add("example.com", "TXT", "v=spf1 -all")
    zone.misbehave("down.example.com", "servfail")

    async def lookups():
        await resolver.query("example.com", "TXT")
        await resolver.query("example.com", "TXT")          # cached
        await resolver.query("down.example.com", "TXT")     # a failure
    asyncio.run(lookups())

    metrics = Metrics(resolver=resolver)
    server = metrics.start_http("127.0.0.1:0")
    try:
        s = scrape(server.url)
    finally:
        server.stop()
    assert s[("authfilter_dns_queries_total", ())] == 2
    assert s[("authfilter_dns_cache_hits_total", ())] == 1
    assert s[("authfilter_dns_failures_total", ())] == 1
    assert s[("authfilter_dns_coalesced_total", ())] == 0


def test_report_backlog_is_read_at_scrape_time_and_survives_a_broken_store(served):
    metrics, server = served
    rows = [5]
    metrics.watch_report_backlog(lambda: rows[0])
    assert scrape(server.url)[("authfilter_report_backlog", ())] == 5
    rows[0] = 2
    assert scrape(server.url)[("authfilter_report_backlog", ())] == 2

    def broken() -> int:
        raise OSError("database is locked")
    metrics.watch_report_backlog(broken)
    assert math.isnan(scrape(server.url)[("authfilter_report_backlog", ())])


def test_each_metrics_object_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.session_opened()
    assert a.registry.get_sample_value("authfilter_sessions_total") == 1
    assert b.registry.get_sample_value("authfilter_sessions_total") == 0


def test_stop_releases_the_port_and_a_busy_port_is_a_clear_error():
    metrics = Metrics()
    server = metrics.start_http("127.0.0.1:0")
    port = server.port
    with pytest.raises(OSError, match=f"metrics endpoint 127.0.0.1:{port}"):
        Metrics().start_http(f"127.0.0.1:{port}")
    server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)
    again = metrics.start_http(f"127.0.0.1:{port}")   # the port is free again
    again.stop()


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = Metrics().start_http("[::1]:0")
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    try:
        assert server.url.startswith("http://[::1]:")
        assert ("authfilter_sessions_open", ()) in scrape(server.url)
    finally:
        server.stop()


# -- one endpoint for several workers (the supervisor's) -------------------------------------
class _Workers:
    """A WorkersEndpoint with workers in this process: each answers from its own thread on its
    own copy of the link's worker end, as a forked worker does."""

    def __init__(self, slots: int) -> None:
        self.restarts = [0] * slots
        self.endpoint = WorkersEndpoint("127.0.0.1:0", self.restarts)
        self.url = self.endpoint.server.url
        self.metrics: list[Metrics | None] = [None] * slots
        self.threads: list[threading.Thread | None] = [None] * slots    # each one's answering
        for slot in range(slots):
            self.start(slot)

    def start(self, slot: int) -> None:
        self.metrics[slot] = Metrics(standalone=False)
        link = self.endpoint.link()
        self.threads[slot] = self.metrics[slot].answer(link[1].dup())   # what a fork copies
        self.endpoint.started(slot, link)                                # closes the original

    def restart(self, slot: int) -> threading.Thread:
        """The worker in ``slot`` exited and the supervisor started another; the exited one's
        answering thread comes back."""
        self.endpoint.exited(slot)
        self.restarts[slot] += 1
        old = self.threads[slot]
        self.start(slot)
        return old


@pytest.fixture
def workers():
    w = _Workers(2)
    yield w
    w.endpoint.stop()


def test_one_endpoint_sums_the_workers_and_keeps_their_processes_apart(workers):
    first, second = workers.metrics
    first.message_done(verdict(), "accept", {"total": 0.001})
    second.message_done(verdict(), "accept", {"total": 0.2})
    second.message_done(verdict("fail"), "reject", {"total": 0.3})
    first.session_opened()
    second.session_opened()
    second.upstream_error("refused")

    s = scrape(workers.url)
    assert s[("authfilter_messages_total", (("action", "accept"),))] == 2
    assert s[("authfilter_messages_total", (("action", "reject"),))] == 1
    assert s[("authfilter_messages_total", (("action", "quarantine"),))] == 0
    assert s[("authfilter_sessions_open", ())] == 2
    assert s[("authfilter_upstream_errors_total", (("kind", "refused"),))] == 1
    assert s[("authfilter_check_duration_seconds_count", (("check", "total"),))] == 3
    assert s[("authfilter_check_duration_seconds_bucket", (("check", "total"), ("le", "0.25")))] == 2
    assert s[("authfilter_results_total", (("method", "dmarc"), ("result", "fail")))] == 1
    for slot in ("0", "1"):
        assert s[("authfilter_worker_restarts_total", (("worker", slot),))] == 0
        assert s[("process_resident_memory_bytes", (("worker", slot),))] > 0
    assert s[("process_resident_memory_bytes", ())] > 0          # the supervisor's own


def test_an_exited_worker_keeps_its_counts_but_not_its_gauges(workers):
    workers.metrics[1].message_done(verdict(), "accept", {"total": 0.001})
    workers.metrics[1].session_opened()
    assert scrape(workers.url)[("authfilter_sessions_open", ())] == 1

    old = workers.restart(1)
    workers.metrics[1].message_done(verdict(), "accept", {"total": 0.001})
    s = scrape(workers.url)
    assert s[("authfilter_messages_total", (("action", "accept"),))] == 2     # never goes down
    assert s[("authfilter_check_duration_seconds_count", (("check", "total"),))] == 2
    assert s[("authfilter_sessions_open", ())] == 0
    assert s[("authfilter_worker_restarts_total", (("worker", "1"),))] == 1
    old.join(5)
    assert not old.is_alive()                 # its link was closed: its answering thread ended


def test_a_worker_that_does_not_answer_in_time_shows_its_last_values(workers, monkeypatch):
    monkeypatch.setattr(metrics_module, "WORKER_TIMEOUT", 0.3)
    slow, release = workers.metrics[1], threading.Event()
    slow.message_done(verdict(), "accept", {})
    assert scrape(workers.url)[("authfilter_messages_total", (("action", "accept"),))] == 1

    class Stuck:
        def collect(self):
            release.wait(10)
            return []
    slow.registry.register(Stuck())
    slow.message_done(verdict(), "accept", {})
    assert scrape(workers.url)[("authfilter_messages_total", (("action", "accept"),))] == 1
    release.set()                             # its late answer is not taken for the next one's
    workers.metrics[0].message_done(verdict(), "accept", {})
    assert scrape(workers.url)[("authfilter_messages_total", (("action", "accept"),))] == 3


def test_rate_limit_counts_are_summed_and_redis_up_is_the_lowest_worker(workers):
    first, second = workers.metrics
    for m in (first, second):
        m.ratelimit_rules(["client_ip/3600s"])
    assert ("authfilter_ratelimit_redis_up", ()) not in scrape(workers.url)   # not asked yet
    first.ratelimit_counted("client_ip/3600s", "allowed")
    second.ratelimit_counted("client_ip/3600s", "allowed")
    second.ratelimit_counted("client_ip/3600s", "limited")
    first.ratelimit_redis(True)
    second.ratelimit_redis(True)
    s, rule = scrape(workers.url), ("rule", "client_ip/3600s")
    assert s[("authfilter_ratelimit_total", (("outcome", "allowed"), rule))] == 2
    assert s[("authfilter_ratelimit_total", (("outcome", "limited"), rule))] == 1
    assert s[("authfilter_ratelimit_total", (("outcome", "error"), rule))] == 0
    assert s[("authfilter_ratelimit_redis_up", ())] == 1
    second.ratelimit_redis(False)              # one worker cannot reach Redis: not up
    assert scrape(workers.url)[("authfilter_ratelimit_redis_up", ())] == 0
