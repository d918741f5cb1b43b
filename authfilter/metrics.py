"""Prometheus metrics for the filter: what it did, how long it took, how DNS is doing.

One :class:`Metrics` per process, each with its own ``CollectorRegistry`` (never the global
one, so tests and several workers do not share state).  The SMTP proxy calls a handful of
methods on it; nothing else in the hot path knows about Prometheus::

    metrics = Metrics(resolver=engine.resolver, report_backlog=store.backlog)
    server = metrics.start_http("127.0.0.1:9469")     # /metrics, served from a daemon thread
    metrics.session_opened()
    metrics.message_done(verdict, "accept", {"spf": 0.003, "total": 0.011, "end_of_data": 0.02})
    metrics.upstream_error("refused")
    metrics.session_closed()
    server.stop()

Exposed series (all prefixed ``authfilter_``).  Every labelled series a dashboard asks for is
there from the start at 0 (each action, each upstream error kind, each check, each result word
of :data:`RESULT_WORDS`), so its panels show 0 rather than "No data":

============================================  ==========================================
``sessions_open``                             SMTP sessions open now (gauge)
``sessions_total``                            SMTP sessions accepted
``messages_total{action}``                    messages finished, by the policy's action word
                                              (accept, quarantine, tempfail, reject): what the
                                              policy decided, not what became of the message
``results_total{method,result}``              one per result: iprev, spf, spf_helo, dkim (one
                                              per signature, ``none`` when unsigned), arc,
                                              dmarc, dnsbl, dnsbl_domain (each check's
                                              ``metric_keys``); a transaction refused at RCPT
                                              counts its client checks' results
``rcpt_refused_total{defence}``               recipients refused at RCPT: deny, dnsbl, iprev,
                                              ratelimit
``check_duration_seconds{check}``             histogram; check = each registered check (spf
                                              helo_spf dkim arc dmarc), total
``end_of_data_duration_seconds``              histogram: end of DATA to our final reply
``dns_queries_total``, ``dns_cache_hits_total``, ``dns_coalesced_total``, ``dns_failures_total``
                                              read from the resolver's counters at scrape time
``upstream_errors_total{kind}``               a message we let through that the next MTA did
                                              not take, by :data:`UPSTREAM_ERRORS` kind
``report_backlog``                            DMARC report rows buffered, not yet written to the store
``worker_restarts_total{worker}``             worker processes restarted by the supervisor, by
                                              worker slot (0, 1, ...; one process: ``0``, at 0)
``process_*`` (no prefix)                     prometheus_client's process metrics: CPU seconds,
                                              resident and virtual memory, open and maximum
                                              file descriptors, start time
============================================  ==========================================

With rate limits configured (``[[ratelimit.rules]]``, :mod:`authfilter.ratelimit`), there are
two more series: ``authfilter_ratelimit_total{rule,outcome}`` counts, per rule and for each
RCPT decision that concerned it, the outcome ``allowed`` (counted, within the limit), or
else ``limited`` (this rule refused it; the other rules of that decision were not charged
and are not counted), ``error`` (Redis could not be asked) or ``exempt`` (a trusted client
that the rule does not count); each rule's series are there at 0 from the start.  The
gauge ``authfilter_ratelimit_redis_up`` is 1 when the last round trip to Redis succeeded, 0
when it failed (absent before the first); with several workers the endpoint serves the
lowest, so 1 means that every worker reaches Redis.

Several worker processes
------------------------
With several workers (``proxy.workers``), the supervisor serves ``metrics.listen``
(:class:`WorkersEndpoint`) and each worker answers it over a private socket pair
(:meth:`Metrics.answer`): on each scrape the supervisor asks every worker for its samples
(they reply in parallel, within :data:`WORKER_TIMEOUT`) and serves their sum, so the one
address shows every message whichever worker took it.  ``process_*`` are per process: those of
the supervisor itself carry no extra label, each worker's carry ``worker="<slot>"``, so
``sum(process_resident_memory_bytes)`` is the whole service and
``process_open_fds / process_max_fds`` stays a per-process ratio.  ``worker_restarts_total``
comes from the supervisor, one series per slot.

A worker that exits stops answering, and Prometheus reads a sum that goes down as a counter
reset (a burst of phantom increase), so its counters and histograms are kept: its last answer
is added to every later scrape.  Its gauges and ``process_*`` go with it.  This is what
prometheus_client's multiprocess mode does with the files of a dead process
(``mark_process_dead``); what a worker killed outright (SIGKILL) counted since the last scrape
is lost.  Nothing is written to disk, so there is nothing to clean at start.

Why not that multiprocess mode itself: it keeps every value in an mmap'd file and takes a lock
per update, which puts ``message_done`` at about 30 us, seven times the plain numbers here and
over its 20 us budget, and it cannot run collectors such as ours, which read the resolver's
counters, the report backlog and ``/proc`` at scrape time.  Here a message costs what it did
with one endpoint per worker; a scrape costs each worker less than rendering its own endpoint
did (under a millisecond), and the supervisor about 2 ms for the sum, once per scrape interval.
"""
from __future__ import annotations

