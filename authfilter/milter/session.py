"""One MTA connection: the asyncio driver of the milter front-end.

An ``asyncio.Protocol`` hands each read to a :class:`~.codec.Decoder`; every event goes
through the state table (:class:`~.state.MilterSession`, which says whether it is legal and
whether the MTA waits for a reply) and, where it concerns the message, to the pipeline:
CONNECT starts the client checks (:meth:`~authfilter.pipeline.Pipeline.client`), MAIL begins a
:class:`~authfilter.pipeline.Transaction` (SPF starts there), RCPT adds a recipient (asking
the early defences first when the config has any: the one event but the end of the message
then answered, :meth:`~authfilter.pipeline.Transaction.recipient`), the header fields and body chunks are kept, the end of the message rebuilds it
byte for byte (:func:`~.state.rebuild_header_block`) and finishes it, and the
:class:`~authfilter.pipeline.Disposition` goes back as the packets of
:func:`~.state.end_of_message_replies`.  Everything but the end of the message is handled
synchronously inside ``data_received``: with the no-reply steps negotiated
(milter.md s. 1.2) nothing is answered before it, so a message costs one task, for
``Transaction.finish`` (and one per RCPT while early defences are configured).

Failure rules (milter.md s. 1.5, trap 9): a :class:`~.codec.CodecError` or a
:class:`~.state.ProtocolViolation` closes the connection, and Postfix applies
``milter_default_action``; any error of ours at the end of a message answers 451 (the sender
keeps the mail), or, in the ``local`` role (``non_smtpd_milters``, where a refusal leaves mail
stuck in the queue, MILTER_README), accepts the message unchanged.  While a long end-of-message
check runs, SMFIR_PROGRESS restarts Postfix's ``milter_content_timeout`` (LM smfi_progress).

What a connection needs of the server that runs it is :class:`ConnectionHost`, defined here:
the listener imports this module, never the other way round.
"""
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

from ..pipeline import TEMP_FAILURE, ClientScreen, Pipeline, Transaction
from ..results import Role, SessionFacts, SmtpReply
from . import state
from .codec import (ACCEPT, CONTINUE, MAX_PACKET, PROGRESS, SMFIF_ADDHDRS, SMFIF_CHGHDRS,
                    SMFIF_QUARANTINE, SMFIM_CONNECT, SMFIM_DATA, SMFIM_ENVFROM,
                    SMFIP_HDR_LEADSPC, SMFIP_NODATA, SMFIP_NOUNKNOWN, SMFIP_NR_BODY,
                    SMFIP_NR_CONN, SMFIP_NR_DATA, SMFIP_NR_EOH, SMFIP_NR_HDR, SMFIP_NR_HELO,
                    SMFIP_NR_MAIL, SMFIP_NR_RCPT, SMFIP_NR_UNKN, Abort, Body, Connect,
                    Decoder, EndOfMessage, Event, Header, Helo, MailFrom, MilterError, OptNeg,
                    Quit, QuitNewConnection, RcptTo, reply_code)

log = logging.getLogger("authfilter.milter")

# What we ask for in the option negotiation.  Actions: insert (A-R, signatures, ARC sets, the
# quarantine mark), delete (forged A-R), quarantine.  Steps: header values with their leading
# space (byte-exact for DKIM, trap 3); no DATA and no unknown-command events (the DATA macros
# come anyway, milter8.c milter8_event "Send the macros for this event, even when we're not
# reporting the event itself"); and no reply to any event but the end of the message, so
# Postfix sends a whole message without waiting (milter8.c "don't wait for one reply per
# header").  Authentication is decided at the end of the message (trap 8: the pipeline decides
# there); only the early defences (deny lists, DNS blocklists, iprev rules, rate limits) refuse
# at RCPT, so RCPT is answered only when the config has some (SCREENING_PROTOCOL).  Steps the
# MTA does not offer are answered with SMFIR_CONTINUE instead (state.MilterSession drops them
# from the negotiation).
ACTIONS = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE
PROTOCOL = (SMFIP_HDR_LEADSPC | SMFIP_NODATA | SMFIP_NOUNKNOWN | SMFIP_NR_CONN | SMFIP_NR_HELO
            | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_DATA | SMFIP_NR_UNKN | SMFIP_NR_HDR
            | SMFIP_NR_EOH | SMFIP_NR_BODY)
