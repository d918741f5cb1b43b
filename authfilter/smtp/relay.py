"""The proxy's relay hooks: each client transaction mirrored onto an upstream transaction.

One hook per SMTP stage, as aiosmtpd's handlers have, called by the session once the state
table and the grammar have accepted the command: :meth:`Relay.mail` sends the client's MAIL
line, parameters included, up unchanged (after XFORWARD); :meth:`Relay.recipient` does the
same for RCPT; :meth:`Relay.data` hands the DATA block to :func:`.message_flow.handle_message`;
:meth:`Relay.end` releases, resets or drops the upstream connection.  Each returns what the
client is told: the upstream's own reply, or 451 when the upstream is unavailable (the client
keeps the mail and retries).  The relay also moves the :class:`~.state.SessionState` into and
out of the transaction, so the phase always says whether an upstream transaction is open.
"""
from __future__ import annotations

import logging
from typing import Callable

from ..metrics import Metrics
from ..pipeline import Transaction
from . import protocol as p
from .message_flow import BROKEN, DONE, Outcome, UpstreamState, handle_message
from .state import SessionState
from .upstream import UpstreamConnection, UpstreamError, UpstreamPool

log = logging.getLogger("authfilter.proxy")


class Relay:
    """The upstream side of one client session: at most one transaction at a time."""

    __slots__ = ("_state", "_pool", "_metrics", "message", "upstream", "broken")

    def __init__(self, state: SessionState, pool: UpstreamPool, metrics: Metrics) -> None:
        self._state = state
        self._pool = pool
        self._metrics = metrics
        self.message: Transaction | None = None          # the pipeline's side, while open
        self.upstream: UpstreamConnection | None = None
        self.broken = False            # the upstream failed mid-transaction: 451 until RSET

    async def mail(self, message: Transaction, xforward: dict[str, str | None],
                   line: bytes) -> bytes:
        """Open the upstream transaction for ``message`` with the client's MAIL ``line``
        (``xforward``: who the upstream should log as the client).  The transaction is open
        afterwards when the upstream accepted; otherwise ``message`` is abandoned."""
        try:
            upstream, reply = await self._pool.begin(xforward, line)
        except UpstreamError as exc:
            log.warning("upstream unavailable at MAIL from %s: %s", message.facts.client_text, exc)
            self._metrics.upstream_error("unavailable")
            message.abandon()
            return p.UPSTREAM_UNAVAILABLE
        if not reply.positive or reply.code == 421:
            message.abandon()
            if reply.code == 421:
                self._metrics.upstream_error("closing")
                upstream.close()
                return p.UPSTREAM_UNAVAILABLE
            self._pool.release(upstream)
            return reply.to_bytes()
        self.message, self.upstream = message, upstream
        self._state.mail_accepted()
        return reply.to_bytes()

    async def recipient(self, line: bytes, address: str) -> bytes:
        """The client's RCPT ``line`` for ``address``, in an open transaction that is not
        broken: refused by the pipeline's early defences, or relayed."""
        refusal = await self.message.recipient(address)
        if refusal is not None:
            return refusal.to_bytes()
        try:
            reply = await self.upstream.command(line)
        except UpstreamError as exc:
            log.warning("upstream failed at RCPT: %s", exc)
            self._metrics.upstream_error("unavailable")
            self.broken = True
            return p.UPSTREAM_UNAVAILABLE
        if reply.code == 421:
            self._metrics.upstream_error("closing")
            self.upstream.close()
            self.broken = True
            return p.UPSTREAM_UNAVAILABLE
        if reply.positive:
            self.message.add_recipient(address)
            self._state.recipient_accepted()
        return reply.to_bytes()

    async def data(self, content: bytes, wire: bytes,
                   client_alive: Callable[[], bool]) -> Outcome:
        """The DATA block (see :func:`.message_flow.handle_message`); the session tells the
        client ``reply`` and then calls :meth:`end` with ``upstream``."""
        return await handle_message(self.message, content, wire, self.upstream,
                                    client_alive, self._metrics)

    async def end(self, upstream_state: UpstreamState) -> None:
        """The transaction, if one is open, is over (end of data or a refusal of it, RSET,
        HELO/EHLO, the session's end): release the upstream connection, RSET it, or close it
        (``upstream_state``; a broken one is always closed)."""
        message, upstream = self.message, self.upstream
        if message is None:
            return
        broken = self.broken
        self.message, self.upstream, self.broken = None, None, False
        self._state.transaction_ended()
        message.abandon()
        if upstream_state == DONE:
            self._pool.release(upstream)
        elif upstream_state == BROKEN or broken:
            upstream.close()
        elif await upstream.reset():
            self._pool.release(upstream)
        else:
            upstream.close()
