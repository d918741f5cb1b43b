"""Prometheus metrics for the filter: what it did, how long it took, how DNS is doing.

One :class:`Metrics` per process, each with its own ``CollectorRegistry`` (never the global
one, so tests and several workers do not share state).  The SMTP proxy calls a handful of
methods on it; nothing else in the hot path knows about Prometheus::

    metrics = Metrics(resolver=engine.resolver, report_backlog=store.backlog)
    server = metrics.start_http("127.0.0.1:9469")     # /metrics, served from a daemon thread
    metrics.session_opened()
    metrics.message_done(verdict, "accept", {"spf": 0.003, "total": 0.011, "end_of_data": 0.02})
    metrics.upstream_error("timeout")
    metrics.session_closed()
    server.stop()

Exposed series (all prefixed ``authfilter_``):

============================================  ==========================================
``sessions_open``                             SMTP sessions open now (gauge)
``sessions_total``                            SMTP sessions accepted
``messages_total{action}``                    messages finished, by the policy's action word
``results_total{method,result}``              one per result: spf, spf_helo, dkim (one per
                                              signature, ``none`` when unsigned), arc, dmarc
                                              (each check's ``metric_keys``)
``check_duration_seconds{check}``             histogram; check = each registered check (spf
                                              helo_spf dkim arc dmarc), total
``end_of_data_duration_seconds``              histogram: end of DATA to our final reply
``dns_queries_total``, ``dns_cache_hits_total``, ``dns_coalesced_total``, ``dns_failures_total``
                                              read from the resolver's counters at scrape time
``upstream_errors_total{kind}``               failures talking to the next MTA, by kind
``report_backlog``                            DMARC report rows buffered, not yet written to the store
``worker_restarts_total``                     worker processes restarted by the supervisor
============================================  ==========================================

Several worker processes
------------------------
Each worker process keeps its own registry and serves it on its own port; Prometheus scrapes
them all and sums them (``sum without (instance) (rate(authfilter_messages_total[5m]))``).
With ``metrics.listen = "127.0.0.1:9469"`` worker *i* (0-based) serves ``9469 + i`` (a single
process serves ``9469``): :func:`worker_listen` computes it.  ``worker_restarts_total`` is kept
per worker slot: a restarted worker starts with the number of times its slot was restarted.
The scrape config lists the ports, e.g. for 4 workers::

    - job_name: authfilter
      static_configs:
        - targets: ["127.0.0.1:9469", "127.0.0.1:9470", "127.0.0.1:9471", "127.0.0.1:9472"]

"""
from __future__ import annotations

import math
import typing
from bisect import bisect_left
from dataclasses import dataclass
from threading import Thread
from typing import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .checks import REGISTRY
from .config import parse_listen_address

if typing.TYPE_CHECKING:
    from .dns import Resolver
    from .results import Verdict

TOTAL = "total"                # the timings key for the whole engine run
END_OF_DATA = "end_of_data"    # the timings key for the end-of-data latency
# Seconds. Warm-cache checks take about a millisecond, cold DNS tens of ms, and the whole
# pipeline must stay well inside Postfix's 100 s smtpd_proxy_timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def worker_listen(listen: str, index: int) -> str:
    """The address worker ``index`` (0-based) serves on: the configured port + index."""
    host, port = parse_listen_address(listen)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port + index}"


@dataclass
class MetricsServer:
    """A running /metrics endpoint; :meth:`stop` closes its socket and ends its thread."""

    host: str
    port: int
    _server: typing.Any
    _thread: Thread

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _result_keys(verdict: "Verdict") -> list[tuple[str, str]]:
    """(method, result) once per result in the verdict; an unsigned message is dkim=none."""
    return [key for check, result in verdict.reported() for key in check.metric_keys(result)]