SCREENING_PROTOCOL = PROTOCOL & ~SMFIP_NR_RCPT
# The macros we use, each asked for at the one stage where Postfix has it (milter.md s. 1.3),
# so that no other stage carries any (the header and body stages then send an empty
# SMFIC_MACRO each).  {daemon_name} names the Postfix service in the log; {auth_authen} marks
# a SASL-authenticated client; {i}, the queue id, exists from DATA on.  The client address,
# HELO and envelope come in the events themselves.
MACRO_LISTS = {SMFIM_CONNECT: (b"{daemon_name}",), SMFIM_ENVFROM: (b"{auth_authen}",),
               SMFIM_DATA: (b"{i}",)}

OVERSIZE_REPLY = SmtpReply(451, "4.3.4 Message too big for the mail filter, try again later")
# What Postfix tells the client for a bare SMFIR_REJECT / SMFIR_TEMPFAIL (milter8.c), for the
# log line when the policy gave no reply of its own.
POSTFIX_REFUSALS = {"reject": SmtpReply(550, "5.7.1 Command rejected"),
                    "tempfail": SmtpReply(451, "4.7.1 Service unavailable - try again later")}
TEMPFAIL_REPLY = reply_code(TEMP_FAILURE.code, TEMP_FAILURE.text)
NO_QUEUE_ID = "(no queue id)"      # {i} exists from DATA on, and Sendmail may not send it
# Postfix sends nothing while it waits for the end-of-message reply (milter8_event reads the
# replies before it writes again); more events than this in that time break the protocol.
MAX_EVENTS_WHILE_FINISHING = 16


@dataclass(frozen=True, slots=True)
class MilterLimits:
    """Bounds of every connection.

    ``max_packet``: the largest packet (codec.MAX_PACKET fits a 100 KB header field, Postfix's
    ``header_size_limit``).  ``max_message_size``: header and body bytes as the milter sees them;
    keep it at least Postfix's ``message_size_limit`` (same default) and it never triggers.
    ``max_headers``: header fields of one message.  A message over either gets ``oversize``:
    ``"tempfail"`` (default: 451 4.3.4; accepting it unchecked would let anyone pass a spoof
    under p=reject by padding it past the limit) or ``"accept"`` (unchecked, unchanged); the
    local role always accepts.  ``idle_timeout``: seconds without a packet before the
    connection is closed (libmilter's default, 7210 s; Postfix keeps the connection for a whole
    SMTP session).  ``progress_interval``: seconds between SMFIR_PROGRESS packets while a
    message's checks run (Postfix's ``milter_content_timeout`` is 300 s, Sendmail's E 5 min).
    """

    max_packet: int = MAX_PACKET
    max_message_size: int = 10_240_000
    max_headers: int = 1000
    oversize: Literal["tempfail", "accept"] = "tempfail"
    idle_timeout: float = 7210.0
    progress_interval: float = 10.0


class ConnectionHost(Protocol):
    """What a connection asks of the server that runs it (:class:`~.listener.MilterServer`)."""

    limits: MilterLimits

    @property
    def pipeline(self) -> Pipeline:
        """The config generation in force: a connection keeps the one it started with."""

    @property
    def draining(self) -> bool:
        """Shutting down: no new transactions."""

    def session_started(self, connection: MilterConnection) -> bool:
        """Count the connection in; False: refused (full or draining), close it."""

    def session_ended(self, connection: MilterConnection) -> None: ...


def _text(value: bytes | None) -> str | None:
    """Macro and envelope bytes as text, never decoded strictly (milter.md trap 5); the same
    decoding as the SMTP proxy's, so both give the pipeline the same facts."""
    return value.decode("utf-8", "replace") if value is not None else None


_connection_numbers = itertools.count(1)