import json
import logging
import math
import selectors
import socket
import time
import typing
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from threading import Lock, Thread
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .checks import REGISTRY
from .config import parse_listen_address
from .policy import ACCEPT, QUARANTINE, REJECT, TEMPFAIL

if typing.TYPE_CHECKING:
    from .dns import Resolver
    from .results import Verdict

log = logging.getLogger("authfilter.metrics")

TOTAL = "total"                # the timings key for the whole engine run
END_OF_DATA = "end_of_data"    # the timings key for the end-of-data latency
# Seconds. Warm-cache checks take about a millisecond, cold DNS tens of ms, and the whole
# pipeline must stay well inside Postfix's 100 s smtpd_proxy_timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ACTIONS = (ACCEPT, QUARANTINE, TEMPFAIL, REJECT)
UPSTREAM_ERRORS = ("unavailable", "after_data", "closing", "refused")
"""The ``kind`` of ``upstream_errors_total``: the connection to the next MTA broke or timed out
before the message was sent, at MAIL, RCPT or DATA (``unavailable``), or after, so it may have
it (``after_data``); it answered 421, going away (``closing``), or it answered DATA or the
message with another 4xx or
5xx, which the client got (``refused``: the log line says ``outcome=refused upstream=451 ...``).
The first three are ``outcome=failed`` in the log line."""
_SPF_WORDS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
RESULT_WORDS: Mapping[str, tuple[str, ...]] = {
    "spf": _SPF_WORDS,
    "spf_helo": _SPF_WORDS,
    "dkim": ("none", "pass", "fail", "neutral", "policy", "temperror", "permerror"),
    "arc": ("none", "pass", "fail"),
    "dmarc": ("none", "pass", "fail", "temperror", "permerror"),
    "iprev": ("pass", "fail", "temperror", "permerror"),
    "dnsbl": ("none", "listed", "allowed", "error"),
    "dnsbl_domain": ("none", "listed", "allowed", "error"),
}
DEFENCES = ("deny", "dnsbl", "iprev", "ratelimit")
"""What ``rcpt_refused_total{defence}`` counts: recipients refused at RCPT by a local deny
list, a DNS blocklist, the iprev rules or a rate limit."""
"""The ``(method, result)`` series of ``results_total`` there from the start: the RFC 8601
s. 2.7 words the built-in checks report (a check of one's own shows up with its first result)."""
PER_PROCESS = "process_"       # families of this prefix are per process, never summed
LOWEST = frozenset({"authfilter_ratelimit_redis_up"})
"""Gauges whose sum over workers means nothing: the supervisor serves the lowest value."""
RATE_OUTCOMES = ("allowed", "limited", "error", "exempt")
"""The ``outcome`` of ``ratelimit_total`` (see the module docstring)."""
WORKER_TIMEOUT = 2.0           # seconds a scrape waits for a worker's answer
_REQUEST = 8                   # bytes: the number of the scrape, echoed in the answer
_MAX_ANSWER = 1 << 20          # an answer is one SEQPACKET message, bounded by the send buffer


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

    def close_in_child(self) -> None:
        """In a child forked from the serving process: close the listening socket, which the
        child must not keep (the serving thread is the parent's: nothing to stop)."""
        self._server.socket.close()


def serve_http(listen: str, registry: Collector) -> MetricsServer:
    """Serve ``/metrics`` of ``registry`` on ``listen`` (``"127.0.0.1:9469"``, ``"[::1]:9469"``;
    port 0 picks a free one) from a daemon thread, so the event loop is never blocked.

    Raises ``ValueError`` for a bad address and ``OSError`` naming it when it cannot bind.
    """
    host, port = parse_listen_address(listen)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(exc.errno, f"metrics endpoint {listen}: {exc.strerror or exc}") from None
    return MetricsServer(host, server.server_address[1], server, thread)


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


