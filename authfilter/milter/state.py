"""The milter session as a table, and the translation of a message's fate into reply packets.

:class:`MilterSession` follows the events of one MTA connection (``receive``): which event is
legal in which state (the table below, in the shape of libmilter's ``engine.c`` next-state
masks), what was negotiated, which events wait for a reply, and the macros in force.  A
connection carries one SMTP session at a time and any number of messages: SMFIC_ABORT (Postfix
sends it after every message, on RSET and on a repeated HELO) takes the session back to
:attr:`MilterState.SESSION`, SMFIC_QUIT_NC starts a new SMTP session on the same connection.
An event out of place raises :class:`ProtocolViolation`, an MTA that cannot give us what we
need :class:`NegotiationFailed`; like a :class:`~.codec.CodecError`, both mean: close the
connection, and Postfix applies ``milter_default_action``.

At end of message, :func:`end_of_message_replies` turns a pipeline
:class:`~authfilter.pipeline.Disposition` into the exact packets to send, and
:func:`rebuild_header_block` gives the pipeline the header block as the milter saw it, byte for
byte, so that the field indexes of ``Disposition.remove`` are the ones SMFIR_CHGHEADER counts.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from .codec import (ACCEPT, REJECT, SMFI_PROT_VERSION, SMFIC_HELO, SMFIF_SETSYMLIST,
                    SMFIP_HDR_LEADSPC, SMFIP_NOBODY, SMFIP_NOCONNECT, SMFIP_NODATA, SMFIP_NOEOH,
                    SMFIP_NOHDRS, SMFIP_NOMAIL, SMFIP_NORCPT, SMFIP_NR_BODY, SMFIP_NR_CONN,
                    SMFIP_NR_DATA, SMFIP_NR_EOH, SMFIP_NR_HDR, SMFIP_NR_HELO, SMFIP_NR_MAIL,
                    SMFIP_NR_RCPT, SMFIP_NR_UNKN, TEMPFAIL, Abort, Body, Connect, Data,
                    EndOfHeaders, EndOfMessage, Event, Header, Helo, Macro, MailFrom,
                    MilterError, OptNeg, Quit, QuitNewConnection, RcptTo, Unknown, change_header,
                    insert_header, optneg_reply, quarantine, reply_code)

if TYPE_CHECKING:
    from ..message import HeaderField
    from ..pipeline import Disposition


class MilterState(enum.Enum):
    OPTNEG = "waiting for option negotiation"
    CONNECT = "waiting for the connect event"
    SESSION = "connected, no transaction"
    MAIL = "after MAIL"
    RCPT = "after RCPT"
    DATA = "after DATA"
    HEADERS = "in the header"
    END_OF_HEADERS = "after the end of the header"
    BODY = "in the body"
    END_OF_MESSAGE = "after the end of the message"
    CLOSED = "after QUIT"

    # Every event looks its state up in the table: Enum's own __hash__ is a Python function
    # (hash of the name), the identity hash of these singletons is the C one and as good.
    __hash__ = object.__hash__

    @property
    def in_transaction(self) -> bool:
        """A MAIL transaction is open: SMFIC_ABORT or a HELO now abandons a message."""
        return self in _TRANSACTION


_TRANSACTION = frozenset({MilterState.MAIL, MilterState.RCPT, MilterState.DATA,
                          MilterState.HEADERS, MilterState.END_OF_HEADERS, MilterState.BODY})


class ProtocolViolation(MilterError):
    """An event the state does not allow (e.g. a header after the body)."""

    def __init__(self, state: MilterState, event: Event):
        super().__init__(f"{type(event).__name__} {state.value}")
        self.state = state
        self.event = event


class NegotiationFailed(MilterError):
    """The MTA's SMFIC_OPTNEG offers less than we need."""


# -- the table ------------------------------------------------------------------------------
S = MilterState                 # shorthand for the table


def _connected(state: MilterState, moves: dict[type, MilterState]) -> dict[type, MilterState]:
    """A row of a connected state: macros come before any event; ABORT, QUIT and QUIT_NC may
    come at any time (Postfix milter8.c milter8_abort and milter8_disc_event send them in every
    state after connect)."""
    return {Macro: state, Abort: S.SESSION, Quit: S.CLOSED, QuitNewConnection: S.CONNECT,
            **moves}


