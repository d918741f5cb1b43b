"""One client connection: the asyncio driver of the proxy's SMTP server side.

An ``asyncio.Protocol`` appends received bytes to a :class:`ReceiveBuffer`; one coroutine per
connection reads whole command lines and whole DATA blocks from it and answers.  Which verb
may come when, and what it changes, is the table in :mod:`.state`, which every verb asks; the
upstream side of each transaction is :mod:`.relay`.  This module keeps the I/O (reading,
writing, timeouts, STARTTLS, the PROXY protocol header) and each verb's own checks: syntax,
limits, who may XFORWARD.  Timeouts and too many errors end the session with 421, never a
silent close.

What a session needs of the server that runs it is :class:`SessionHost`, defined here: the
server imports this module, never the other way round.
"""
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Protocol

from ..results import SessionFacts
from . import protocol as p
from . import proxy_protocol
from .generation import ProxyGeneration
from .message_flow import BROKEN, RESET
from .receiver import LineTooLong, ReceiveBuffer, Refused
from .relay import Relay
from .state import OUT_OF_ORDER, SessionState
from .upstream import set_nodelay

if TYPE_CHECKING:
    from ..pipeline import ClientScreen

log = logging.getLogger("authfilter.proxy")

HIGH_WATER = 256 * 1024         # unread command bytes before we stop reading from the socket
NOT_IMPLEMENTED_VERBS = frozenset({"EXPN", "ETRN", "TURN", "ATRN", "AUTH", "BDAT", "XCLIENT"})


class ClientGone(Exception):
    pass


class SessionTimeout(Exception):
    pass


class SessionHost(Protocol):
    """What a session asks of the server that runs it (:class:`~.server.ProxyServer`)."""

    @property
    def generation(self) -> ProxyGeneration:
        """The config generation in force: a session keeps the one it started with."""

    @property
    def draining(self) -> bool:
        """Shutting down: no new transactions."""

    def refusal(self, session: SmtpSession) -> bytes | None:
        """The 421 ``session`` gets instead of the greeting (its client known), or None; a
        session not refused is counted against its client's limits until it ends."""

    def session_started(self, session: SmtpSession) -> None: ...

    def session_ended(self, session: SmtpSession) -> None: ...


_session_numbers = itertools.count(1)