def _counter(name: str, documentation: str, label: str, counts: Mapping[str, int]
             ) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in dict(counts).items():
        family.add_metric([value], count)
    return family


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
        self.messages = dict.fromkeys(ACTIONS, 0)
        self.results = {(method, word): 0 for method, words in RESULT_WORDS.items()
                        for word in words}
        self.upstream_errors = dict.fromkeys(UPSTREAM_ERRORS, 0)
        self.rcpt_refused = dict.fromkeys(DEFENCES, 0)
        self.checks = {name: _Histogram(LATENCY_BUCKETS)
                       for name in [*(check.name for check in REGISTRY), TOTAL]}
        self.end_of_data = _Histogram(LATENCY_BUCKETS)
        self.ratelimit: dict[tuple[str, str], int] | None = None    # None: no rate limits
        self.ratelimit_redis_up: int | None = None                 # None: Redis not asked yet

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("authfilter_sessions_open", "SMTP sessions open now",
                                value=self.sessions_open)
        yield CounterMetricFamily("authfilter_sessions", "SMTP sessions accepted",
                                  value=self.sessions_total)
        yield _counter("authfilter_messages", "messages finished, by policy action", "action",
                       self.messages)
        results = CounterMetricFamily("authfilter_results", "authentication results, by method "
                                      "and RFC 8601 result word", labels=["method", "result"])
        for (method, result), count in dict(self.results).items():
            results.add_metric([method, result], count)
        yield results
        yield _counter("authfilter_rcpt_refused", "recipients refused at RCPT, by the defence "
                       "that refused them", "defence", self.rcpt_refused)
        yield _counter("authfilter_upstream_errors", "messages let through that the next MTA "
                       "did not take, by kind", "kind", self.upstream_errors)
        checks = HistogramMetricFamily("authfilter_check_duration_seconds", "time spent in each "
                                       "check (total = the whole engine run)", labels=["check"])
        for name, histogram in dict(self.checks).items():     # message_done may add one
            histogram.add_to(checks, [name])
        yield checks
        end_of_data = HistogramMetricFamily("authfilter_end_of_data_duration_seconds",
                                            "end of DATA to our final reply", labels=[])
        self.end_of_data.add_to(end_of_data, [])
        yield end_of_data
        if self.ratelimit is not None:
            limited = CounterMetricFamily("authfilter_ratelimit", "rate-limit decisions, by rule "
                                          "and outcome", labels=["rule", "outcome"])
            for (rule, outcome), count in dict(self.ratelimit).items():
                limited.add_metric([rule, outcome], count)
            yield limited
        if self.ratelimit_redis_up is not None:
            yield GaugeMetricFamily("authfilter_ratelimit_redis_up", "1 when the last round trip "
                                    "to the rate limits' Redis succeeded, 0 when it failed",
                                    value=self.ratelimit_redis_up)


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


class _RestartsCollector(Collector):
    """``worker_restarts_total{worker}`` from a count per worker slot (the supervisor's list,
    read at scrape time)."""

    def __init__(self, restarts: Sequence[int]) -> None:
        self._restarts = restarts

    def collect(self) -> Iterator[Metric]:
        yield _counter("authfilter_worker_restarts", "worker processes restarted by the "
                       "supervisor, by worker slot", "worker",
                       {str(slot): count for slot, count in enumerate(list(self._restarts))})


