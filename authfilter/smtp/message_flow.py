"""End of DATA in the proxy: the pipeline's disposition applied to the received bytes, relayed.

This is where the proxy keeps its promise to never lose mail: the client's reply is the
upstream's reply for this very message, a 250 only after the upstream's 250; a refused
message is never sent upstream; an error of ours is a 4xx (the sender keeps the mail).
If the client has gone by the time the disposition is ready, nothing is sent upstream either,
so the client's retry cannot make a duplicate.  Everything the message's fate depends on is
decided in :mod:`authfilter.pipeline`; this module only translates.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

from ..metrics import Metrics
from ..message import Message, remove_from_head, render_fields
from ..pipeline import Disposition, Transaction
from ..results import SmtpReply
from . import protocol
from .receiver import stuff
from .upstream import UpstreamConnection, UpstreamError

log = logging.getLogger("authfilter.proxy")

UpstreamState = Literal["done", "reset", "broken"]
"""What to do with the upstream connection afterwards: release it (transaction finished),
RSET it, or close it."""
DONE: UpstreamState = "done"
RESET: UpstreamState = "reset"
BROKEN: UpstreamState = "broken"


@dataclass(slots=True)
class Outcome:
    reply: bytes | None            # None: the client is gone, nothing to say
    upstream: UpstreamState


def header_block_end(raw: bytes) -> int:
    """Length of the header block including the empty line (the whole message if none)."""
    if raw.startswith(b"\r\n"):
        return 2
    end = raw.find(b"\r\n\r\n")
    return len(raw) if end < 0 else end + 4


def upstream_form(d: Disposition, content: bytes, wire: bytes) -> list[bytes | memoryview]:
    """The message as ``d`` says it goes on, dot-stuffed for the upstream (RFC 5321 s. 4.5.2),
    in pieces for one write.  ``content`` is the unstuffed DATA block (CRLF line ends only),
    ``wire`` the same stuffed (:class:`~.receiver.ReceiveBuffer`: as received, or stuffed
    again after bare LFs were normalized).

    The received bytes are reused: only the header block is rebuilt (and stuffed again when
    a line starts with "."), the body goes as it came; stuffing changes no empty line, so the
    header block of ``wire`` ends where that of ``content`` does.
    """
    top = render_fields(d.prepend)
    message: Message = d.message
    if not d.remove and len(wire) == len(content):   # no dot was removed: no line starts with "."
        return [top, content]
    head = remove_from_head(content[:message.header_length], d.remove)
    if len(wire) == len(content):
        return [top, head, memoryview(content)[message.header_length:]]
    return [top, stuff(head), memoryview(wire)[header_block_end(wire):]]


async def handle_message(tx: Transaction, content: bytes, wire: bytes,
                         conn: UpstreamConnection, client_alive: Callable[[], bool],
                         metrics: Metrics) -> Outcome:
    """The pipeline's disposition of one DATA block, relayed when it says so; the client's
    reply comes back (the transaction is :meth:`~Transaction.done` when this returns)."""
    d = await tx.finish(content, crlf_only=True)     # the receiver normalized any bare LF
    upstream_reply: protocol.Reply | None = None
    if not d.relays:
        outcome = Outcome(d.reply.to_bytes(), RESET)
    elif not client_alive():
        outcome = Outcome(None, BROKEN)
        log.warning("client %s left before the verdict; nothing relayed", tx.facts.client_ip)
    else:
        outcome, upstream_reply = await _relay(conn, upstream_form(d, content, wire), metrics)
    await tx.done(SmtpReply(upstream_reply.code, upstream_reply.text) if upstream_reply else None,
                  reply_sent=_sent(outcome.reply))
    return outcome


def _sent(reply: bytes | None) -> SmtpReply | None:
    """The reply the client got, for the log line (its lines joined with " | ")."""
    if reply is None:
        return None
    text = reply.decode("utf-8", "replace").strip().replace("\r\n", " | ")
    return SmtpReply(int(text[:3]), text[4:])


async def _relay(conn: UpstreamConnection, parts: list, metrics: Metrics
                 ) -> tuple[Outcome, protocol.Reply | None]:
    try:
        reply, finished = await conn.send_message(parts)
    except UpstreamError as exc:
        metrics.upstream_error("after_data" if exc.after_data else "unavailable")
        if exc.after_data:
            log.error("upstream failed after the message was sent (%s): the client gets 451 "
                      "and retries, so a duplicate is possible", exc)
        else:
            log.error("upstream failed before accepting the message: %s", exc)
        return Outcome(protocol.UPSTREAM_UNAVAILABLE, BROKEN), None
    if reply.code == 421:                  # the upstream is going away: the client retries
        metrics.upstream_error("closing")
        return Outcome(protocol.UPSTREAM_UNAVAILABLE, BROKEN), reply
    if not reply.positive:                 # it refused DATA or the message: the client is told
        metrics.upstream_error("refused")
    return Outcome(reply.to_bytes(), DONE if finished else RESET), reply
