"""The SMTP client towards the next MTA (Postfix's reinjection smtpd), with connection reuse.

The proxy mirrors each client transaction onto an upstream one: MAIL and RCPT lines go up
unchanged as the client sends them and the upstream's reply is the client's reply, so a
recipient the upstream refuses is refused to the client, never lost after a 250.  The message
itself goes up only after the verdict allowed it; a rejected message never reaches the
upstream (the transaction is reset).  ``250`` reaches the client only after the upstream
answered ``250`` to the message.

Every failure (refused connection, timeout, garbage, EOF) is an :class:`UpstreamError`; the
caller answers the client with a 4xx so the mail stays with the sender.  Connections are
reused after a completed transaction (Postfix's smtpd allows many per connection; XFORWARD
attributes reset after each, XFORWARD_README "SMTP connection caching").
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time

from .protocol import Reply, ReplyError, ehlo_keywords, format_xforward, parse_reply_line
from .receiver import LineTooLong, ReceiveBuffer
from .watchdog import Watchdog

log = logging.getLogger("authfilter.upstream")

MAX_REPLY_LINES = 100
MAX_REPLY_LINE = 4096



def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on a TCP transport: our replies are whole, waiting to coalesce only adds
    latency (both legs of the proxy use it)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol; nothing was accepted by it
    as far as we know (``after_data`` says the message may have been)."""

    def __init__(self, message: str, *, after_data: bool = False):
        super().__init__(message)
        self.after_data = after_data


class _Timeout(Exception):
    pass


class UpstreamConnection(asyncio.Protocol):
    """One connection to the upstream, read through the same bulk buffer as the server side."""

    def __init__(self, address: str, timeout: float, watchdog: Watchdog) -> None:
        self.address = address
        self.timeout = timeout
        self.watchdog = watchdog
        self.buffer = ReceiveBuffer()
        self.transport: asyncio.Transport | None = None
        self.extensions: dict[str, str] = {}
        self.idle_since = time.monotonic()
        self.deadline: float | None = None
        self._waiter: asyncio.Future | None = None
        self._closed = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.buffer.feed(data)
        self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake(None)

    def expire(self) -> None:
        self._wake(_Timeout())

    def _wake(self, exc: Exception | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    async def open(cls, address: str, helo_name: str, timeout: float,
                   watchdog: Watchdog) -> "UpstreamConnection":
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: cls(address, timeout, watchdog),
                                                       host.strip("[]"), int(port))
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {address}: {exc or type(exc).__name__}") from None
        try:
            banner = await conn.read_reply()
            if banner.code != 220:
                raise UpstreamError(f"{address} greeted with {banner.code} {banner.text}")
            ehlo = await conn.command(f"EHLO {helo_name}\r\n".encode())
            if ehlo.code == 250:
                conn.extensions = ehlo_keywords(ehlo)
            else:
                helo = await conn.command(f"HELO {helo_name}\r\n".encode())
                if helo.code != 250:
                    raise UpstreamError(f"{address} refused HELO: {helo.code} {helo.text}")
        except UpstreamError:
            conn.close()
            raise
        return conn

    @property
    def usable(self) -> bool:
        return not self._closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def quit(self) -> None:
        """QUIT politely, then close (the reply is not awaited: nothing depends on it)."""
        if self.usable:
            self.transport.write(b"QUIT\r\n")
        self.close()

    # -- talking -------------------------------------------------------------------------
    async def read_reply(self, *, after_data: bool = False) -> Reply:
        lines: list[str] = []
        code = 0
        while True:
            try:
                raw = self.buffer.take_line(MAX_REPLY_LINE)
            except LineTooLong:
                self.close()
                raise UpstreamError(f"{self.address}: reply line too long", after_data=after_data)
            if raw is None:
                if self._closed:
                    raise UpstreamError(f"{self.address} closed the connection", after_data=after_data)
                await self._wait(after_data)
                continue
            try:
                code_i, more, text = parse_reply_line(raw)
            except ReplyError as exc:
                self.close()
                raise UpstreamError(f"{self.address}: {exc}", after_data=after_data) from None
            if lines and code_i != code or len(lines) >= MAX_REPLY_LINES:
                self.close()
                raise UpstreamError(f"{self.address}: malformed multi-line reply", after_data=after_data)
            code = code_i
            lines.append(text)
            if not more:
                return Reply(code, tuple(lines))

    async def _wait(self, after_data: bool) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        self.deadline = time.monotonic() + self.timeout
        self.watchdog.watch(self)
        try:
            await self._waiter
        except _Timeout:
            self.close()
            raise UpstreamError(f"{self.address}: no reply within {self.timeout:g} s",
                                after_data=after_data) from None
        finally:
            self._waiter = None
            self.deadline = None
            self.watchdog.forget(self)

    def _send(self, *parts: bytes) -> None:
        if not self.usable:
            raise UpstreamError(f"{self.address}: connection closed")
        self.transport.writelines(parts)

    async def command(self, line: bytes) -> Reply:
        self._send(line)
        return await self.read_reply()

    # -- the transaction -------------------------------------------------------------------
    async def begin(self, xforward: dict[str, str | None], mail_line: bytes) -> Reply:
        """XFORWARD (for the attributes this upstream announced) and the client's MAIL line.

        With PIPELINING (RFC 2920) they go in one write.  A refused XFORWARD is logged, not
        fatal: the mail still flows, only the upstream's log names us instead of the client.
        """
        supported = frozenset(self.extensions.get("XFORWARD", "").upper().split())
        xf_lines = format_xforward(xforward, supported) if supported else []
        if "PIPELINING" in self.extensions:
            self._send(*xf_lines, mail_line)
            replies = [await self.read_reply() for _ in xf_lines]
        else:
            replies = [await self.command(line) for line in xf_lines]
            self._send(mail_line)
        for r in replies:
            if r.code != 250:
                log.warning("upstream %s refused XFORWARD: %d %s", self.address, r.code, r.text)
        return await self.read_reply()

    async def send_message(self, parts: list[bytes]) -> tuple[Reply, bool]:
        """DATA, then the message (already dot-stuffed, CRLF-terminated) and the end marker.

        The reply to DATA must be 354 before any message byte is sent (RFC 2920 s. 3.1).
        Returns the upstream's final reply and True, or its refusal of DATA and False (the
        transaction is then still open).  Large messages are written as they are: the
        transport buffers them and the reply wait covers the upstream reading them.
        """
        ready = await self.command(b"DATA\r\n")
        if ready.code != 354:
            return ready, False
        self._send(*parts, b".\r\n")
        return await self.read_reply(after_data=True), True

    async def reset(self) -> bool:
        """RSET; False when the connection is no longer good for another transaction."""
        try:
            return (await self.command(b"RSET\r\n")).code == 250
        except UpstreamError:
            return False