class Metrics:
    """The filter's metrics in a registry of their own (see the module docstring).

    ``standalone``: this process is the whole service (one-process ``serve``, ``check``, the
    Python API), so it also has the ``worker_restarts_total{worker="0"}`` series, at 0; a worker
    under a supervisor leaves that series to the supervisor.

    Call the reporting methods from the event loop's thread only (see _HotPathCollector).
    """

    def __init__(self, resolver: "Resolver | None" = None,
                 report_backlog: Callable[[], float] | None = None, *,
                 standalone: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._hot = _HotPathCollector()
        self.registry.register(self._hot)
        self._backlog = Gauge("authfilter_report_backlog",
                              "DMARC report rows stored and not yet sent", registry=self.registry)
        ProcessCollector(registry=self.registry)
        if standalone:
            self.registry.register(_RestartsCollector((0,)))
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

    def recipient_refused(self, defence: str, results: Iterable[tuple[str, str]] = ()) -> None:
        """A recipient refused at RCPT by ``defence`` (:data:`DEFENCES`); ``results``: the
        ``(method, result)`` keys of the client checks, given once per transaction (a refused
        transaction never reaches :meth:`message_done`)."""
        hot = self._hot
        hot.rcpt_refused[defence] = hot.rcpt_refused.get(defence, 0) + 1
        for key in results:
            hot.results[key] = hot.results.get(key, 0) + 1

    def ratelimit_rules(self, names: Iterable[str]) -> None:
        """Rate limits are in use with these rules: their ``ratelimit_total`` series start at 0
        (a reload keeps the counts of rules it drops)."""
        hot = self._hot
        counts = hot.ratelimit if hot.ratelimit is not None else {}
        for name in names:
            for outcome in RATE_OUTCOMES:
                counts.setdefault((name, outcome), 0)
        hot.ratelimit = counts

    def ratelimit_counted(self, rule: str, outcome: str) -> None:
        """One decision about ``rule``: ``outcome`` is one of :data:`RATE_OUTCOMES`."""
        counts = self._hot.ratelimit
        if counts is None:
            counts = self._hot.ratelimit = {}
        key = (rule, outcome)
        counts[key] = counts.get(key, 0) + 1

    def ratelimit_redis(self, up: bool) -> None:
        """The last round trip to the rate limits' Redis succeeded (True) or failed."""
        self._hot.ratelimit_redis_up = 1 if up else 0

    def upstream_error(self, kind: str) -> None:
        """``kind``: one of :data:`UPSTREAM_ERRORS`."""
        errors = self._hot.upstream_errors
        errors[kind] = errors.get(kind, 0) + 1

    # -- serving ---------------------------------------------------------------------------
    def start_http(self, listen: str) -> MetricsServer:
        """Serve this process's ``/metrics`` on ``listen`` (see :func:`serve_http`)."""
        return serve_http(listen, self.registry)

    def answer(self, link: socket.socket) -> Thread:
        """Answer the supervisor's scrapes on ``link`` (the worker's end of a
        :meth:`WorkersEndpoint.link`) from a daemon thread, as :meth:`start_http` would serve
        them; the thread ends when the supervisor closes its end."""
        thread = Thread(target=self._answer, args=(link,), name="metrics", daemon=True)
        thread.start()
        return thread

    def _answer(self, link: socket.socket) -> None:
        with link:
            try:
                while request := link.recv(_REQUEST):
                    link.send(request + json.dumps(_samples(self.registry)).encode())
            except OSError as exc:          # an answer too big for the socket's buffer
                log.error("cannot answer the supervisor's metrics request: %s", exc)


# -- the supervisor's side ---------------------------------------------------------------------
_Sums = dict[str, tuple[str, str, str, dict[tuple, float]]]
"""Families added up: name -> (help, type, unit, {(sample name, labels): value})."""


def _samples(collector: Collector) -> list:
    """Every family of ``collector`` in a form for JSON: ``[name, help, type, unit, [[sample
    name, [[label, value], ...], value], ...]]``."""
    return [[m.name, m.documentation, m.type, m.unit,
             [[s.name, list(s.labels.items()), s.value] for s in m.samples]]
            for m in collector.collect()]


def _add(sums: _Sums, families: Iterable[list], worker: str | None = None) -> None:
    """Add families (the :func:`_samples` form) into ``sums``; ``worker`` labels the
    per-process ones (:data:`PER_PROCESS`), so that they are kept apart, not summed."""
    for name, documentation, typ, unit, samples in families:
        values = sums.setdefault(name, (documentation, typ, unit, {}))[3]
        own = (("worker", worker),) if worker is not None and name.startswith(PER_PROCESS) else ()
        for sample, labels, value in samples:
            key = (sample, tuple(map(tuple, labels)) + own)
            if name in LOWEST:
                values[key] = min(values.get(key, value), value)
            else:
                values[key] = values.get(key, 0) + value


def _families(sums: _Sums) -> list:
    """``sums`` in the :func:`_samples` form again."""
    return [[name, documentation, typ, unit,
             [[sample, labels, value] for (sample, labels), value in values.items()]]
            for name, (documentation, typ, unit, values) in sums.items()]


def _outlives_its_process(family: list) -> bool:
    """Counters and histograms, which must not go down when a worker exits (see the module
    docstring); not per-process ones, whose series ends with the process."""
    name, _, typ = family[:3]
    return typ in ("counter", "histogram") and not name.startswith(PER_PROCESS)


@dataclass
class _Worker:
    slot: int
    link: socket.socket            # the supervisor's end, non-blocking
    samples: list = field(default_factory=list)       # its last answer


class _WorkersCollector(Collector):
    """The workers' samples added up, asked for at each scrape (see the module docstring).

    The supervisor's main thread only appends to :attr:`events`; everything else happens under
    :attr:`lock` in the scrape thread, so that a worker's values are counted once per scrape:
    either as its own or, once it has exited, among the retired.
    """

    def __init__(self, restarts: Sequence[int]) -> None:
        self.events: deque[tuple[int, socket.socket | None]] = deque()   # (slot, link or None)
        self.lock = Lock()
        self._workers: dict[int, _Worker] = {}
        self._retired: _Sums = {}
        self._own = CollectorRegistry()
        ProcessCollector(registry=self._own)
        self._own.register(_RestartsCollector(restarts))
        self._scrapes = 0

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            self._take_events()
            self._ask(list(self._workers.values()))
            sums: _Sums = {}
            _add(sums, _samples(self._own))
            _add(sums, _families(self._retired))
            for worker in self._workers.values():
                _add(sums, worker.samples, str(worker.slot))
        for name, (documentation, typ, unit, values) in sums.items():
            metric = Metric(name, documentation, typ, unit)
            for (sample, labels), value in values.items():
                metric.add_sample(sample, dict(labels), value)
            yield metric

    def _take_events(self) -> None:
        while self.events:
            slot, link = self.events.popleft()
            gone = self._workers.pop(slot, None)
            if gone is not None:                      # exited: its counters stay
                _add(self._retired, filter(_outlives_its_process, gone.samples))
                gone.link.close()
            if link is not None:
                self._workers[slot] = _Worker(slot, link)

    def _ask(self, workers: list[_Worker]) -> None:
        """Every worker's answer to one request, in parallel; one that does not answer within
        :data:`WORKER_TIMEOUT` keeps its last answer."""
        self._scrapes += 1
        request = self._scrapes.to_bytes(_REQUEST, "big")
        deadline = time.monotonic() + WORKER_TIMEOUT
        with selectors.DefaultSelector() as waiting:
            for worker in workers:
                try:
                    worker.link.send(request)
                except OSError:                       # exited (or stuck): not asked
                    continue
                waiting.register(worker.link, selectors.EVENT_READ, worker)
            while waiting.get_map() and (left := deadline - time.monotonic()) > 0:
                for key, _ in waiting.select(left):
                    worker = key.data
                    try:
                        answer = worker.link.recv(_MAX_ANSWER)
                    except OSError:
                        answer = b""
                    if answer[:_REQUEST] == request:
                        worker.samples = json.loads(answer[_REQUEST:])
                    elif answer:                      # late, to an earlier request: wait on
                        continue
                    waiting.unregister(worker.link)   # answered, or exited (end of file)
            for key in waiting.get_map().values():
                log.warning("worker %d did not answer the metrics request within %g s; its "
                            "last values stand in", key.data.slot, WORKER_TIMEOUT)

    def close(self) -> None:
        """Close every link (in a forked worker: the supervisor's ends it inherited)."""
        for worker in self._workers.values():
            worker.link.close()
        for _, link in self.events:
            if link is not None:
                link.close()


class WorkersEndpoint:
    """The supervisor's ``metrics.listen``: the sum over its workers (see the module docstring).

    For each worker it forks, the supervisor calls :meth:`link` before the fork, then
    :meth:`in_worker` in the child (its result goes to :meth:`Metrics.answer`) and
    :meth:`started` in itself; :meth:`exited` once it has reaped the worker.
    """

    def __init__(self, listen: str, restarts: Sequence[int]) -> None:
        self._workers = _WorkersCollector(restarts)
        registry = CollectorRegistry()        # not auto-describing: collects only when scraped
        registry.register(self._workers)
        self.server = serve_http(listen, registry)

    @staticmethod
    def link() -> tuple[socket.socket, socket.socket]:
        """A private socket pair, (the supervisor's end, the worker's end): one message per
        request and per answer."""
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def in_worker(self, link: tuple[socket.socket, socket.socket]) -> socket.socket:
        """In the forked worker: close what is the supervisor's (its listening socket, its
        ends of every link) and return the worker's end.  No lock is taken: the supervisor's
        scrape thread may have held it at the fork, and that thread does not exist here."""
        self.server.close_in_child()
        self._workers.close()
        link[0].close()
        return link[1]

    def started(self, slot: int, link: tuple[socket.socket, socket.socket]) -> None:
        link[1].close()
        link[0].setblocking(False)
        self._workers.events.append((slot, link[0]))

    def exited(self, slot: int) -> None:
        self._workers.events.append((slot, None))

    def stop(self) -> None:
        self.server.stop()
        with self._workers.lock:
            self._workers.close()
