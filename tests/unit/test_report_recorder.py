"""The Recorder: cheap, never raising, never blocking; batches; survives a store outage."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from authfilter.observers import MessageEvent
from authfilter.policy import Action
from authfilter.results import SmtpReply
from authfilter.reports.backends import open_store
from authfilter.reports.recorder import Recorder
from authfilter.reports.store import StoreError
from tests.unit.test_report_rows import FACTS, verdict


class FlakyStore:
    """Wraps a real store; fails while ``down`` is set, and can be made slow."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.down = threading.Event()
        self.delay = 0.0
        self.opened = 0
        self.batches: list[int] = []

    def factory(self):
        if self.down.is_set():
            raise StoreError(f"{self.url}: connection refused")
        self.opened += 1
        real = open_store(self.url)
        outer = self

        class Wrapped:
            def insert_rows(self, rows):
                time.sleep(outer.delay)
                if outer.down.is_set():
                    raise StoreError("server closed the connection")
                real.insert_rows(rows)
                outer.batches.append(len(rows))

            def close(self):
                real.close()
        return Wrapped()

    def count(self) -> int:
        store = open_store(self.url)
        try:
            return store.count_rows(0, 2 ** 40)
        finally:
            store.close()


def recorder(flaky: FlakyStore, **kw) -> Recorder:
    kw.setdefault("flush_interval", 0.02)
    return Recorder(flaky.factory, **kw)


def test_rows_are_written_in_batches_and_flushed_on_close(tmp_path):
    flaky = FlakyStore(f"sqlite://{tmp_path}/r.sqlite")
    rec = recorder(flaky, batch_rows=40, flush_interval=30)

    async def run():
        await rec.start()
        written = []
        for rows in (30, 15, 10):
            for _ in range(rows):
                rec.record(FACTS, verdict(), "reject")
            await asyncio.sleep(0.3)
            written.append(flaky.count())
        await rec.close()
        return written

    # 30 rows wait for the interval; the 40th row wakes the writer, which writes all 45;
    # 10 more wait again; close() writes them.
    assert asyncio.run(run()) == [0, 45, 45]
    assert flaky.count() == 55 and flaky.batches == [40, 5, 10]
    assert (rec.recorded, rec.written, rec.dropped, rec.buffered) == (55, 55, 0, 0)


def test_a_store_outage_keeps_rows_and_writes_them_later(tmp_path, caplog):
    flaky = FlakyStore(f"sqlite://{tmp_path}/r.sqlite")
    flaky.down.set()
    rec = recorder(flaky)

    async def run():
        await rec.start()
        for _ in range(30):
            rec.record(FACTS, verdict(), "reject")
        await asyncio.sleep(0.2)
        assert rec.buffered == 30 and rec.written == 0
        flaky.down.clear()
        for _ in range(200):             # the writer backs off, then gets through
            if rec.written == 30:
                break
            await asyncio.sleep(0.02)
        await rec.close()

    with caplog.at_level(logging.WARNING, logger="authfilter.reports"):
        asyncio.run(run())
    assert flaky.count() == 30 and rec.dropped == 0
    assert "report store unavailable, 30 rows kept in memory" in caplog.text


def test_the_buffer_is_bounded_and_says_so(tmp_path, caplog):
    flaky = FlakyStore(f"sqlite://{tmp_path}/r.sqlite")
    flaky.down.set()
    rec = recorder(flaky, buffer_rows=100)

    async def run():
        await rec.start()
        for _ in range(150):
            rec.record(FACTS, verdict(), "reject")
        await rec.close(timeout=0.2)

    with caplog.at_level(logging.WARNING, logger="authfilter.reports"):
        asyncio.run(run())
    assert rec.recorded == 100 and rec.dropped == 150
    assert caplog.text.count("report buffer full") == 1          # one line, not 50
    assert "100 rows lost" in caplog.text


def test_a_slow_store_does_not_slow_recording(tmp_path):
    flaky = FlakyStore(f"sqlite://{tmp_path}/r.sqlite")
    flaky.delay = 0.1
    rec = recorder(flaky, batch_rows=10)

    async def run():
        await rec.start()
        worst = 0.0
        for _ in range(50):
            t = time.perf_counter()
            rec.record(FACTS, verdict(), "reject")
            worst = max(worst, time.perf_counter() - t)
            await asyncio.sleep(0.005)   # the event loop stays free while the store sleeps
        await rec.close()
        return worst

    assert asyncio.run(run()) < 0.01
    assert flaky.count() == 50


def test_bad_input_is_counted_never_raised(tmp_path, caplog):
    rec = recorder(FlakyStore(f"sqlite://{tmp_path}/r.sqlite"))
    with caplog.at_level(logging.WARNING, logger="authfilter.reports"):
        rec.record(FACTS, object(), "reject")            # type: ignore[arg-type]
        rec.record(FACTS, verdict(), "discard")
        rec.on_message(MessageEvent(FACTS, None, Action("accept", "trusted network"), None, 0.0))
    assert rec.errors == 2 and rec.buffered == 0        # nothing to record without a verdict
    assert "report row not recorded" in caplog.text


def test_what_is_not_recorded(tmp_path):
    rec = recorder(FlakyStore(f"sqlite://{tmp_path}/r.sqlite"))
    reject = Action("reject", "DMARC fail", reply=SmtpReply(550, "5.7.1 no"))
    rec.on_message(MessageEvent(FACTS, verdict(), Action("tempfail", "DNS"), None, 0.0))  # comes back
    rec.on_message(MessageEvent(FACTS, verdict(), reject, SmtpReply(451, "try later"), 0.0))
    rec.on_message(MessageEvent(FACTS, verdict("none", policy_domain=None, record=None), reject,
                                None, 0.0))
    rec.record(FACTS, verdict(), "reject",
               headers=[(b"Subject", b" Report Domain: example.com Submitter: r.example\r\n")])
    assert rec.buffered == 0
    rec.on_message(MessageEvent(FACTS, verdict(), reject, SmtpReply(250, "2.0.0 queued"), 0.0))
    rec.on_message(MessageEvent(FACTS, verdict(), Action("accept", "allow-listed",
                                                         override="local_policy"), None, 0.0))
    rows = list(rec._buffer)
    assert [(r.disposition, r.reasons) for r in rows] == [("reject", ""),
                                                           ("none", "local_policy\t")]


def test_disabled_recorder_records_nothing(tmp_path):
    rec = recorder(FlakyStore(f"sqlite://{tmp_path}/r.sqlite"), enabled=False)
    rec.record(FACTS, verdict(), "reject")
    asyncio.run(rec.start())
    assert rec.buffered == 0


def test_recording_cost_in_the_smtp_path(tmp_path):
    """The budget is 50 µs per message (bench/bench_reports.py prints the figure); this
    test allows four times that so that a busy machine does not fail it."""
    rec = recorder(FlakyStore(f"sqlite://{tmp_path}/r.sqlite"), buffer_rows=100_000)
    v = verdict(dkim=[("example.com", "s1", "pass"), ("esp.example", "k", "pass")])
    n = 5000
    t = time.perf_counter()
    for _ in range(n):
        rec.record(FACTS, v, "reject")
    per_message = (time.perf_counter() - t) / n
    assert rec.buffered == n
    assert per_message < 200e-6, f"{per_message * 1e6:.1f} µs per record()"
