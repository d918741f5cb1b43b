"""The message pipeline: the one place that decides what happens to a message.

Every front-end (the SMTP proxy, the milter, ``authfilter check``, your own Python mail
software) only translates its protocol to these calls and applies what comes back::

    from authfilter.pipeline import Pipeline, SessionFacts
    async with Pipeline.open(config_path) as pipeline:      # None = embedded defaults
        client = pipeline.client("192.0.2.1")                # at connect (optional)
        tx = pipeline.begin(SessionFacts(client_ip="192.0.2.1", helo="mail.example.org",
                                         mail_from="alice@example.org", role="inbound"),
                            client=client)
        refusal = await tx.recipient("bob@example.net")     # at RCPT: None, or the reply
        tx.add_recipient("bob@example.net")                  # once the MTA took it
        d = await tx.finish(message_bytes)   # CRLF message as it would be queued
        d.action, d.reply, d.remove, d.prepend, d.verdict
        await tx.done(upstream_reply=(250, "2.0.0 Ok: queued as 4XYZ"))
    client.close()                                           # the SMTP session ended

:meth:`Pipeline.client` runs when the front-end learns the client's address: it starts the
client checks (iprev, DNS blocklists), once for all the messages of a session (without it,
:meth:`Pipeline.begin` starts them).  :meth:`Pipeline.begin` runs at MAIL FROM: it decides
trust (the caller's word, or ``policy.trusted_networks``) and starts SPF, so its DNS overlaps
the rest of the transaction.  :meth:`Transaction.recipient` runs at each RCPT: the early
defences (deny lists, DNS blocklists, iprev rules, rate limits) refuse there.
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
from .message import (HeaderField, Message, header_limit_problem, removal_of, split_field,
                      with_fields_on_top, without_fields)
from .observers import BackgroundObserver, MessageEvent
from .policy import ACCEPT, QUARANTINE, REJECT, TEMPFAIL, Action, ActionWord
from .reports.hooks import observers_from_config
from .results import (ArcResult, CheckOutcomes, DmarcResult, IPAddress, Role, SessionFacts,
                      SmtpReply, SpfResult, Verdict)
from .runtime import Runtime

__all__ = ["ClientScreen", "Disposition", "Pipeline", "SessionFacts", "SmtpReply", "Transaction"]

log = logging.getLogger("authfilter.pipeline")
message_log = logging.getLogger("authfilter.message")

NOT_CHECKED = "not checked: trusted network"
DEADLINE_SLACK = 5.0          # the engine bounds every lookup; this only guards against bugs
TEMP_FAILURE = SmtpReply(451, "4.3.0 Temporary failure checking the message, try again later")
_LIST_FIELDS = (b"list-id", b"list-post")                       # RFC 2919, RFC 2369
_AUTHRES = HEADER_NAME.lower().encode("ascii")

UNSET: object = object()
# At RCPT, how long the early defences may wait for the client checks, as a multiple of one
# DNS lookup's lifetime (iprev takes two rounds).  A check not done by then refuses nothing
# there; the end of the message decides with its result.
SCREEN_WAIT_LOOKUPS = 2


def _stop(task: asyncio.Future | None) -> None:
    """A check task nobody will await: cancelled if running, its failure marked as seen."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def _outcomes(outcomes: CheckOutcomes | None = None) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(outcomes or CheckOutcomes())
    return future


