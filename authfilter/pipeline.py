"""The message pipeline: the one place that decides what happens to a message.

Every front-end (the SMTP proxy, the milter, ``authfilter check``, your own Python mail
software) only translates its protocol to these calls and applies what comes back::

    from authfilter.pipeline import Pipeline, SessionFacts
    async with Pipeline.open(config_path) as pipeline:      # None = embedded defaults
        tx = pipeline.begin(SessionFacts(client_ip="192.0.2.1", helo="mail.example.org",
                                         mail_from="alice@example.org",
                                         recipients=["bob@example.net"], role="inbound"))
        d = await tx.finish(message_bytes)   # CRLF message as it would be queued
        d.action, d.reply, d.remove, d.prepend, d.verdict
        await tx.done(upstream_reply=(250, "2.0.0 Ok: queued as 4XYZ"))

:meth:`Pipeline.begin` runs at MAIL FROM: it decides trust (the caller's word, or
``policy.trusted_networks``) and starts SPF, so its DNS overlaps the rest of the transaction.
:meth:`Transaction.finish` runs at end of data: forged header fields found, checks, policy,
Authentication-Results, quarantine mark, DKIM signing (submission, local), ARC sealing.  It
never raises for a message: an error of ours is a ``tempfail`` (the sender keeps the mail).
:meth:`Transaction.done` runs once the client has its reply: one log line, metrics, observers.

A :class:`Disposition` says what to do, in the terms every MTA interface has: an action and
reply, header fields to remove (by name and index among fields of that name, as a milter's
SMFIR_CHGHEADER counts) and header fields to insert at the top, in order.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

from .authres import HEADER_NAME, authserv_id_of, build_header, header_value
from .dkimcore import BodyHashes
from .logline import format_kv, message_record
from .message import (HeaderField, Message, removal_of, split_field, with_fields_on_top,
                      without_fields)
from .observers import BackgroundObserver, MessageEvent
from .policy import ACCEPT, QUARANTINE, TEMPFAIL, Action, ActionWord
from .reports.hooks import observers_from_config
from .results import (ArcResult, CheckOutcomes, DmarcResult, SessionFacts, SmtpReply, SpfResult,
                      Verdict)
from .runtime import Runtime

__all__ = ["Disposition", "Pipeline", "SessionFacts", "SmtpReply", "Transaction"]

log = logging.getLogger("authfilter.pipeline")
message_log = logging.getLogger("authfilter.message")

NOT_CHECKED = "not checked: trusted network"
DEADLINE_SLACK = 5.0          # the engine bounds every lookup; this only guards against bugs
TEMP_FAILURE = SmtpReply(451, "4.3.0 Temporary failure checking the message, try again later")
_LIST_FIELDS = (b"list-id", b"list-post")                       # RFC 2919, RFC 2369
_AUTHRES = HEADER_NAME.lower().encode("ascii")

UNSET: object = object()


@dataclass(frozen=True, slots=True)
class Disposition:
    """What to do with one message.

    ``remove``: ``(field name, 1-based index among the fields of that name)`` in the message
    as given to :meth:`Transaction.finish`, highest index of a name first (apply them in this
    order and none shifts another).  ``prepend``: fields to insert at the very top, first one
    topmost (see :data:`~authfilter.message.HeaderField` for the value's form).  ``message`` is
    the message as parsed, for a front-end that applies the edits to its own bytes.
    """

    action: ActionWord
    reply: SmtpReply | None
    remove: tuple[tuple[str, int], ...]
    prepend: tuple[HeaderField, ...]
    verdict: Verdict | None
    decision: Action                 # the policy's full answer (reason, override, dry run)
    message: Message

    @property
    def relays(self) -> bool:
        """Whether the message goes on (accept, quarantine) rather than being refused."""
        return self.action in (ACCEPT, QUARANTINE)


class Transaction:
    """One message, from MAIL FROM to the client's reply.  Holds the config generation it
    began with."""

    def __init__(self, runtime: Runtime, facts: SessionFacts, *, arc_seal: bool,
                 session: str, peer: str) -> None:
        self.runtime = runtime
        self.facts = facts
        self.arc_seal = arc_seal and runtime.sealer is not None
        self.session = session
        self.peer = peer
        self.started_data = time.monotonic()     # reset at end of data
        self.disposition: Disposition | None = None
        self._size = 0
        self._timings: dict[str, float] = {}
        self._headers: list[tuple[bytes, bytes]] | None = None
        verify = facts.role == "inbound" and not facts.trusted
        self._spf: asyncio.Future | None = runtime.engine.start_spf(facts) if verify else None

    def add_recipient(self, address: str) -> None:
        """A recipient the MTA accepted after :meth:`Pipeline.begin`."""
        self.facts = dataclasses.replace(self.facts, recipients=self.facts.recipients + (address,))

    # -- end of data --------------------------------------------------------------------------
    async def finish(self, raw: bytes, *, crlf_only: bool = False) -> Disposition:
        """The disposition of the message ``raw`` (CRLF or bare-LF line ends, not dot-stuffed;
        ``crlf_only``: the caller knows it has no bare LF).  Called once."""
        self.started_data = time.monotonic()
        self._size = len(raw)
        message = Message.parse(raw, crlf_only=crlf_only)
        if self.facts.role == "inbound":
            d = await self._inbound(message)
        else:
            d = self._outbound(message)
        self.disposition = d
        return d

    async def _inbound(self, message: Message) -> Disposition:
        rt = self.runtime
        forged = self._forged(message)
        checked = without_fields(message, forged)
        self._headers = checked.headers
        mailing_list = any(name in checked.positions for name in _LIST_FIELDS)
        bodies = BodyHashes(checked.body)
        verdict: Verdict | None = None
        try:
            verdict = await self._verdict(checked, bodies)
            self._timings["total"] = time.monotonic() - self.started_data
            if verdict is None:
                action = Action(ACCEPT, "trusted network")
            elif verdict.failed:        # a check of ours broke: the sender keeps the mail
                action = Action(TEMPFAIL, "; ".join(verdict.failed.values()), TEMP_FAILURE)
            else:
                action = rt.policy.decide(self.facts, verdict, mailing_list=mailing_list)
        except TimeoutError:
            log.error("checks of a message from %s overran the deadline", self.facts.client_ip)
            action = Action(TEMPFAIL, "checks timed out", TEMP_FAILURE)
        except Exception:
            log.exception("checking a message from %s failed", self.facts.client_ip)
            action = Action(TEMPFAIL, "internal error while checking", TEMP_FAILURE)
        results = split_field(build_header(rt.authserv_id, self.facts, verdict).encode("utf-8")) \
            if verdict else (HEADER_NAME, f"{rt.authserv_id}; none")    # RFC 8601 s. 2.2
        prepend = [results]
        if self.arc_seal and verdict is not None and action.kind in (ACCEPT, QUARANTINE):
            prepend += self._seal(checked, action.add_fields, verdict, bodies)
        prepend += action.add_fields
        return Disposition(action.kind, action.reply, tuple(removal_of(message, forged)),
                           tuple(prepend), verdict, action, message)

    def _forged(self, message: Message) -> list[int]:
        """Indexes of the fields we must not pass on: Authentication-Results claiming our
        authserv-id (RFC 8601 s. 5: we did not write them for this message) and a quarantine
        mark the client wrote."""
        rt = self.runtime
        ours = rt.authserv_id.lower()
        mark = rt.policy.quarantine_header.lower().encode("ascii")
        headers, positions = message.headers, message.positions
        forged = [i for i in positions.get(_AUTHRES, ()) if authserv_id_of(headers[i][1]) == ours]
        return sorted(forged + list(positions.get(mark, ())))

    async def _verdict(self, message: Message, bodies: BodyHashes) -> Verdict | None:
        engine, facts = self.runtime.engine, self.facts
        if facts.trusted:
            if self.runtime.config.policy.trusted_checks == "none":
                return None
            domain = facts.mail_from.rpartition("@")[2] if facts.mail_from else None
            skipped: asyncio.Future = asyncio.get_running_loop().create_future()
            skipped.set_result(CheckOutcomes({"spf": SpfResult("none", "mailfrom", domain,
                                                               reason=NOT_CHECKED)}))
            verdict = await engine.evaluate_message(facts, message, spf=skipped, bodies=bodies)
            return dataclasses.replace(verdict, arc=ArcResult("none", reason=NOT_CHECKED),
                                       dmarc=DmarcResult("none", verdict.dmarc.from_domain,
                                                         reason=NOT_CHECKED))
        spf, self._spf = self._spf, None
        async with asyncio.timeout(self.runtime.config.general.message_deadline + DEADLINE_SLACK):
            return await engine.evaluate_message(facts, message, spf=spf, bodies=bodies)

    def _seal(self, checked: Message, marks: tuple[HeaderField, ...], verdict: Verdict,
              bodies: BodyHashes) -> list[HeaderField]:
        """Our ARC set (RFC 8617 s. 5.1): the AAR carries our results, the AMS covers the
        message as relayed (with the quarantine mark), the seal the chain as it arrived."""
        rt = self.runtime
        outcome = rt.sealer.seal_fields(with_fields_on_top(checked, marks), header_value(rt.authserv_id, self.facts, verdict),
                                        verdict.arc, bodies=bodies)
        log.info("%s", outcome.describe(rt.sealer))
        return [split_field(f) for f in outcome.fields]

    def _outbound(self, message: Message) -> Disposition:
        """Submission and local mail: DKIM-signed when the signing table has its From domain.
        A signer that fails tempfails submission (the client retries) and passes local mail on
        unsigned (it is never refused: there is no client to retry)."""
        signer = self.runtime.signer
        prepend: tuple[HeaderField, ...] = ()
        action = Action(ACCEPT, self.facts.role)
        try:
            if signer is not None:
                outcome = signer.signatures(message)
                log.info("%s client=%s", outcome.describe(), self.facts.client_ip)
                prepend = tuple(split_field(f) for f in outcome.signatures)
        except Exception:
            log.exception("signing a message from %s failed", self.facts.client_ip)
            if self.facts.role == "submission":
                action = Action(TEMPFAIL, "signing failed", TEMP_FAILURE)
            else:
                action = Action(ACCEPT, "local; signing failed, passed on unsigned")
        return Disposition(action.kind, action.reply, (), prepend, None, action, message)

    # -- after the reply ----------------------------------------------------------------------
    async def done(self, upstream_reply: tuple[int, str] | None = None, *,
                   reply_sent: SmtpReply | tuple[int, str] | None | object = UNSET) -> None:
        """Log, count and tell the observers.  ``upstream_reply``: what the next hop said to
        the message, None if it was not relayed.  ``reply_sent``: what the client was told
        (None: it had gone); by default the upstream's reply, or ours for a refusal."""
        self.abandon()
        d = self.disposition
        if d is None:
            return
        upstream = SmtpReply(*upstream_reply) if upstream_reply is not None else None
        if reply_sent is UNSET:
            reply_sent = d.reply if d.reply is not None else upstream
        sent = SmtpReply(*reply_sent) if reply_sent is not None else None
        rt = self.runtime
        elapsed = time.monotonic() - self.started_data
        record = message_record(session=self.session, role=self.facts.role, facts=self.facts,
                                peer=self.peer, size=self._size, verdict=d.verdict,
                                action=d.decision, upstream_reply=upstream, reply=sent,
                                elapsed=elapsed)
        message_log.info("%s", format_kv(record), extra={"fields": record})   # see logsetup
        rt.metrics.message_done(d.verdict, d.action, {"end_of_data": elapsed, **self._timings})
        event = MessageEvent(self.facts, d.verdict, d.decision, upstream, elapsed, self._headers)
        for observer in rt.observers:
            try:
                observer(event)
            except Exception:
                log.exception("message observer %r failed", observer)

    def abandon(self) -> None:
        """The transaction ends without (more) use of its SPF check: stop it."""
        task, self._spf = self._spf, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()           # a failure nobody waits for: marked as seen


class Pipeline:
    """Holds the config generation in force (:class:`~authfilter.runtime.Runtime`) and starts
    transactions on it; :meth:`reload` swaps in a new one for transactions begun after."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config_path: str | None = None) -> AsyncIterator["Pipeline"]:
        """The pipeline of a config file (None: the embedded defaults), checked as ``serve``
        checks it, with the observers ``serve`` would run (DMARC report rows, failure
        reports, when configured); closed (observers flushed) on leaving the block."""
        from .startup import load_checked
        config = load_checked(config_path)
        runtime = Runtime.build(config, observers=observers_from_config(config))
        started = [o for o in runtime.observers if isinstance(o, BackgroundObserver)]
        for observer in started:
            await observer.start()
        try:
            yield cls(runtime)
        finally:
            for observer in started:
                await observer.close()

    def begin(self, facts: SessionFacts, *, arc_seal: bool = False, session: str = "",
              peer: str = "") -> Transaction:
        """A transaction for a message with these envelope facts (at MAIL FROM, in the running
        event loop: SPF starts as a task of it).  ``arc_seal``:
        the front-end's listener seals inbound mail; ``session`` and ``peer`` (who connected
        to the front-end) go into the log line."""
        rt = self.runtime
        if not facts.trusted and rt.policy.is_trusted(facts.client_ip):
            facts = dataclasses.replace(facts, trusted=True)
        return Transaction(rt, facts, arc_seal=arc_seal, session=session, peer=peer)

    def reload(self, runtime: Runtime) -> Runtime:
        """Put ``runtime`` in force for new transactions; returns the one it replaces."""
        old, self.runtime = self.runtime, runtime
        return old