class _Histogram:
    """Bucket counts and a sum, kept as plain numbers (see :class:`_HotPathCollector`)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)      # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        counts, total = list(self.counts), self.total      # one consistent copy
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds + (math.inf,), counts):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric(labels, buckets, total)


class _HotPathCollector(Collector):
    """The per-session and per-message series as plain ints and floats, exported at scrape time.

    prometheus-client's own Counter and Histogram take a lock on every update: about 1 us per
    increment and 2.5 us per observation here, 24 us for one message_done, over our budget.
    Plain numbers cost about 0.3 us each.  Updates must come from one thread (the event
    loop); the scrape thread only reads copies, which the GIL makes consistent.
    """

    def __init__(self) -> None:
        self.sessions_open = 0
        self.sessions_total = 0
        self.messages: dict[str, int] = {}
        self.results: dict[tuple[str, str], int] = {}
        self.checks = {name: _Histogram(LATENCY_BUCKETS)
                       for name in [*(check.name for check in REGISTRY), TOTAL]}
        self.end_of_data = _Histogram(LATENCY_BUCKETS)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("authfilter_sessions_open", "SMTP sessions open now",
                                value=self.sessions_open)
        yield CounterMetricFamily("authfilter_sessions", "SMTP sessions accepted",
                                  value=self.sessions_total)
        messages = CounterMetricFamily("authfilter_messages", "messages finished, by policy action",
                                       labels=["action"])
        for action, count in dict(self.messages).items():
            messages.add_metric([action], count)
        yield messages
        results = CounterMetricFamily("authfilter_results", "authentication results, by method "
                                      "and RFC 8601 result word", labels=["method", "result"])
        for (method, result), count in dict(self.results).items():
            results.add_metric([method, result], count)
        yield results
        checks = HistogramMetricFamily("authfilter_check_duration_seconds", "time spent in each "
                                       "check (total = the whole engine run)", labels=["check"])
        for name, histogram in dict(self.checks).items():     # message_done may add one
            histogram.add_to(checks, [name])
        yield checks
        end_of_data = HistogramMetricFamily("authfilter_end_of_data_duration_seconds",
                                            "end of DATA to our final reply", labels=[])
        self.end_of_data.add_to(end_of_data, [])
        yield end_of_data


class _ResolverCollector(Collector):
    """Reads ``Resolver.stats`` when scraped, so lookups pay nothing for being counted."""

    def __init__(self, resolver: "Resolver") -> None:
        self._resolver = resolver

    def collect(self) -> Iterator[Metric]:
        stats = self._resolver.stats
        yield CounterMetricFamily("authfilter_dns_queries", "DNS queries sent (cache misses)",
                                  value=stats.queries)
        yield CounterMetricFamily("authfilter_dns_cache_hits", "DNS lookups answered from the cache",
                                  value=stats.cache_hits)
        yield CounterMetricFamily("authfilter_dns_coalesced",
                                  "DNS lookups that joined an identical query in flight",
                                  value=stats.coalesced)
        yield CounterMetricFamily("authfilter_dns_failures",
                                  "DNS queries that timed out or failed (temperror)",
                                  value=stats.failures)


class Metrics:
    """The filter's metrics in a registry of their own (see the module docstring).

    Call the reporting methods from the event loop's thread only (see _HotPathCollector).
    """

    def __init__(self, resolver: "Resolver | None" = None,
                 report_backlog: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry()
        self._hot = _HotPathCollector()
        self.registry.register(self._hot)
        # Rare events: prometheus-client's own (locked) metrics are cheap enough here.
        self._upstream_errors = Counter("authfilter_upstream_errors", "failures talking to the "
                                        "next MTA, by kind", ["kind"], registry=self.registry)
        self._worker_restarts = Counter("authfilter_worker_restarts",
                                        "worker processes restarted", registry=self.registry)
        self._backlog = Gauge("authfilter_report_backlog",
                              "DMARC report rows stored and not yet sent", registry=self.registry)
        self._resolver_collector: _ResolverCollector | None = None
        if resolver is not None:
            self.watch_resolver(resolver)
        if report_backlog is not None:
            self.watch_report_backlog(report_backlog)

    # -- wiring ----------------------------------------------------------------------------
    def watch_resolver(self, resolver: "Resolver") -> None:
        """Expose this resolver's query, cache-hit, coalesced and failure counters (a resolver
        replaced on reload replaces the previous one)."""
        if self._resolver_collector is not None:
            self.registry.unregister(self._resolver_collector)
        self._resolver_collector = _ResolverCollector(resolver)
        self.registry.register(self._resolver_collector)

    def watch_report_backlog(self, count: Callable[[], float]) -> None:
        """``count()`` is called at each scrape; if it raises, the gauge shows NaN."""
        def read() -> float:
            try:
                return float(count())
            except Exception:       # a broken store must not break the whole scrape
                return math.nan
        self._backlog.set_function(read)

    # -- what the proxy reports --------------------------------------------------------------
    def session_opened(self) -> None:
        self._hot.sessions_total += 1
        self._hot.sessions_open += 1

    def session_closed(self) -> None:
        self._hot.sessions_open -= 1

    def message_done(self, verdict: "Verdict | None", action: str, timings: Mapping[str, float]) -> None:
        """One finished message: its action word, every result and the time each check took
        (``verdict.seconds``), and its other timings in seconds.

        ``timings`` keys: ``"total"``, ``"end_of_data"`` or a registered check's name; others
        are ignored, so the proxy may pass the dict it also logs.
        """
        hot = self._hot
        hot.messages[action] = hot.messages.get(action, 0) + 1
        checks = hot.checks
        if verdict is not None:                 # None: trusted mail, nothing was verified
            results = hot.results
            for key in _result_keys(verdict):
                results[key] = results.get(key, 0) + 1
            for name, seconds in verdict.seconds.items():
                histogram = checks.get(name)
                if histogram is None:           # a check registered after this object was made
                    histogram = checks[name] = _Histogram(LATENCY_BUCKETS)
                histogram.observe(seconds)
        for name, seconds in timings.items():
            histogram = checks.get(name)
            if histogram is not None:
                histogram.observe(seconds)
            elif name == END_OF_DATA:
                hot.end_of_data.observe(seconds)

    def upstream_error(self, kind: str) -> None:
        """``kind``: a short fixed word such as ``connect``, ``timeout``, ``protocol``."""
        self._upstream_errors.labels(kind).inc()

    def worker_restarted(self) -> None:
        self._worker_restarts.inc()

    # -- serving ---------------------------------------------------------------------------
    def start_http(self, listen: str) -> MetricsServer:
        """Serve ``/metrics`` on ``listen`` (``"127.0.0.1:9469"``, ``"[::1]:9469"``; port 0
        picks a free one) from a daemon thread, so the event loop is never blocked.

        Raises ``ValueError`` for a bad address and ``OSError`` naming it when it cannot bind.
        """
        host, port = parse_listen_address(listen)
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics endpoint {listen}: {exc.strerror or exc}") from None
        return MetricsServer(host, server.server_address[1], server, thread)
