"""The verification engine: every registered check (:mod:`authfilter.checks`) on one message.

It knows nothing of sockets or files: it takes the session facts, the raw message and a
:class:`~authfilter.dns.Resolver`, and returns a typed :class:`~authfilter.results.Verdict`.
Front-ends (the SMTP proxy, the CLI) only feed it and act on its verdict.

Order of work for one message, to overlap DNS round trips (the kinds of check are
:mod:`authfilter.checks.base`'s):

0. Client checks (iprev, DNS blocklists) start as soon as the client is known
   (:meth:`Engine.start_client`), once per client for all its messages.
1. Envelope checks (SPF) can start as soon as MAIL FROM is known (:meth:`Engine.start_spf`).
2. At end of data, the TXT records the content checks read (DKIM and ARC keys) are fetched
   concurrently, while the dependent checks prepare (DMARC policy discovery).
3. The CPU part (canonicalization, hashing, signature checks: every content check's
   ``verify``) runs with no I/O at all; for big messages it is handed to an executor when other
   sessions share the event loop, so that they are served meanwhile.
4. The dependent checks, in registry order, combine what they prepared with the results they
   require (DMARC: SPF and DKIM).

Each check is timed (``Verdict.seconds``: the time of its stages, DNS waits included; they
overlap, so the times do not add up to the whole) and contained: a check that raises is logged
and gets its temperror result (:meth:`~authfilter.checks.base.Check.temperror`), and the
others run on.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .checks import REGISTRY, Registry
from .checks.base import Check, ContentCheck, DependentCheck, MessageContext
from .config import Config
from .dkimcore import BodyHashes
from .dns import DnsAnswer, Resolver
from .message import Message
from .results import CheckOutcomes, SessionFacts, Verdict

log = logging.getLogger("authfilter.engine")

# Messages at least this big have their signatures checked in the executor (if one is given)
# while other sessions share the event loop: they would wait about 5 ms per MB (canonicalization
# and hashing).  A message that has the loop to itself is checked in place, which saves copying
# it to a worker process and back: about a third of the CPU its checks take.
OFFLOAD_BYTES = 256 * 1024


def resolver_from_config(config: Config) -> Resolver:
    d = config.dns
    return Resolver(d.nameservers, timeout=d.timeout, lifetime=d.lifetime, cache_size=d.cache_size,
                    failure_ttl=d.failure_ttl)


def verify_crypto(checks: Sequence[ContentCheck], facts: SessionFacts, message: Message,
                  keys: Mapping[str, DnsAnswer], config: Config, now: float,
                  bodies: BodyHashes | None = None) -> CheckOutcomes:
    """All the CPU work of one message, no I/O: every content check's ``verify``, each timed
    and contained.  ``bodies`` (the message body's hashes, shared by DKIM, ARC and then our own
    ARC seal) is made here when not given."""
    bodies = bodies or BodyHashes(message.body)
    found = CheckOutcomes()
    for check in checks:
        start = time.perf_counter()
        result = _call(check, facts, found, check.verify, message, keys, config, now, bodies)
        found.results.setdefault(check.name, result)
        found.add_seconds(check.name, time.perf_counter() - start)
    return found


def verify_crypto_of_raw(checks: Sequence[ContentCheck], facts: SessionFacts, raw: bytes,
                         keys: Mapping[str, DnsAnswer], config: Config, now: float
                         ) -> tuple[CheckOutcomes, dict]:
    """:func:`verify_crypto` for a worker process: only the raw bytes cross the process
    boundary (pickling a parsed Message would copy the message twice), and only the results
    and the body hashes computed come back.  ``raw`` is a :class:`Message`'s, so its line ends
    are CRLF."""
    message = Message.parse(raw, crlf_only=True)
    bodies = BodyHashes(message.body)
    return verify_crypto(checks, facts, message, keys, config, now, bodies), bodies.computed()


# -- containment: a check that raises gets its temperror result ------------------------------
def _failed(check: Check, exc: Exception, facts: SessionFacts, found: CheckOutcomes) -> Any:
    """The result of a check that raised; ``found`` also notes the failure, so that the
    pipeline tempfails the message (an error of ours must not decide its fate)."""
    log.error("the %s check failed", check.name, exc_info=exc)
    reason = f"internal error in {check.name} check: {type(exc).__name__}: {exc}"
    found.failed[check.name] = reason
    return check.temperror(reason, facts)


def _call(check: Check, facts: SessionFacts, found: CheckOutcomes, hook: Callable,
          *args: Any) -> Any:
    """``hook(*args)``, a step of ``check``; if it raises, ``check`` gets its temperror result
    in ``found`` (which ends it) and the value is None."""
    try:
        return hook(*args)
    except Exception as exc:
        found.results[check.name] = _failed(check, exc, facts, found)
        return None


async def _stage(check: Check, awaitable: Awaitable, facts: SessionFacts, found: CheckOutcomes,
                 *, final: bool = False) -> Any:
    """``awaitable``, a stage of ``check``, awaited and timed into ``found``, with its value as
    the check's result when ``final``; if it raises, as :func:`_call`."""
    start = time.perf_counter()
    try:
        value = await awaitable
    except Exception as exc:
        found.results[check.name] = value = _failed(check, exc, facts, found)
    else:
        if final:
            found.results[check.name] = value
    found.add_seconds(check.name, time.perf_counter() - start)
    return value


