"""The verification engine: SPF, DKIM, ARC and DMARC for one message, returning a Verdict.

It knows nothing of sockets or files: it takes the session facts, the raw message and a
:class:`~authfilter.dns.Resolver`, and returns typed results.  Front-ends (the SMTP proxy, the
CLI) only feed it and act on its verdict.

Order of work for one message, to overlap DNS round trips:

1. SPF can start as soon as MAIL FROM is known (:meth:`Engine.start_spf`).
2. At end of data, the DKIM and ARC key records and the DMARC policy discovery are fetched
   concurrently.
3. The CPU part (canonicalization, hashing, signature checks) runs with no I/O at all; for big
   messages it is handed to an executor when other sessions share the event loop, so that
   they are served meanwhile.
4. DMARC combines the SPF and DKIM results with the discovered policy.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Callable, Mapping

from .checks import arc, dkim, dmarc
from .checks import spf as spf_check
from .config import Config
from .dkimcore import BodyHashes
from .dns import DnsAnswer, Resolver
from .message import Message
from .results import ArcResult, DkimResult, SessionFacts, SpfResult, Verdict

# Messages at least this big have their signatures checked in the executor (if one is given)
# while other sessions share the event loop: they would wait about 5 ms per MB (canonicalization
# and hashing).  A message that has the loop to itself is checked in place, which saves copying
# it to a worker process and back: about a third of the CPU its checks take.
OFFLOAD_BYTES = 256 * 1024


def resolver_from_config(config: Config) -> Resolver:
    d = config.dns
    return Resolver(d.nameservers, timeout=d.timeout, lifetime=d.lifetime, cache_size=d.cache_size,
                    failure_ttl=d.failure_ttl)


def verify_crypto(message: Message, keys: Mapping[str, DnsAnswer], config: Config,
                  now: float, bodies: BodyHashes | None = None
                  ) -> tuple[tuple[DkimResult, ...], ArcResult]:
    """All the CPU work of one message, no I/O.  ``bodies`` (the message body's hashes, shared
    by DKIM, ARC and then our own ARC seal) is made here when not given."""
    bodies = bodies or BodyHashes(message.body)
    dkim_results = dkim.verify_signatures(message, keys, config.dkim, now, bodies)
    arc_result = arc.validate_chain(message, keys, now, config.dkim.min_rsa_bits, bodies) \
        if config.arc.enabled else ArcResult("none", reason="ARC validation disabled")
    return dkim_results, arc_result


def verify_crypto_of_raw(raw: bytes, keys: Mapping[str, DnsAnswer], config: Config, now: float
                         ) -> tuple[tuple[DkimResult, ...], ArcResult, dict]:
    """:func:`verify_crypto` for a worker process: only the raw bytes cross the process
    boundary (pickling a parsed Message would copy the message twice), and only the body
    hashes computed come back.  ``raw`` is a :class:`Message`'s, so its line ends are CRLF."""
    message = Message.parse(raw, crlf_only=True)
    bodies = BodyHashes(message.body)
    dkim_results, arc_result = verify_crypto(message, keys, config, now, bodies)
    return dkim_results, arc_result, bodies.computed()


def _always() -> bool:
    return True


class Engine:
    """``loop_shared`` says whether other sessions share the event loop right now (the proxy
    counts its sessions); without it a big message always goes to the executor."""

    def __init__(self, config: Config, resolver: Resolver | None = None,
                 executor: Executor | None = None,
                 loop_shared: Callable[[], bool] = _always) -> None:
        self.config = config
        self.resolver = resolver or resolver_from_config(config)
        self.executor = executor
        self.loop_shared = loop_shared

    # -- SPF --------------------------------------------------------------------------------
    def deadline(self) -> float:
        return time.monotonic() + self.config.general.message_deadline

    async def check_spf(self, facts: SessionFacts, deadline: float | None = None
                        ) -> tuple[SpfResult, SpfResult | None]:
        """The MAIL FROM check (HELO for the null sender) and, when configured, the separate
        labelled HELO check, concurrently."""
        deadline = deadline or self.deadline()
        timeout = self.config.spf.timeout
        main = spf_check.check_spf(facts, self.resolver, identity="mailfrom", deadline=deadline,
                             timeout=timeout)
        if self.config.spf.helo_check and facts.helo and facts.mail_from:
            helo = spf_check.check_spf(facts, self.resolver, identity="helo", deadline=deadline,
                                 timeout=timeout)
            return tuple(await asyncio.gather(main, helo))  # type: ignore[return-value]
        return await main, None

    def start_spf(self, facts: SessionFacts) -> asyncio.Task:
        """Start SPF now (at MAIL FROM) so its DNS overlaps the rest of the transaction."""
        return asyncio.ensure_future(self.check_spf(facts))

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
                               spf: asyncio.Future | None = None, now: float | None = None,
                               bodies: BodyHashes | None = None) -> Verdict:
        """:meth:`evaluate` for a message the caller has parsed (and uses too); ``bodies``
        receives the body hashes computed, for the caller's ARC seal."""
        bodies = bodies or BodyHashes(message.body)
        deadline = self.deadline()
        now = time.time() if now is None else now
        spf_task = spf if spf is not None else asyncio.ensure_future(self.check_spf(facts, deadline))

        names = set(dkim.key_names(message, self.config.dkim.max_signatures))
        if self.config.arc.enabled:
            names.update(arc.key_names(message))
        names_in_order = sorted(names)
        discovery_task = asyncio.ensure_future(
            dmarc.discover_policy(message, self.resolver, mode=self.config.dmarc.mode, deadline=deadline))
        keys = await self._txt_records(names_in_order, deadline)

        if self.executor is not None and len(message.raw) >= OFFLOAD_BYTES and self.loop_shared():
            loop = asyncio.get_running_loop()
            dkim_results, arc_result, hashes = await loop.run_in_executor(
                self.executor, verify_crypto_of_raw, message.raw, keys, self.config, now)
            bodies.learn(hashes)
        else:
            dkim_results, arc_result = verify_crypto(message, keys, self.config, now, bodies)

        spf_result, helo_result = await spf_task
        discovery = await discovery_task
        dmarc_result = await dmarc.evaluate_dmarc(discovery, spf_result, dkim_results,
                                                  self.resolver, deadline=deadline)
        return Verdict(spf=spf_result, dkim=dkim_results, arc=arc_result, dmarc=dmarc_result,
                       helo_spf=helo_result, errors=tuple(message.errors))