class MilterConnection(asyncio.Protocol):
    """One milter connection: one SMTP session at a time, any number of messages."""

    def __init__(self, host: ConnectionHost, *, role: Role, arc_seal: bool = False) -> None:
        # unique on this host while the worker lives; "m" sets it apart from SMTP sessions
        self.id = f"{os.getpid():x}.m{next(_connection_numbers):x}"
        self.host = host
        self.pipeline = host.pipeline             # the config generation this connection keeps
        self.limits = host.limits
        self.role = role
        self.arc_seal = arc_seal
        runtime = self.pipeline.runtime
        # RCPT waits for our answer only when something may refuse there
        self._screening = role != "local" and (runtime.policy.screens
                                               or runtime.ratelimiter is not None)
        self.table = state.MilterSession(
            actions=ACTIONS, protocol=SCREENING_PROTOCOL if self._screening else PROTOCOL,
            macro_lists=MACRO_LISTS)
        self.decoder = Decoder(self.limits.max_packet)
        self.transport: asyncio.Transport | None = None
        self.deadline: float | None = None        # see smtp.watchdog.Watchdog
        self.peer = ""                            # who connected: {daemon_name}, else the socket
        self._socket_peer = "unix"
        self._quickack: Callable[[], None] | None = None
        self._on_error = ACCEPT if role == "local" else TEMPFAIL_REPLY
        self._leading_space = True
        self._continued: frozenset[type] = frozenset()   # events answered with SMFIR_CONTINUE
        self._counted = False
        self._closing = False                     # closed by us: the rest of a read is ignored
        self._lost = False
        # the SMTP session
        self._client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._client: ClientScreen | None = None
        self._helo: str | None = None
        # the message
        self._tx: Transaction | None = None
        self._headers: list[Header] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._oversize = False
        self._finishing: asyncio.Task | None = None
        self._queued: list[Event] = []            # events that came while finishing

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.host.session_started(self):
            transport.close()      # Postfix applies milter_default_action to this session
            return
        self._counted = True
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            self._socket_peer = transport.get_extra_info("peername")[0]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            setsockopt = sock.setsockopt
            # Postfix keeps Nagle on, and we send nothing back until the end of the message:
            # without an immediate ACK of each read every message stalls ~40 ms on delayed
            # ACKs (milter.md s. 1.7, measured).  Linux clears QUICKACK again by itself, so it
            # is set after every read.
            self._quickack = lambda: setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        self.peer = self._socket_peer
        self.deadline = time.monotonic() + self.limits.idle_timeout

    def data_received(self, data: bytes) -> None:
        if self._quickack is not None:
            self._quickack()
        if self._closing:
            return
        try:
            events = self.decoder.feed(data)
        except MilterError as exc:
            self._protocol_error(exc)
            return
        if self._finishing is not None:
            self._queued += events
            if len(self._queued) > MAX_EVENTS_WHILE_FINISHING:
                self._protocol_error(MilterError(f"{len(self._queued)} events while the "
                                                 f"end-of-message reply was due"))
            return
        self.deadline = time.monotonic() + self.limits.idle_timeout
        self._run(events)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._finishing is None:
            self._end_message()
            self._end_session()
        # else: the check finishes (bounded by the pipeline's deadline), logs, then ends it

    def expire(self) -> None:
        """Called by the watchdog at ``deadline``: a progress packet while a message is being
        checked, else the MTA has been silent too long."""
        if self._finishing is not None:
            self._write(PROGRESS)
            self.deadline = time.monotonic() + self.limits.progress_interval
        else:
            log.info("milter connection %s idle for %g s; closing", self.id,
                     self.limits.idle_timeout)
            self._close()

    # -- events ------------------------------------------------------------------------------
    def _run(self, events: list[Event]) -> None:
        """Each event through the table, then its handler; replies where the MTA waits for
        one.  Stops at an end of message whose check is running (the rest waits for it) and
        when the connection is being closed.  An error in a handler is a bug of ours: like a
        dead milter, the connection closes (Postfix applies milter_default_action)."""
        receive, handlers = self.table.receive, _HANDLERS
        try:
            for index, event in enumerate(events):
                receive(event)
                kind = type(event)
                handler = handlers.get(kind)
                if handler is not None:
                    handler(self, event)
                if kind in self._continued:
                    self._write(CONTINUE)
                if self._finishing is not None:
                    self._queued = events[index + 1:]
                    return
                if self._closing:
                    return
        except MilterError as exc:
            self._protocol_error(exc)
        except Exception:
            log.exception("milter connection %s from %s failed; closing", self.id, self.peer)
            self._close()

    def _optneg(self, event: OptNeg) -> None:
        negotiated = self.table.negotiated
        self._leading_space = negotiated.leading_space
        answered = _SELF_ANSWERED | ({RcptTo} if self._screening else set())
        self._continued = self.table.answered - answered
        self._write(negotiated.reply)

    def _connect(self, event: Connect) -> None:
        self._client_ip = ip = event.ip
        self.peer = _text(self.table.macro(b"{daemon_name}")) or self._socket_peer
        self._end_client()
        self._client = self.pipeline.client(ip, role=self.role)

    def _greeting(self, event: Helo) -> None:
        self._end_message()              # a HELO inside a transaction abandons it (RFC 5321)
        self._helo = _text(event.name)

    def _mail(self, event: MailFrom) -> None:
        if self.host.draining:
            log.info("milter connection %s: shutting down, closing at MAIL", self.id)
            self._close()                # Postfix applies milter_default_action
            return
        self._end_message()
        # A client that logged in with SASL is vouched for; one Postfix could not name (no
        # address in CONNECT) is verified with what there is (SPF none), never trusted for it.
        auth_user = _text(self.table.macro(b"{auth_authen}")) or None
        facts = SessionFacts(self._client_ip, self._helo, _text(event.address),
                             trusted=auth_user is not None, role=self.role, auth_user=auth_user)
        try:
            self._tx = self.pipeline.begin(facts, arc_seal=self.arc_seal, session=self.id,
                                           peer=self.peer, client=self._client)
        except Exception:
            log.exception("milter connection %s: starting the transaction of <%s> failed",
                          self.id, facts.mail_from)      # the end of the message answers

    def _recipient(self, event: RcptTo) -> None:
        tx, address = self._tx, _text(event.address)
        if not self._screening or RcptTo not in self.table.answered:
            if tx is not None:
                tx.add_recipient(address)
        elif tx is None:                                 # Pipeline.begin failed at MAIL
            self._write(CONTINUE)
        else:                                            # the next events wait for the answer
            self._finishing = asyncio.get_running_loop().create_task(
                self._answer_recipient(tx, address))

    async def _answer_recipient(self, tx: Transaction, address: str) -> None:
        """RCPT's answer: SMFIR_CONTINUE, or the early defences' refusal as SMFIR_REPLYCODE
        (Postfix refuses that recipient with our code and text)."""
        try:
            refusal = await tx.recipient(address)
        except asyncio.CancelledError:                   # drain: Postfix applies default_action
            self._close()
            raise
        finally:
            self._finishing = None
        if refusal is None:
            tx.add_recipient(address)
            self._write(CONTINUE)
        else:
            self._write(reply_code(refusal.code, refusal.text))
        self._resume()

    def _header(self, event: Header) -> None:
        if self._oversize:
            return
        headers = self._headers
        headers.append(event)
        self._size += len(event.name) + len(event.value) + 3        # ":" and CRLF
        if self._size > self.limits.max_message_size or len(headers) > self.limits.max_headers:
            self._too_big()

    def _body(self, event: Body) -> None:
        if self._oversize:
            return
        self._chunks.append(event.chunk)
        self._size += len(event.chunk)
        if self._size > self.limits.max_message_size:
            self._too_big()

    def _too_big(self) -> None:
        """Keep reading the message, but nothing more of it: the end answers ``oversize``."""
        self._oversize = True
        self._headers, self._chunks = [], []

    def _end_of_message(self, event: EndOfMessage) -> None:
        tx, self._tx = self._tx, None
        queue_id = _text(self.table.macro(b"i"))
        if tx is None:                                   # Pipeline.begin failed at MAIL
            self._write(self._on_error)
        elif self._oversize:
            tx.abandon()
            refuse = self.limits.oversize == "tempfail" and self.role != "local"
            log.warning("milter connection %s: message %s from %s over %d bytes or %d header "
                        "fields: %s", self.id, queue_id or NO_QUEUE_ID, tx.facts.client_text,
                        self.limits.max_message_size, self.limits.max_headers,
                        "tempfailed" if refuse else "accepted unchecked")
            self._write(reply_code(OVERSIZE_REPLY.code, OVERSIZE_REPLY.text) if refuse
                        else ACCEPT)
        else:
            headers = self._headers
            self._chunks.insert(0, state.rebuild_header_block(
                headers, leading_space=self._leading_space))
            message = b"".join(self._chunks)
            self._chunks = []
            self.deadline = time.monotonic() + self.limits.progress_interval
            self._finishing = asyncio.get_running_loop().create_task(
                self._finish(tx, message, headers, queue_id))
            return
        self._end_message()

    async def _finish(self, tx: Transaction, message: bytes, headers: list[Header],
                      queue_id: str | None) -> None:
        """The end of one message: the pipeline's disposition, its packets, the log line.
        Postfix's body is CRLF lines (milter.md s. 1.1: records, each sent with CRLF), and so
        is the rebuilt header block, hence ``crlf_only``."""
        try:
            d = await tx.finish(message, crlf_only=True)
            replies = state.end_of_message_replies(d, headers, leading_space=self._leading_space)
        except asyncio.CancelledError:                   # drain gave up on this message
            log.warning("milter connection %s: shut down while checking message %s; %s",
                        self.id, queue_id or NO_QUEUE_ID,
                        "accepted" if self.role == "local" else "tempfailed")
            tx.abandon()
            self._write(self._on_error)
            self._close()
            raise
        except Exception:
            log.exception("milter connection %s: checking message %s failed; %s", self.id,
                          queue_id or NO_QUEUE_ID,
                          "accepted unchanged" if self.role == "local" else "tempfailed")
            tx.abandon()
            replies = [self._on_error]
            d = None
        finally:
            self._finishing = None
        told = self.transport is not None and not self.transport.is_closing()
        self._write(b"".join(replies))
        self.deadline = time.monotonic() + self.limits.idle_timeout
        if d is not None:
            await self._done(tx, d.relays, d.reply or POSTFIX_REFUSALS.get(d.action),
                             queue_id, told)
        self._end_message()
        self._resume()

    def _resume(self) -> None:
        """After an answer that made the next events wait: on with them."""
        if self._lost:
            self._end_message()
            self._end_session()
            return
        if self.host.draining and not self.table.state.in_transaction:
            self._close()
            return
        queued, self._queued = self._queued, []
        self._run(queued)

    @staticmethod
    async def _done(tx: Transaction, relayed: bool, refusal: SmtpReply | None,
                    queue_id: str | None, told: bool) -> None:
        """The pipeline's log line, metrics and observers.  For a milter, Postfix itself is the
        next hop: a message we let through is queued under ``{i}``, and its client is told
        "250 2.0.0 Ok: queued as {i}" — that is the upstream reply the log line (queue_id=),
        report rows and failure reports (Delivery-Result: delivered) expect of a relayed
        message.  A refused one is not queued: its reply is ours (or Postfix's own text for a
        bare SMFIR_REJECT / SMFIR_TEMPFAIL)."""
        if not told:                                     # Postfix went away meanwhile
            await tx.done(None, reply_sent=None)
        elif relayed:
            await tx.done((250, f"2.0.0 Ok: queued as {queue_id}" if queue_id else "2.0.0 Ok"))
        else:
            await tx.done(None, reply_sent=refusal)

    def _abort(self, event: Abort) -> None:
        self._end_message()
        if self.host.draining:
            self._close()

    def _quit(self, event: Quit) -> None:
        self._end_message()
        self._close()

    def _new_session(self, event: QuitNewConnection) -> None:
        self._end_message()
        self._end_client()
        self._client_ip, self._helo, self.peer = None, None, self._socket_peer

    def _end_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- message and connection ends -------------------------------------------------------
    def _end_message(self) -> None:
        """Forget the current message (after its reply, at ABORT, HELO, QUIT, a lost
        connection); an open transaction stops its SPF check."""
        tx, self._tx = self._tx, None
        if tx is not None:
            tx.abandon()
        self._headers, self._chunks, self._size, self._oversize = [], [], 0, False

    def _end_session(self) -> None:
        self.deadline = None
        self._end_client()
        if self._counted:
            self._counted = False
            self.host.session_ended(self)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()               # what was written is still sent

    def _protocol_error(self, exc: MilterError) -> None:
        log.warning("milter connection %s from %s: %s; closing (Postfix applies "
                    "milter_default_action)", self.id, self.peer, exc)
        self._close()

    # -- drain -------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No message open or being checked: closing now loses nothing."""
        return self._finishing is None and not self.table.state.in_transaction

    def close_if_idle(self) -> None:
        if self.idle:
            self._close()

    async def stop(self) -> None:
        """The end of a drain: a message still being checked is answered (451, or accepted in
        the local role), then the connection closes."""
        task = self._finishing
        if task is None:
            self._close()
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


_HANDLERS: dict[type, Callable[[MilterConnection, Event], None]] = {
    OptNeg: MilterConnection._optneg,
    Connect: MilterConnection._connect,
    Helo: MilterConnection._greeting,
    MailFrom: MilterConnection._mail,
    RcptTo: MilterConnection._recipient,
    Header: MilterConnection._header,
    Body: MilterConnection._body,
    EndOfMessage: MilterConnection._end_of_message,
    Abort: MilterConnection._abort,
    Quit: MilterConnection._quit,
    QuitNewConnection: MilterConnection._new_session,
}
"""The events that concern us; the others (macros, DATA, end of header) only move the table."""
_SELF_ANSWERED = frozenset({OptNeg, EndOfMessage})