# Event -> next state, per state: the order Postfix sends (milter.md s. 1.1) and libmilter
# engine.c accepts (NX_* masks).  HELO may come in a transaction (the client's EHLO resets it,
# RFC 5321 s. 4.1.4; Postfix then sends SMFIC_ABORT); SMFIC_UNKNOWN comes between envelope
# commands and keeps the state; MAIL right after the end of a message is Sendmail's way (Postfix
# sends ABORT first).
_ROWS: dict[MilterState, dict[type, MilterState]] = {
    S.OPTNEG: {OptNeg: S.CONNECT, Quit: S.CLOSED},
    S.CONNECT: {Macro: S.CONNECT, Connect: S.SESSION, Quit: S.CLOSED},
    S.SESSION: _connected(S.SESSION, {Helo: S.SESSION, MailFrom: S.MAIL, Unknown: S.SESSION}),
    S.MAIL: _connected(S.MAIL, {RcptTo: S.RCPT, Helo: S.SESSION, Unknown: S.MAIL}),
    S.RCPT: _connected(S.RCPT, {RcptTo: S.RCPT, Data: S.DATA, Helo: S.SESSION,
                                Unknown: S.RCPT}),
    S.DATA: _connected(S.DATA, {Header: S.HEADERS, EndOfHeaders: S.END_OF_HEADERS}),
    S.HEADERS: _connected(S.HEADERS, {Header: S.HEADERS, EndOfHeaders: S.END_OF_HEADERS}),
    S.END_OF_HEADERS: _connected(S.END_OF_HEADERS, {Body: S.BODY,
                                                    EndOfMessage: S.END_OF_MESSAGE}),
    S.BODY: _connected(S.BODY, {Body: S.BODY, EndOfMessage: S.END_OF_MESSAGE}),
    S.END_OF_MESSAGE: _connected(S.END_OF_MESSAGE, {Helo: S.SESSION, MailFrom: S.MAIL,
                                                    Unknown: S.END_OF_MESSAGE}),
    S.CLOSED: {},
}

# A state whose entering event was negotiated away (SMFIP_NO*) can be passed through: its
# events are legal in the state before it (libmilter engine.c fix_stm and trans_ok).
_SKIPPED_WITH = ((S.SESSION, SMFIP_NOCONNECT), (S.MAIL, SMFIP_NOMAIL), (S.RCPT, SMFIP_NORCPT),
                 (S.DATA, SMFIP_NODATA), (S.HEADERS, SMFIP_NOHDRS),
                 (S.END_OF_HEADERS, SMFIP_NOEOH), (S.BODY, SMFIP_NOBODY))
_SEQUENCE = (S.CONNECT,) + tuple(state for state, _ in _SKIPPED_WITH) + (S.END_OF_MESSAGE,)


@functools.lru_cache(maxsize=8)
def _table(protocol: int) -> dict[MilterState, dict[type, MilterState]]:
    """The rows with the events of skipped states merged in (a state's own moves first)."""
    table = dict(_ROWS)
    skippable = {state for state, flag in _SKIPPED_WITH if protocol & flag}
    for state, following in reversed(list(zip(_SEQUENCE, _SEQUENCE[1:]))):
        if following in skippable:
            table[state] = {**table[following], **_ROWS[state]}
    return table


# The "no reply" step of each event that has one (SMFIP_NR_*); OptNeg and the end of message
# are always answered; macros, ABORT and QUIT never are.
_NO_REPLY_FLAG = {Connect: SMFIP_NR_CONN, Helo: SMFIP_NR_HELO, MailFrom: SMFIP_NR_MAIL,
                  RcptTo: SMFIP_NR_RCPT, Data: SMFIP_NR_DATA, Unknown: SMFIP_NR_UNKN,
                  Header: SMFIP_NR_HDR, EndOfHeaders: SMFIP_NR_EOH, Body: SMFIP_NR_BODY}

