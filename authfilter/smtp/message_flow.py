"""End of DATA: verdict, policy, headers, relay, one log line, observers.

This is where the proxy keeps its promise to never lose mail: the client's reply is the
upstream's reply for this very message, a 250 only after the upstream's 250; a refused
message is never sent upstream; an error of ours is a 4xx (the sender keeps the mail).
If the client has gone by the time the verdict is ready, nothing is sent upstream either,
so the client's retry cannot make a duplicate.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..authres import build_header, header_value, strip_our_headers
from ..message import Message, normalize_line_ends
from ..policy import ACCEPT, QUARANTINE, REJECT, TEMPFAIL, Action
from ..results import ArcResult, DmarcResult, SessionFacts, SpfResult, Verdict
from . import protocol
from .logline import message_record
from .receiver import stuff
from .upstream import UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from ..signing import ArcSealer
    from .server import Runtime

log = logging.getLogger("authfilter.proxy")
message_log = logging.getLogger("authfilter.message")

NOT_CHECKED = "not checked: trusted network"
DEADLINE_SLACK = 5.0          # the engine bounds every lookup; this only guards against bugs
_LIST_FIELD = re.compile(rb"(?im)^list-(?:id|post)[ \t]*:")     # RFC 2919, RFC 2369

# What to do with the upstream connection afterwards.
DONE, RESET, BROKEN = "done", "reset", "broken"


@dataclass(slots=True)
class Outcome:
    reply: bytes | None            # None: the client is gone, nothing to say
    upstream: str                  # DONE (transaction finished), RESET (needs RSET) or BROKEN
    upstream_reply: protocol.Reply | None = None   # the upstream's answer to the message


def header_block_end(raw: bytes) -> int:
    """Length of the header block including the empty line (the whole message if none)."""
    if raw.startswith(b"\r\n"):
        return 2
    end = raw.find(b"\r\n\r\n")
    return len(raw) if end < 0 else end + 4


def remove_fields(raw: bytes, name: str) -> bytes:
    """Drop every header field called ``name`` (with its continuation lines)."""
    end = header_block_end(raw)
    head = raw[:end]
    if name.lower().encode() not in head.lower():
        return raw
    pattern = re.compile(rb"(?im)^" + re.escape(name.encode()) + rb"[ \t]*:.*\r\n(?:[ \t].*\r\n)*")
    return pattern.sub(b"", head) + raw[end:]


def prepare_inbound(content: bytes, authserv_id: str, quarantine_header: str) -> tuple[bytes, bool]:
    """The message without forged results (RFC 8601 s. 5) or a forged quarantine mark, and
    whether it came through a mailing list.  Only the header block is looked at and rebuilt;
    the body is passed on as received (the engine normalises line ends for its own checks,
    and :func:`stuff` keeps bare LFs harmless upstream), so a big message costs no extra pass."""
    end = header_block_end(content)
    head = content[:end]
    new_head = remove_fields(strip_our_headers(head, authserv_id), quarantine_header)
    mailing_list = _LIST_FIELD.search(new_head) is not None
    return (content if new_head == head else new_head + content[end:]), mailing_list


def empty_results_header(authserv_id: str) -> bytes:
    """RFC 8601 s. 2.2: ``none`` when no authentication was performed."""
    return f"Authentication-Results: {authserv_id}; none\r\n".encode("utf-8")


def upstream_form(raw: bytes, content: bytes, wire: bytes, bare_lf: bool) -> list[bytes | memoryview]:
    """The message ``raw`` (``content`` with forged header fields removed) dot-stuffed for the
    upstream (RFC 5321 s. 4.5.2), in pieces for one write.

    Without a bare LF the received bytes are reused: a block with no line starting with "."
    needs no stuffing at all, and otherwise only the header block is stuffed again, the body
    goes as it came (stuffing changes no empty line, so the header block of ``wire`` ends at
    the same place).  With a bare LF :func:`stuff` doubles every dot after one too.
    """
    if bare_lf:
        return [stuff(raw)]
    if len(wire) == len(content):                # no dot was removed: no line starts with "."
        return [raw]
    head_end = header_block_end(raw)
    return [stuff(raw[:head_end]), memoryview(wire)[header_block_end(wire):]]


async def _verdict(rt: "Runtime", facts: SessionFacts, message: Message,
                   spf_task: asyncio.Future | None) -> Verdict | None:
    if facts.trusted:
        if rt.config.policy.trusted_checks == "none":
            return None
        domain = facts.mail_from.rpartition("@")[2] if facts.mail_from else None
        skipped: asyncio.Future = asyncio.get_running_loop().create_future()
        skipped.set_result((SpfResult("none", "mailfrom", domain, reason=NOT_CHECKED), None))
        verdict = await rt.engine.evaluate_message(facts, message, spf=skipped)
        return dataclasses.replace(verdict, arc=ArcResult("none", reason=NOT_CHECKED),
                                   dmarc=DmarcResult("none", verdict.dmarc.from_domain,
                                                     reason=NOT_CHECKED))
    async with asyncio.timeout(rt.config.general.message_deadline + DEADLINE_SLACK):
        return await rt.engine.evaluate_message(facts, message, spf=spf_task)


async def handle_message(rt: "Runtime", role: str, facts: SessionFacts, content: bytes,
                         wire: bytes, bare_lf: bool, spf_task: asyncio.Future | None,
                         conn: UpstreamConnection, client_alive: Callable[[], bool],
                         peer: str, sealer: "ArcSealer | None" = None, *,
                         session_id: str = "") -> Outcome:
    """``content`` is the unstuffed DATA block, ``wire`` the same as received (dot-stuffed),
    ``bare_lf`` whether it has an LF without CR (see :class:`~.receiver.ReceiveBuffer`)."""
    started = time.monotonic()
    verdict: Verdict | None = None
    checked: Message | None = None       # the inbound message as the engine saw it
    timings: dict[str, float] = {}
    if role == "inbound":
        raw, mailing_list = prepare_inbound(content, rt.authserv_id, rt.policy.quarantine_header)
        checked = Message.parse(raw, crlf_only=not bare_lf)
        try:
            verdict = await _verdict(rt, facts, checked, spf_task)
            timings["total"] = time.monotonic() - started
            action = rt.policy.decide(facts, verdict, mailing_list=mailing_list) if verdict \
                else Action(ACCEPT, "trusted network")
        except TimeoutError:
            log.error("checks of a message from %s overran the deadline", facts.client_ip)
            action = Action(TEMPFAIL, "checks timed out", protocol.TEMP_FAILURE)
        except Exception:
            log.exception("checking a message from %s failed", facts.client_ip)
            action = Action(TEMPFAIL, "internal error while checking", protocol.TEMP_FAILURE)
        header = build_header(rt.authserv_id, facts, verdict).encode("utf-8") if verdict \
            else empty_results_header(rt.authserv_id)
        if sealer is not None and verdict is not None and action.kind in (ACCEPT, QUARANTINE):
            # RFC 8617 s. 5.1: the AAR carries our results; the seal covers what we relay.
            raw = sealer.seal(action.add_headers + raw, header_value(rt.authserv_id, facts, verdict),
                              verdict.arc)
            parts = [header, stuff(raw)]
        else:
            parts = [header, action.add_headers, *upstream_form(raw, content, wire, bare_lf)]
    else:
        try:
            raw = rt.sign(normalize_line_ends(content) if bare_lf else content, facts)
            action = Action(ACCEPT, "submission")
            parts = [stuff(raw)]
        except Exception:
            log.exception("signing a message from %s failed", facts.client_ip)
            action = Action(TEMPFAIL, "signing failed", protocol.TEMP_FAILURE)
            parts = []                     # a tempfail relays nothing

    if action.kind in (REJECT, TEMPFAIL):
        outcome = Outcome(action.reply, RESET)
    elif not client_alive():
        outcome = Outcome(None, BROKEN)
        log.warning("client %s left before the verdict; nothing relayed", facts.client_ip)
    else:
        outcome = await _relay(rt, conn, parts)
    return _finish(rt, role, facts, verdict, action, outcome, len(content), started, peer, timings,
                   checked, session_id)


async def _relay(rt: "Runtime", conn: UpstreamConnection, parts: list[bytes]) -> Outcome:
    try:
        reply, finished = await conn.send_message(parts)
    except UpstreamError as exc:
        rt.metrics.upstream_error("after_data" if exc.after_data else "unavailable")
        if exc.after_data:
            log.error("upstream failed after the message was sent (%s): the client gets 451 "
                      "and retries, so a duplicate is possible", exc)
        else:
            log.error("upstream failed before accepting the message: %s", exc)
        return Outcome(protocol.UPSTREAM_UNAVAILABLE, BROKEN)
    if reply.code == 421:                  # the upstream is going away: the client retries
        rt.metrics.upstream_error("closing")
        return Outcome(protocol.UPSTREAM_UNAVAILABLE, BROKEN, reply)
    return Outcome(reply.to_bytes(), DONE if finished else RESET, reply)


def _finish(rt: "Runtime", role: str, facts: SessionFacts, verdict: Verdict | None,
            action: Action, outcome: Outcome, size: int, started: float, peer: str,
            timings: dict[str, float], checked: Message | None = None,
            session_id: str = "") -> Outcome:
    """Log, count, call the observers.  An observer with ``wants_headers = True`` also gets
    the inbound message's header fields as ``headers=``."""
    elapsed = time.monotonic() - started
    record = message_record(session=session_id, role=role, facts=facts, peer=peer, size=size,
                            verdict=verdict,
                            action=action, upstream_reply=outcome.upstream_reply,
                            reply=outcome.reply, elapsed=elapsed)
    message_log.info("%s", rt.format_record(record))
    rt.metrics.message_done(verdict, action.kind, {"end_of_data": elapsed, **timings})
    for observer in rt.observers:
        try:
            if checked is not None and getattr(observer, "wants_headers", False):
                observer(facts, verdict, action, outcome.upstream_reply, elapsed,
                         headers=checked.headers)
            else:
                observer(facts, verdict, action, outcome.upstream_reply, elapsed)
        except Exception:
            log.exception("message observer %r failed", observer)
    return outcome