class UpstreamPool:
    """Idle upstream connections kept for the next transaction (``idle_seconds`` = 0: none)."""

    def __init__(self, address: str, helo_name: str, timeout: float, idle_seconds: float,
                 watchdog: Watchdog, max_idle: int = 32) -> None:
        self.address = address
        self.helo_name = helo_name
        self.timeout = timeout
        self.idle_seconds = idle_seconds
        self.watchdog = watchdog
        self.max_idle = max_idle
        self._idle: list[UpstreamConnection] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    async def acquire(self) -> tuple[UpstreamConnection, bool]:
        """A connection ready for MAIL, and whether it was reused (then it may turn out stale)."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable and now - conn.idle_since < self.idle_seconds:
                return conn, True
            conn.close()
        conn = await UpstreamConnection.open(self.address, self.helo_name, self.timeout, self.watchdog)
        return conn, False

    async def begin(self, xforward: dict[str, str | None], mail_line: bytes
                    ) -> tuple[UpstreamConnection, Reply]:
        """A connection with XFORWARD and MAIL sent.  A reused connection that turns out
        stale (closed by the server, or 421) is replaced once by a fresh one."""
        while True:
            conn, reused = await self.acquire()
            try:
                reply = await conn.begin(xforward, mail_line)
            except UpstreamError:
                conn.close()
                if reused:
                    continue
                raise
            if reply.code == 421:
                conn.close()
                if reused:
                    continue
            return conn, reply

    def release(self, conn: UpstreamConnection) -> None:
        """Keep a connection after a finished transaction, or close it."""
        if self.closed or self.idle_seconds <= 0 or not conn.usable or len(self._idle) >= self.max_idle:
            conn.quit()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_seconds, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        keep = []
        for conn in self._idle:
            if conn.usable and now - conn.idle_since < self.idle_seconds:
                keep.append(conn)
            else:
                conn.quit()
        self._idle = keep
        if keep:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_seconds, self._sweep)

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.quit()