def _always() -> bool:
    return True


class Engine:
    """``loop_shared`` says whether other sessions share the event loop right now (the proxy
    counts its sessions); without it a big message always goes to the executor.  ``checks``:
    the registry of checks to run (read at each message)."""

    def __init__(self, config: Config, resolver: Resolver | None = None,
                 executor: Executor | None = None,
                 loop_shared: Callable[[], bool] = _always, checks: Registry = REGISTRY) -> None:
        self.config = config
        self.resolver = resolver or resolver_from_config(config)
        self.executor = executor
        self.loop_shared = loop_shared
        self.checks = checks

    def deadline(self) -> float:
        return time.monotonic() + self.config.general.message_deadline

    # -- the envelope -----------------------------------------------------------------------
    def start_client(self, facts: SessionFacts) -> asyncio.Task:
        """Start the client checks (iprev, DNS blocklists) now, when the client is known.  The
        task gives their :class:`CheckOutcomes`."""
        return asyncio.ensure_future(self._run_alone(self.checks.client, facts, self.deadline()))

    def start_spf(self, facts: SessionFacts) -> asyncio.Task:
        """Start the envelope checks (SPF, and the HELO check when configured) now, at MAIL
        FROM, so their DNS overlaps the rest of the transaction.  The task gives their
        :class:`CheckOutcomes`."""
        return asyncio.ensure_future(self._envelope(facts, self.deadline()))

    def _envelope(self, facts: SessionFacts, deadline: float) -> Awaitable[CheckOutcomes]:
        return self._run_alone(self.checks.envelope, facts, deadline)

    async def _run_alone(self, checks: Sequence[Check], facts: SessionFacts,
                         deadline: float) -> CheckOutcomes:
        """Checks that need nothing but ``facts`` (client and envelope checks), at once."""
        found = CheckOutcomes()
        runs = []
        for check in checks:
            awaitable = _call(check, facts, found, check.evaluate, facts, self.resolver,
                              self.config, deadline)
            if awaitable is not None:
                runs.append(_stage(check, awaitable, facts, found, final=True))
        # all at once; the last one in this task (a task less than gather would make)
        others = [asyncio.ensure_future(run) for run in runs[:-1]]
        if runs:
            await runs[-1]
        for other in others:
            await other
        return found

    # -- the whole message ------------------------------------------------------------------
    async def _txt_records(self, names: list[str], deadline: float) -> dict[str, DnsAnswer]:
        """The TXT answers for ``names``, looked up concurrently; when all are cached (the usual
        case) one after the other, which costs no task per name."""
        if all(self.resolver.peek(n, "TXT") is not None for n in names):
            return {n: await self.resolver.query(n, "TXT", deadline=deadline) for n in names}
        answers = await asyncio.gather(*(self.resolver.query(n, "TXT", deadline=deadline)
                                         for n in names))
        return dict(zip(names, answers))

    async def evaluate(self, facts: SessionFacts, raw: bytes, *, spf: asyncio.Future | None = None,
                       now: float | None = None, crlf_only: bool = False) -> Verdict:
        """Verdict for one message; ``spf`` is the task :meth:`start_spf` returned, if any;
        ``crlf_only`` as for :meth:`Message.parse`."""
        return await self.evaluate_message(facts, Message.parse(raw, crlf_only=crlf_only),
                                           spf=spf, now=now)

    async def evaluate_message(self, facts: SessionFacts, message: Message, *,
                               spf: asyncio.Future | None = None,
                               client: asyncio.Future | None = None, now: float | None = None,
                               bodies: BodyHashes | None = None) -> Verdict:
        """:meth:`evaluate` for a message the caller has parsed (and uses too); ``bodies``
        receives the body hashes computed, for the caller's ARC seal.  ``spf`` and ``client``
        are the tasks :meth:`start_spf` and :meth:`start_client` returned, or futures the
        caller resolved with those checks' outcomes itself; each is started here if not
        given."""
        bodies = bodies or BodyHashes(message.body)
        deadline = self.deadline()
        now = time.time() if now is None else now
        if client is None:
            client = asyncio.ensure_future(self._run_alone(self.checks.client, facts, deadline))
        envelope = spf if spf is not None else asyncio.ensure_future(
            self._envelope(facts, deadline))
        context = MessageContext(facts, message, self.resolver, self.config, deadline)
        found = CheckOutcomes()
        preparing = [(check, self._prepare(check, context, found))
                     for check in self.checks.dependent]
        await self._verify_content(context, now, bodies, found)
        found.update(await client)
        found.update(await envelope)
        for check, task in preparing:       # registry order: what each requires is known
            prepared = None if task is None else await task
            if check.name in found.results:     # it failed while preparing
                continue
            awaitable = _call(check, facts, found, check.evaluate, context, prepared, found.results)
            if awaitable is not None:
                await _stage(check, awaitable, facts, found, final=True)
        return Verdict.of(self.checks.checks, found, message.errors)

    def _prepare(self, check: DependentCheck, context: MessageContext,
                 found: CheckOutcomes) -> asyncio.Task | None:
        """``check``'s preparation, started as a task (None: nothing to prepare, or it failed)."""
        awaitable = _call(check, context.facts, found, check.prepare, context)
        if awaitable is None:
            return None
        return asyncio.ensure_future(_stage(check, awaitable, context.facts, found))

    async def _verify_content(self, context: MessageContext, now: float, bodies: BodyHashes,
                              found: CheckOutcomes) -> None:
        """The content checks: their TXT records fetched together, then every ``verify`` in
        one call, here or in the executor."""
        facts, message, config = context.facts, context.message, context.config
        content, asking, names = [], [], set()
        for check in self.checks.content:
            wanted = _call(check, facts, found, check.dns_names, message, config)
            if wanted is not None:
                content.append(check)
                if wanted:
                    asking.append(check)
                    names.update(wanted)
        started = time.perf_counter()
        keys = await self._txt_records(sorted(names), context.deadline)
        fetched = time.perf_counter() - started
        for check in asking:                # the key fetch is part of these checks' time
            found.add_seconds(check.name, fetched)
        if self.executor is not None and len(message.raw) >= OFFLOAD_BYTES and self.loop_shared():
            loop = asyncio.get_running_loop()
            verified, hashes = await loop.run_in_executor(
                self.executor, verify_crypto_of_raw, tuple(content), facts, message.raw, keys,
                config, now)
            bodies.learn(hashes)
        else:
            verified = verify_crypto(content, facts, message, keys, config, now, bodies)
        found.update(verified)