class ClientScreen:
    """The client checks (iprev, DNS blocklists) of one client: started when the front-end
    learns its address, shared by every message of the session, closed when it ends.  Not
    started for a client that is trusted, denied by ``policy.deny_ips`` (no DNS work for it),
    unknown, or not inbound."""

    __slots__ = ("runtime", "ip", "_task")

    def __init__(self, runtime: Runtime, facts: SessionFacts) -> None:
        self.runtime = runtime
        self.ip = facts.client_ip
        checked = (facts.role == "inbound" and not facts.trusted and self.ip is not None
                   and not runtime.policy.denies(self.ip) and runtime.engine.checks.client)
        self._task: asyncio.Future | None = runtime.engine.start_client(facts) if checked else None

    def outcomes(self) -> asyncio.Future:
        """A future of the checks' :class:`CheckOutcomes` (empty when none run)."""
        return self._task if self._task is not None else _outcomes()

    def close(self) -> None:
        task, self._task = self._task, None
        _stop(task)


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
                 session: str, peer: str, client: ClientScreen | None = None) -> None:
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
        # a client in policy.deny_ips is refused before any DNS work
        verify = (facts.role == "inbound" and not facts.trusted
                  and not runtime.policy.denies(facts.client_ip))
        self._spf: asyncio.Future | None = runtime.engine.start_spf(facts) if verify else None
        if client is None or client.ip != facts.client_ip or client.runtime is not runtime:
            client = self._own_client = ClientScreen(runtime, facts)
        else:
            self._own_client = None
        self.client = client
        self._early: Action | None | object = UNSET     # the early defences' decision
        self._charged = False           # the rate limits counted this message
        self._refusals = 0

    # -- RCPT -----------------------------------------------------------------------------------
    async def recipient(self, address: str) -> SmtpReply | None:
        """Whether to refuse the recipient ``address`` now, before the MTA takes it: the reply
        to refuse it with, or None.  The early defences (:meth:`Policy.screen
        <authfilter.policy.Policy.screen>`: deny lists, DNS blocklists, iprev rules) and the
        rate limits decide; quarantine and tag wait for the end of the message.  Call
        :meth:`add_recipient` once the MTA has accepted it.  Never raises for a recipient: an
        error of ours refuses nothing here."""
        facts, rt = self.facts, self.runtime
        if facts.role == "local":               # never refused (non_smtpd_milters)
            return None
        try:
            if self._early is UNSET:
                self._early = await self._screen()
            early = self._early
            if isinstance(early, Action) and early.kind in (REJECT, TEMPFAIL):
                return self._refused(address, early.defence or "deny", early.reason, early.reply)
            limiter = rt.ratelimiter
            if limiter is not None and limiter.applies(facts):
                decision = await limiter.charge(facts, address, first=not self._charged,
                                                deadline=time.monotonic() + self._screen_wait())
                if decision.refusal is None:
                    self._charged = True
                elif rt.config.policy.dry_run:
                    log.info("session=%s rate limit %s would refuse <%s> (dry run)",
                             self.session, decision.rule, address)
                else:
                    return self._refused(address, "ratelimit", f"rate limit {decision.rule}",
                                         decision.refusal)
        except Exception:
            log.exception("the early checks of <%s> from %s failed; not refused for it",
                          address, facts.client_text)
        return None

    def _screen_wait(self) -> float:
        return SCREEN_WAIT_LOOKUPS * self.runtime.config.dns.lifetime

    async def _screen(self) -> Action | None:
        """The early decision, once the client checks are in (or after waiting long enough)."""
        future = self.client.outcomes()
        if not future.done():
            try:
                await asyncio.wait_for(asyncio.shield(future), self._screen_wait())
            except (TimeoutError, asyncio.CancelledError):
                if not future.done():
                    return None
        if future.cancelled():
            return None
        return self.runtime.policy.screen(self.facts, future.result().results)

    def _refused(self, address: str, defence: str, reason: str,
                 reply: SmtpReply | None) -> SmtpReply:
        """One line in the log and the metrics for a recipient refused at RCPT."""
        reply = reply or SmtpReply(554, "5.7.1 Recipient address rejected: access denied")
        rt, facts = self.runtime, self.facts
        results: list[tuple[str, str]] = []
        if not self._refusals:          # a refused transaction never reaches finish()
            outcomes = self.client.outcomes()
            if outcomes.done() and not outcomes.cancelled():
                found = outcomes.result().results
                results = [key for check in rt.engine.checks.client
                           if (result := found.get(check.name)) is not None
                           for key in check.metric_keys(result)]
        self._refusals += 1
        rt.metrics.recipient_refused(defence, results)
        record = {"session": self.session, "role": facts.role, "client": facts.client_text,
                  "peer": self.peer, "helo": facts.helo,
                  "mail_from": f"<{facts.mail_from}>" if facts.mail_from is not None else None,
                  "rcpt": address, "outcome": "refused", "stage": "rcpt", "defence": defence,
                  "reason": reason, "reply": f"{reply.code} {reply.text}"}
        message_log.info("%s", format_kv(record), extra={"fields": record})
        return reply

    def add_recipient(self, address: str) -> None:
        """A recipient the MTA accepted after :meth:`Pipeline.begin`."""
        self.facts = dataclasses.replace(self.facts, recipients=self.facts.recipients + (address,))

    # -- end of data --------------------------------------------------------------------------
    async def finish(self, raw: bytes, *, crlf_only: bool = False) -> Disposition:
        """The disposition of the message ``raw`` (CRLF or bare-LF line ends, not dot-stuffed;
        ``crlf_only``: the caller knows it has no bare LF).  Called once."""
        self.started_data = time.monotonic()
        self._size = len(raw)
        # a header over a limit of authfilter.message is refused before anything parses it
        problem = header_limit_problem(raw) if crlf_only else None
        if problem is not None:
            self.disposition = d = self._over_limits(problem)
            return d
        message = Message.parse(raw, crlf_only=crlf_only)
        if self.facts.role == "inbound":
            d = await self._inbound(message)
        else:
            d = self._outbound(message)
        self.disposition = d
        return d

    def _over_limits(self, problem: str) -> Disposition:
        """552 5.3.4, as for an over-size message; local mail (never refused) goes on
        unchanged, unchecked and unsigned."""
        nothing = Message.parse(b"\r\n")
        if self.facts.role == "local":
            action = Action(ACCEPT, f"local; {problem}: passed on unchecked")
        else:
            action = Action(REJECT, problem, SmtpReply(552, f"5.3.4 Error: {problem}"))
        log.info("message from %s: %s", self.facts.client_text, problem)
        return Disposition(action.kind, action.reply, (), (), None, action, nothing)

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
        mark or DNSBL tag the client wrote."""
        rt = self.runtime
        ours = rt.authserv_id.lower()
        headers, positions = message.headers, message.positions
        forged = [i for i in positions.get(_AUTHRES, ()) if authserv_id_of(headers[i][1]) == ours]
        for mark in (rt.policy.quarantine_header, rt.config.dnsbl.tag_header):
            forged += positions.get(mark.lower().encode("ascii"), ())
        return sorted(set(forged))

    async def _verdict(self, message: Message, bodies: BodyHashes) -> Verdict | None:
        engine, facts = self.runtime.engine, self.facts
        if facts.trusted:
            if self.runtime.config.policy.trusted_checks == "none":
                return None
            domain = facts.mail_from.rpartition("@")[2] if facts.mail_from else None
            skipped: asyncio.Future = asyncio.get_running_loop().create_future()
            skipped.set_result(CheckOutcomes({"spf": SpfResult("none", "mailfrom", domain,
                                                               reason=NOT_CHECKED)}))
            verdict = await engine.evaluate_message(facts, message, spf=skipped,
                                                    client=_outcomes(), bodies=bodies)
            return dataclasses.replace(verdict, arc=ArcResult("none", reason=NOT_CHECKED),
                                       dmarc=DmarcResult("none", verdict.dmarc.from_domain,
                                                         reason=NOT_CHECKED))
        spf, self._spf = self._spf, None
        async with asyncio.timeout(self.runtime.config.general.message_deadline + DEADLINE_SLACK):
            return await engine.evaluate_message(facts, message, spf=spf,
                                                 client=self.client.outcomes(), bodies=bodies)

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
        """Submission and local mail: forged fields removed, DKIM-signed when the signing table
        has its From domain.
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
        # a forged A-R claiming our authserv-id would reach local mailboxes too (RFC 8601 s. 5)
        remove = tuple(removal_of(message, self._forged(message)))
        return Disposition(action.kind, action.reply, remove, prepend, None, action, message)

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
        """The transaction ends without (more) use of its SPF check: stop it (and the client
        checks, when they are this transaction's own)."""
        own, self._own_client = self._own_client, None
        if own is not None:
            own.close()
        task, self._spf = self._spf, None
        _stop(task)


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

    def client(self, client_ip: "IPAddress | str | None", *, role: Role = "inbound",
               helo: str | None = None) -> ClientScreen:
        """Start the client checks of a client the front-end has just learnt (at connect, or
        at XFORWARD / PROXY), in the running event loop; hand the screen to each
        :meth:`begin` of the session and :meth:`ClientScreen.close` it at the end."""
        facts = SessionFacts(client_ip, helo, role=role)
        if self.runtime.policy.is_trusted(facts.client_ip):
            facts = dataclasses.replace(facts, trusted=True)
        return ClientScreen(self.runtime, facts)

    def begin(self, facts: SessionFacts, *, arc_seal: bool = False, session: str = "",
              peer: str = "", client: ClientScreen | None = None) -> Transaction:
        """A transaction for a message with these envelope facts (at MAIL FROM, in the running
        event loop: SPF starts as a task of it).  ``arc_seal``:
        the front-end's listener seals inbound mail; ``session`` and ``peer`` (who connected
        to the front-end) go into the log line; ``client``: the session's
        :meth:`client` screen (one of another client or config generation is not used)."""
        rt = self.runtime
        if not facts.trusted and rt.policy.is_trusted(facts.client_ip):
            facts = dataclasses.replace(facts, trusted=True)
        return Transaction(rt, facts, arc_seal=arc_seal, session=session, peer=peer,
                           client=client)

    def reload(self, runtime: Runtime) -> Runtime:
        """Put ``runtime`` in force for new transactions; returns the one it replaces."""
        old, self.runtime = self.runtime, runtime
        return old