class SmtpSession(asyncio.Protocol):
    def __init__(self, host: SessionHost, listener_index: int) -> None:
        # unique on this host while the worker lives: worker pid and a counter, in hex
        self.id = f"{os.getpid():x}.{next(_session_numbers):x}"
        self.host = host
        self.listener_index = listener_index
        self.rt = host.generation                 # config generation this session started with
        self.listener = self.rt.config.proxy.listeners[listener_index]
        self.buffer = ReceiveBuffer()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None
        self._waiter: asyncio.Future | None = None
        self._eof = False
        self._paused = False
        self._in_data = False
        self.peer: tuple[str, int] = ("0.0.0.0", 0)
        self.peer_ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(0)
        self.xforward_allowed = False
        self.deadline: float | None = None        # see Watchdog
        self._phase_deadline = 0.0                # the DATA phase's end, however bytes trickle
        self.state = SessionState()
        self.relay = Relay(self.state, self.rt.pool(listener_index), self.rt.metrics)
        self.client: ClientScreen | None = None   # the client checks of the SMTP client
        self.errors = 0
        self.idle = False            # waiting for a command outside a transaction (drain)
        self.closing = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._set_peer(peer[0].split("%")[0], peer[1])
        self.task = asyncio.get_running_loop().create_task(self.run())
        self.host.session_started(self)

    def _set_peer(self, host: str, port: int) -> None:
        """The SMTP client: the socket's peer, or the one a PROXY protocol header names."""
        self.peer_ip = ipaddress.ip_address(host)
        self.peer = (str(self.peer_ip), port)
        self.xforward_allowed = self.rt.xforward_hosts.contains(self.peer_ip)

    def data_received(self, data: bytes) -> None:
        self.buffer.feed(data)
        if self._in_data:
            # The DATA block is searched here as it arrives; the session runs once it is whole.
            proxy = self.rt.config.proxy
            if not self.buffer.data_complete(proxy.max_message_size):
                if self.deadline is not None:    # data_timeout counts from the last bytes,
                    self.deadline = min(time.monotonic() + proxy.data_timeout,
                                        self._phase_deadline)   # within the phase's deadline
                return
        self._wake()
        if not self._in_data and len(self.buffer) > HIGH_WATER and not self._paused:
            self.transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True                      # keep our side open: the reply may still be due

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.closing = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def expire(self) -> None:
        """Called by the watchdog when the client kept us waiting too long."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(SessionTimeout())

    @property
    def alive(self) -> bool:
        return not self._eof and self.transport is not None and not self.transport.is_closing()

    # -- reading -----------------------------------------------------------------------------
    async def _wait_input(self, deadline: float) -> None:
        """Wait for more input until ``deadline`` (absolute ``time.monotonic()``); the watchdog
        expires the wait past it."""
        if self._eof:
            raise ClientGone()
        if self._paused:
            self.transport.resume_reading()
            self._paused = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.deadline = deadline
        try:
            await self._waiter
        finally:
            self._waiter = None
            self.deadline = None

    async def read_line(self) -> bytes:
        """The next command line; it must arrive whole within command_timeout, however its
        bytes trickle in (a client sending one byte every 20 s outlived a 30 s timeout)."""
        proxy = self.rt.config.proxy
        deadline = time.monotonic() + proxy.command_timeout
        while True:
            line = self.buffer.take_line(proxy.max_line_length)
            if line is not None:
                return line
            await self._wait_input(deadline)

    async def read_data(self) -> bytes:
        proxy = self.rt.config.proxy
        self.buffer.begin_data()
        self._in_data = True
        self._phase_deadline = time.monotonic() + proxy.data_deadline
        try:
            while True:
                content = self.buffer.take_data(proxy.max_message_size)
                if content is not None:
                    return content
                await self._wait_input(min(time.monotonic() + proxy.data_timeout,
                                           self._phase_deadline))
        finally:
            self._in_data = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- the session -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if self.listener.proxy_protocol and not await self._read_proxy_header():
                return
            refusal = self.host.refusal(self)
            if refusal is not None:
                self.write(refusal)
                return
            if not self.xforward_allowed:       # else the client is XFORWARD's, later
                self._screen(self.peer_ip, None)
            self.write(f"220 {self.rt.hostname} ESMTP authfilter\r\n".encode())
            await self._command_loop()
        except ClientGone:
            pass
        except SessionTimeout:
            log.info("timeout from %s", self.peer[0])
            self.write(p.TIMEOUT)
        except asyncio.CancelledError:
            self.write(p.SHUTTING_DOWN)
            raise
        except Exception:
            log.exception("session with %s failed", self.peer[0])
            self.write(b"421 4.3.0 Internal error, closing connection\r\n")
        finally:
            await self.relay.end(RESET)
            if self.client is not None:
                self.client.close()
            if self.transport is not None:
                self.transport.close()
            self.host.session_ended(self)

    async def _command_loop(self) -> None:
        while not self.closing:
            self.idle = not self.state.in_transaction
            if self.idle and self.host.draining:
                self.write(p.SHUTTING_DOWN)
                return
            try:
                line = await self.read_line()
            except LineTooLong:
                self._error(p.LINE_TOO_LONG)
                continue
            finally:
                self.idle = False
            if p.has_bad_bytes(line):
                self._error(p.BAD_BYTES)
                continue
            verb, arg = p.split_command(line)
            handler = HANDLERS.get(verb)
            if handler is None:
                self._error(p.NOT_IMPLEMENTED if verb in NOT_IMPLEMENTED_VERBS else p.NOT_RECOGNIZED)
                continue
            await handler(self, arg)

    def _error(self, reply: bytes) -> None:
        """A protocol error: answer, and hang up after too many (RFC 5321 s. 4.3.2 421)."""
        self.errors += 1
        self.write(reply)
        if self.errors >= self.rt.config.proxy.max_errors:
            self.write(p.TOO_MANY_ERRORS)
            self.closing = True

    def _out_of_order(self, verb: str) -> bool:
        """Whether ``verb`` may not come now (the table in :mod:`.state`); if so, it is
        answered as an error."""
        refusal = self.state.refusal(verb)
        if refusal is None:
            return False
        self._error(refusal)
        return True

    def shut_down_if_idle(self) -> None:
        """Drain: a session waiting for a command outside a transaction ends now."""
        if self.idle and self._waiter is not None:
            self.write(p.SHUTTING_DOWN)
            self.closing = True
            self._eof = True
            self._wake()

    # -- who the client is -------------------------------------------------------------------
    def facts(self, mail_from: str) -> SessionFacts:
        """The client as the checks see it: XFORWARD's (never mixed with ours, XFORWARD_README
        note 4) or the connection's.  An XFORWARD ADDR that is missing, [UNAVAILABLE] or not
        an address leaves the client unknown: verified with what there is, never trusted."""
        role, state = self.listener.role, self.state
        if state.xforward is not None:
            ip, helo = state.xforward_ip, state.xforward.get("HELO") or None
        else:
            ip, helo = self.peer_ip, state.helo_name
        return SessionFacts(ip, helo, mail_from, role=role)

    def _screen(self, ip: "ipaddress.IPv4Address | ipaddress.IPv6Address | None",
                helo: str | None) -> None:
        """Start the client checks of a newly known client (at connect, or at XFORWARD)."""
        if self.client is not None:
            if self.client.ip == ip:
                return
            self.client.close()
        self.client = self.rt.pipeline.client(ip, role=self.listener.role, helo=helo)

    def upstream_xforward(self) -> dict[str, str | None]:
        """What the upstream should log as the client: the forwarded attributes, or ours."""
        state = self.state
        if state.xforward is not None:
            return state.xforward
        return {"NAME": None, "ADDR": self.peer[0], "PORT": str(self.peer[1]),
                "PROTO": "ESMTP" if state.esmtp else "SMTP", "HELO": state.helo_name,
                "SOURCE": "REMOTE"}

    # -- commands ----------------------------------------------------------------------------
    # Each verb asks the state table first, except where its own checks come before (DATA's
    # syntax, whether the peer may XFORWARD, whether TLS is offered): the order of the checks
    # decides which reply a command with several faults gets.
    async def smtp_ehlo(self, arg: bytes) -> None:
        await self._greet("EHLO", arg, esmtp=True)

    async def smtp_helo(self, arg: bytes) -> None:
        await self._greet("HELO", arg, esmtp=False)

    async def _greet(self, verb: str, arg: bytes, *, esmtp: bool) -> None:
        if self._out_of_order(verb):
            return
        name = p.helo_argument(arg)
        if name is None:
            self._error(p.reply(501, f"5.5.4 Syntax: {verb} hostname"))
            return
        await self.relay.end(RESET)                  # RFC 5321 s. 4.1.4: like RSET
        self.state.greeted(name, esmtp=esmtp)
        if not esmtp:
            self.write(f"250 {self.rt.hostname}\r\n".encode())
            return
        lines = [self.rt.hostname, "PIPELINING", f"SIZE {self.rt.config.proxy.max_message_size}",
                 "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN"]
        if self.rt.tls_context(self.listener_index) is not None and not self.state.tls:
            lines.append("STARTTLS")
        if self.xforward_allowed:
            lines.append(p.XFORWARD_EHLO_KEYWORD)
        self.write(p.reply(250, "\n".join(lines)))

    async def smtp_mail(self, arg: bytes) -> None:
        if self._out_of_order("MAIL"):
            return
        if self.host.draining:
            self.write(p.SHUTTING_DOWN)
            self.closing = True
            return
        try:
            path = p.parse_path_argument(arg, "FROM:", allowed=p.MAIL_PARAMETERS, null_allowed=True)
        except p.SyntaxProblem as problem:
            self._error(problem.reply)
            return
        size = path.param("SIZE")
        if size and int(size) > self.rt.config.proxy.max_message_size:
            self.write(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
            return
        # SPF starts here: its DNS overlaps RCPT and DATA
        message = self.rt.pipeline.begin(self.facts(path.address), arc_seal=self.listener.arc_seal,
                                         session=self.id, peer=self.peer[0], client=self.client)
        self.write(await self.relay.mail(message, self.upstream_xforward(), b"MAIL " + arg + p.CRLF))

    async def smtp_rcpt(self, arg: bytes) -> None:
        if self._out_of_order("RCPT"):
            return
        try:
            path = p.parse_path_argument(arg, "TO:", allowed=p.RCPT_PARAMETERS, null_allowed=False)
        except p.SyntaxProblem as problem:
            self._error(problem.reply)
            return
        if self.relay.broken:
            self.write(p.UPSTREAM_UNAVAILABLE)
            return
        if self.state.recipients >= self.rt.config.proxy.max_recipients:
            self.write(p.TOO_MANY_RCPT)
            return
        self.write(await self.relay.recipient(b"RCPT " + arg + p.CRLF, path.address))

    async def smtp_data(self, arg: bytes) -> None:
        if arg:
            self._error(p.reply(501, "5.5.4 Syntax: DATA"))
            return
        if self.relay.broken:                        # (so in a transaction) 451 until RSET
            self.write(p.UPSTREAM_UNAVAILABLE)
            await self.relay.end(BROKEN)
            return
        if self._out_of_order("DATA"):
            return
        self.write(p.START_DATA)
        try:
            content = await self.read_data()
        except Refused as refused:   # too big, header too big, bare CR (see receiver.py)
            log.info("message from %s refused: %s", self.relay.message.facts.client_ip, refused)
            self.write(refused.reply)
            await self.relay.end(RESET)
            return
        outcome = await self.relay.data(content, self.buffer.release_block(), lambda: self.alive)
        if outcome.reply is not None:
            self.write(outcome.reply)
        await self.relay.end(outcome.upstream)

    async def smtp_rset(self, arg: bytes) -> None:
        if self._out_of_order("RSET"):
            return
        if arg:
            self._error(p.reply(501, "5.5.4 Syntax: RSET"))
            return
        await self.relay.end(RESET)
        self.state.reset()
        self.write(p.RESET_OK)

    async def smtp_noop(self, arg: bytes) -> None:
        if not self._out_of_order("NOOP"):
            self.write(p.OK)

    async def smtp_quit(self, arg: bytes) -> None:
        if not self._out_of_order("QUIT"):
            self.write(p.BYE)
            self.closing = True

    async def smtp_vrfy(self, arg: bytes) -> None:
        if not self._out_of_order("VRFY"):
            self.write(p.VRFY_REPLY)

    async def smtp_help(self, arg: bytes) -> None:
        if not self._out_of_order("HELP"):
            self.write(p.HELP_REPLY)

    async def smtp_xforward(self, arg: bytes) -> None:
        if not self.xforward_allowed:
            self._error(p.XFORWARD_DENIED)
            return
        if self._out_of_order("XFORWARD"):
            return
        try:
            attributes = p.parse_xforward(arg)
        except p.SyntaxProblem as problem:
            self._error(problem.reply)
            return
        self.state.forwarded(attributes)
        if self.state.xforward_ip is not None:
            self._screen(self.state.xforward_ip, self.state.xforward.get("HELO") or None)
        self.write(p.OK)

    async def smtp_starttls(self, arg: bytes) -> None:
        context = self.rt.tls_context(self.listener_index)
        if context is None:
            self._error(p.NOT_IMPLEMENTED)
            return
        if self.state.tls:
            self._error(p.TLS_ALREADY)
            return
        if arg:
            self._error(p.reply(501, "5.5.4 Syntax: STARTTLS"))
            return
        if self._out_of_order("STARTTLS"):
            return
        self.write(p.TLS_READY)
        self.buffer.clear()          # RFC 3207 s. 4.2: nothing pipelined before TLS counts
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, context, server_side=True,
                                             ssl_handshake_timeout=self.rt.config.proxy.command_timeout)
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.info("TLS handshake with %s failed: %s", self.peer[0], exc)
            raise ClientGone() from None
        if transport is None:
            raise ClientGone()
        self.transport = transport
        self.state.tls_started()

    # -- the PROXY protocol header -----------------------------------------------------------
    async def _read_proxy_header(self) -> bool:
        """The PROXY protocol header, whole within command_timeout."""
        deadline = time.monotonic() + self.rt.config.proxy.command_timeout
        if not self.rt.proxy_protocol_hosts.contains(self.peer_ip):
            log.warning("PROXY protocol header expected from untrusted %s; closing", self.peer[0])
            return False
        while True:
            try:
                parsed = proxy_protocol.parse(self.buffer.head(proxy_protocol.V2_MAX))
            except proxy_protocol.ProxyProtocolError as exc:
                log.warning("bad PROXY protocol header from %s: %s", self.peer[0], exc)
                return False
            if parsed is not None:
                header, length = parsed
                self.buffer.consume(length)
                if header.source is not None:
                    self._set_peer(*header.source)
                return True
            await self._wait_input(deadline)


HANDLERS = {verb: getattr(SmtpSession, "smtp_" + verb.lower()) for verb in OUT_OF_ORDER}
"""The verbs of the state table, each with its ``smtp_<verb>`` method: nothing else is answered."""
