"""Recording DMARC evaluations from the SMTP path without ever delaying or failing it.

:meth:`Recorder.record` builds one row and appends it to an in-memory deque: a few
microseconds, no I/O, no lock, and it never raises.  A background task takes batches from the
deque and writes each in one transaction, in a single dedicated thread (the store's
connection is only ever used there).  When the store is down or slow, rows stay in the deque
and the write is retried with a growing pause; past ``buffer_rows`` new rows are dropped and
counted, with one log line per minute while that goes on.  :meth:`Recorder.close` flushes
what is left.

Which messages are not recorded, and why:

* no DMARC policy applies (result ``none`` or ``permerror``, or a ``temperror`` before a policy
  record was read): nobody to report to;
* the message was tempfailed (by us or by the upstream MTA): the sender will try again and the
  retry is the message that counts;
* the message is itself a DMARC report (an aggregate report's RFC 9990 "Email" subject, or an
  RFC 6591/9991 failure report): never reporting about reports keeps two reporters from
  feeding each other.  RFC 9990 does not ask for this; it costs the domain owner nothing (the
  rows would describe report traffic between report processors), and it can only be checked
  when the caller passes the message's header fields.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from ..config import Config
from ..observers import MessageEvent
from ..results import SessionFacts, Verdict
from .rows import DISPOSITIONS, EvaluationRow, row_from_verdict
from .backends import open_store
from .store import Store

log = logging.getLogger("authfilter.reports")

LOG_EVERY = 60.0          # seconds between repeated warnings of the same kind
MAX_PAUSE = 60.0          # longest pause between attempts to reach a failing store
CLOSE_TIMEOUT = 10.0      # seconds close() keeps trying to flush

HeaderFields = Sequence[tuple[bytes, bytes]]


def is_dmarc_report(headers: HeaderFields) -> bool:
    """An aggregate report (``Subject: Report Domain: ... Submitter: ...``, RFC 9990 "Email")
    or a failure report (``multipart/report; report-type=feedback-report``, RFC 6591)."""
    for name, value in headers:
        lname = name.lower()
        if lname == b"subject":
            text = b" ".join(value.split())
            if text.startswith(b"Report Domain:") and b"Submitter:" in text:
                return True
        elif lname == b"content-type":
            text = value.lower()
            if b"multipart/report" in text and b"feedback-report" in text:
                return True
    return False


class Recorder:
    """Buffers evaluation rows and writes them to the store in batches, in the background."""

    def __init__(self, store_factory: Callable[[], Store], *, discovery: str = "treewalk",
                 envelope_to: bool = False, buffer_rows: int = 100_000, batch_rows: int = 500,
                 flush_interval: float = 2.0, enabled: bool = True) -> None:
        self._store_factory = store_factory
        self._store: Store | None = None
        self.discovery = discovery
        self.envelope_to = envelope_to
        self.buffer_rows = buffer_rows
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self.enabled = enabled
        self._buffer: deque[EvaluationRow] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_pending = False
        self._closing = False
        self._last_log: dict[str, float] = {}
        self.recorded = 0          # rows accepted into the buffer
        self.written = 0           # rows committed to the store
        self.dropped = 0           # rows lost: buffer full, or not written by close()
        self.errors = 0            # record() calls that failed (bad input), never raised

    @classmethod
    def from_config(cls, config: Config) -> "Recorder":
        rc = config.reports
        return cls(lambda: open_store(rc.store),
                   discovery="psl" if config.dmarc.mode == "rfc7489" else "treewalk",
                   envelope_to=rc.envelope_to, buffer_rows=rc.buffer_rows,
                   batch_rows=rc.batch_rows, flush_interval=rc.flush_interval,
                   enabled=rc.enabled)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # -- the SMTP path --------------------------------------------------------------------
    def record(self, facts: SessionFacts, verdict: Verdict, disposition: str,
               override_reason: str | None = None, *, headers: HeaderFields | None = None,
               at: float | None = None) -> None:
        """Queue one evaluation.  ``disposition`` is none/quarantine/reject (the one applied);
        ``override_reason`` an RFC 9990 override type, ``"type: comment"`` or free text;
        ``headers`` the message's header fields (``Message.headers``) to recognise reports."""
        if not self.enabled:
            return
        try:
            if disposition not in DISPOSITIONS:
                raise ValueError(f"disposition {disposition!r} is not one of {DISPOSITIONS}")
            if headers is not None and is_dmarc_report(headers):
                return
            row = row_from_verdict(facts, verdict, disposition, override_reason,
                                   received=int(time.time() if at is None else at),
                                   discovery=self.discovery, with_envelope_to=self.envelope_to)
            if row is None:
                return
            if len(self._buffer) >= self.buffer_rows:
                self.dropped += 1
                self._warn("full", "report buffer full (%d rows, store unreachable or slow): "
                           "%d rows dropped so far", self.buffer_rows, self.dropped)
                return
            self._buffer.append(row)
            self.recorded += 1
            if len(self._buffer) >= self.batch_rows and not self._wake_pending \
                    and self._loop is not None:
                self._wake_pending = True
                self._loop.call_soon_threadsafe(self._wake_up)
        except Exception as exc:    # never into the SMTP path
            self.errors += 1
            self._warn("error", "report row not recorded: %s", exc)

    def on_message(self, event: MessageEvent) -> None:
        """The pipeline's observer hook (also what calling the recorder does).  Nothing is
        recorded without a verdict (trusted or outbound mail), for a tempfail or an upstream
        4xx (the retry is the message that counts)."""
        if event.verdict is None:
            return
        action, upstream = event.action, event.upstream_reply
        if action.kind == "tempfail" or (upstream is not None and 400 <= upstream.code < 500):
            return
        self.record(event.facts, event.verdict, action.disposition, action.override,
                    headers=event.headers)

    __call__ = on_message

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[kind] = now
            log.warning(message, *args)

    def _wake_up(self) -> None:
        self._wake_pending = False
        if self._wake is not None:
            self._wake.set()

    # -- background writing -----------------------------------------------------------------
    async def start(self) -> None:
        """Start the writer (the store is opened by it, so a store that is down at start-up
        delays only the rows, not the filter)."""
        if self._task is not None or not self.enabled:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="authfilter-reports")
        self._task = asyncio.create_task(self._run(), name="authfilter-report-writer")

    async def _run(self) -> None:
        assert self._wake is not None
        pause = self.flush_interval
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                break
            pause = self.flush_interval if await self._flush() else min(MAX_PAUSE, pause * 2)

    async def _flush(self) -> bool:
        """Write everything buffered, batch by batch; False (rows kept) when the store fails."""
        loop = asyncio.get_running_loop()
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(self.batch_rows, len(self._buffer)))]
            try:
                await loop.run_in_executor(self._executor, self._write, batch)
            except Exception as exc:
                self._buffer.extendleft(reversed(batch))
                self._warn("store", "report store unavailable, %d rows kept in memory: %s",
                           len(self._buffer), exc)
                return False
            self.written += len(batch)
        return True

    def _write(self, batch: list[EvaluationRow]) -> None:
        """In the writer thread: open the store if needed, write one batch."""
        try:
            if self._store is None:
                self._store = self._store_factory()
            self._store.insert_rows(batch)
        except Exception:
            self._drop_store()
            raise

    def _drop_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                pass
            self._store = None

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the writer and flush what is buffered (trying for up to ``timeout`` s)."""
        if self._task is None:
            return
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        await self._task
        deadline = time.monotonic() + timeout
        while self._buffer and not await self._flush() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if self._buffer:
            self.dropped += len(self._buffer)
            log.error("report store unavailable at shutdown: %d rows lost", len(self._buffer))
            self._buffer.clear()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._drop_store)
        assert self._executor is not None
        self._executor.shutdown(wait=True)
        self._task = None