# Macro stages in the order their events come (libmilter CI_*, plus Postfix's header and body
# stages).  Macros of a stage replace those of that stage and of every later one (libmilter
# mi_clr_macros(ctx, stage + 1)), so no value outlives its message.  Others (SMFIC_UNKNOWN's)
# are ignored, as libmilter st_macros does.
_MACRO_STAGE_RANK = {bytes([c]): rank for rank, c in enumerate(b"CHMRTLNBE")}
_FIRST_MESSAGE_STAGE = _MACRO_STAGE_RANK[SMFIC_HELO] + 1


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What the optneg exchange settled: the protocol version, the SMFIF_* actions and the
    SMFIP_* steps in force, and the macro lists asked for."""

    version: int
    actions: int
    protocol: int
    macro_lists: Mapping[int, Sequence[bytes]] | None

    @property
    def leading_space(self) -> bool:
        """SMFIP_HDR_LEADSPC: header values come with their leading space, and the MTA adds
        none to the values we send."""
        return bool(self.protocol & SMFIP_HDR_LEADSPC)

    @property
    def reply(self) -> bytes:
        """The SMFIC_OPTNEG packet to answer with."""
        return optneg_reply(self.version, self.actions, self.protocol, self.macro_lists)


class MilterSession:
    """The state of one milter connection, advanced by :meth:`receive` for every event.

    ``actions`` (SMFIF_*) and ``protocol`` (SMFIP_*) are what we ask for; ``macro_lists``
    (SMFIM_* stage -> macro names) replaces Postfix's lists, and a stage left out then gets no
    macros at all (milter8.c builds the lists from empty).
    """

    def __init__(self, *, actions: int, protocol: int,
                 macro_lists: Mapping[int, Sequence[bytes]] | None = None) -> None:
        self.state = MilterState.OPTNEG
        self.negotiated: Negotiated | None = None
        self._wanted = (actions, protocol, macro_lists)
        self._table = _table(0)
        self._answered: frozenset[type] = frozenset({OptNeg})
        self._macros: list[tuple[int, dict[bytes, bytes]]] = []    # by stage rank

    def receive(self, event: Event) -> MilterState:
        """Take ``event`` into account; returns the new state.  Raises
        :class:`ProtocolViolation` or, for the option negotiation, :class:`NegotiationFailed`."""
        kind = type(event)
        new = self._table[self.state].get(kind)
        if new is None:
            raise ProtocolViolation(self.state, event)
        if kind is Macro:
            self._keep_macros(event)
        elif kind is Abort:
            self._forget_macros(_FIRST_MESSAGE_STAGE)
        elif kind is QuitNewConnection:
            self._forget_macros(0)
        elif kind is OptNeg:
            self._negotiate(event)
        self.state = new
        return new

    def needs_reply(self, event: Event) -> bool:
        """Whether the MTA waits for our reply to ``event`` (with the SMFIP_NR_* in force)."""
        return type(event) in self._answered

    @property
    def answered(self) -> frozenset[type]:
        """The event types the MTA waits for a reply to, as :meth:`needs_reply` says, for a
        driver that looks the type up once per event itself."""
        return self._answered

    def macro(self, name: bytes) -> bytes | None:
        """The value of macro ``name`` in force, ``i`` and ``{i}`` alike (Postfix looks every
        name up as ``{name}``, milter.c milter_macro_lookup); None if the MTA did not send it."""
        other = name[1:-1] if name[:1] == b"{" and name[-1:] == b"}" else b"{" + name + b"}"
        for _, macros in reversed(self._macros):
            value = macros.get(name, macros.get(other))
            if value is not None:
                return value
        return None

    def _keep_macros(self, event: Macro) -> None:
        rank = _MACRO_STAGE_RANK.get(event.stage)
        if rank is None:
            return
        macros = self._macros
        if macros and macros[-1][0] == rank and macros[-1][1] is event.macros:
            return      # Postfix's same list again, before each header and body chunk
        self._forget_macros(rank)
        macros.append((rank, event.macros))

    def _forget_macros(self, first_rank: int) -> None:
        macros = self._macros
        while macros and macros[-1][0] >= first_rank:
            macros.pop()

    def _negotiate(self, offer: OptNeg) -> None:
        """Our answer to the MTA's offer.  Version 6 is required (header leading space, no-reply
        steps, end-of-header macros; Postfix >= 2.6 offers it).  Every action asked for must be
        offered (Postfix fails the connection otherwise, milter8.c "request mask conflict");
        macro lists need SMFIF_SETSYMLIST (LM smfi_setsymlist).  Protocol steps the MTA does
        not offer are dropped, as libmilter does: the events then come and are answered."""
        actions, protocol, macro_lists = self._wanted
        if offer.version < SMFI_PROT_VERSION:
            raise NegotiationFailed(f"the MTA speaks milter protocol {offer.version}, 6 is "
                                    f"needed (Postfix: milter_protocol = 6)")
        if macro_lists:
            actions |= SMFIF_SETSYMLIST
        if actions & ~offer.actions:
            raise NegotiationFailed(f"the MTA does not allow the actions "
                                    f"{actions & ~offer.actions:#x} (it offers {offer.actions:#x})")
        protocol &= offer.protocol
        self.negotiated = Negotiated(SMFI_PROT_VERSION, actions, protocol, macro_lists)
        self._table = _table(protocol)
        self._answered = frozenset({OptNeg, EndOfMessage} | {
            kind for kind, flag in _NO_REPLY_FLAG.items() if not protocol & flag})


# -- the message as the milter saw it, and what to send back at its end ---------------------
def rebuild_header_block(headers: Sequence[Header], *, leading_space: bool = True) -> bytes:
    """The header block of the message from its SMFIC_HEADER events, ending with the empty
    line: ``name ":" value CRLF``, the bare ``\\n`` of folded values back to CRLF.  With
    SMFIP_HDR_LEADSPC this is byte for byte what Postfix holds (minus its own hidden
    Received:), so DKIM's simple header canonicalization verifies; without it Postfix ate one
    space after each colon, which comes back as one space whether or not it was there."""
    colon = b":" if leading_space else b": "
    lines = [h.name + colon + h.value for h in headers]
    lines.append(b"")
    return b"\n".join(lines).replace(b"\n", b"\r\n") + b"\r\n"


def header_edits(remove: Sequence[tuple[str, int]], prepend: Sequence[HeaderField],
                 received: Sequence[Header], *, leading_space: bool) -> list[bytes]:
    """SMFIR_CHGHEADER and SMFIR_INSHEADER packets, in sending order, that remove the fields
    ``remove`` names and put ``prepend`` on top of the message, first field topmost.

    Ordering rules (milter.md s. 1.4 and traps 1-3, measured on Postfix 3.7.11): Postfix applies
    each edit at once, so deletions of one name go highest index first (lowest first leaves a
    forged field in place, OpenDKIM #148); all deletions come before the insertions, whose
    fields would otherwise be counted (and once a field sits above Postfix's own Received:,
    that one counts too, cleanup_milter.c cleanup_find_header_start); every insertion is at
    index 0, above Postfix's Received:, and the last one sent ends on top, so ``prepend`` goes
    in reverse.  Indexes count fields of a name among ``received`` (the SMFIC_HEADER events,
    as :meth:`Message.parse` of :func:`rebuild_header_block` counts them); one beyond the count
    raises ValueError rather than delete another field.  Values go with our own leading space
    when SMFIP_HDR_LEADSPC is on (Postfix then adds none) and folded with a bare ``\\n``.
    """
    count: dict[bytes, int] = {}
    for header in received:
        key = header.name.lower()
        count[key] = count.get(key, 0) + 1
    doomed: dict[tuple[bytes, int], bytes] = {}      # (name, index) -> name as given, once each
    for name, nth in remove:
        wire = name.encode("ascii")
        doomed.setdefault((wire.lower(), nth), wire)
    edits = []
    for (key, nth), wire in sorted(doomed.items(), key=lambda item: (item[0][0], -item[0][1])):
        if not 1 <= nth <= count.get(key, 0):
            raise ValueError(f"no {wire.decode()} field #{nth} among the {count.get(key, 0)} "
                             f"received")
        edits.append(change_header(nth, wire, b""))
    space = b" " if leading_space else b""
    for name, value in reversed(prepend):
        edits.append(insert_header(0, name.encode("ascii"),
                                   space + value.encode("utf-8").replace(b"\r\n", b"\n")))
    return edits


def end_of_message_replies(disposition: Disposition, received: Sequence[Header], *,
                           leading_space: bool) -> list[bytes]:
    """The packets that answer SMFIC_BODYEOB for ``disposition``, in sending order.

    accept: the header edits, then SMFIR_ACCEPT.  quarantine: the edits, SMFIR_QUARANTINE with
    the policy's reason (Postfix holds the message; the state does not change, so the accept
    follows, milter8.c).  reject / tempfail: SMFIR_REPLYCODE with the policy's reply (the
    class of its code is what Postfix acts on, so it must match), or the bare SMFIR_REJECT /
    SMFIR_TEMPFAIL without one; no edits, the message is refused.
    """
    action = disposition.action
    if action in ("reject", "tempfail"):
        reply = disposition.reply
        if reply is None:
            return [REJECT if action == "reject" else TEMPFAIL]
        if reply.code // 100 != (5 if action == "reject" else 4):
            raise ValueError(f"{action} with reply code {reply.code}")
        return [reply_code(reply.code, reply.text)]
    if action not in ("accept", "quarantine"):
        raise ValueError(f"unknown action {action!r}")
    packets = header_edits(disposition.remove, disposition.prepend, received,
                           leading_space=leading_space)
    if action == "quarantine":
        packets.append(quarantine(disposition.decision.reason.encode("utf-8") or b"quarantine"))
    packets.append(ACCEPT)
    return packets
