"""The MTA's side of the milter protocol, as Postfix 3.7 speaks it, for tests and the benchmark.

Packets are written here from the layout (milter.md s. 1.1: 4-byte length of command + data,
the command byte, NUL-terminated strings, network-order integers), never with the encoder under
test; only the protocol constants come from the codec.  :class:`MtaSide` is the conversation
without I/O: Postfix's offer (version 6, every action and step), then per event the
SMFIC_MACRO of its stage (always sent, with the macros the milter asked for that have a value;
milter8.c milter8_event) and the event unless the milter negotiated it away; the bytes are
buffered until a reply is due, as Postfix's VSTREAM does ("we're sending macros and event
parameters in one VSTREAM transaction"; "don't wait for one reply per header").  A message is
given to the milter the way Postfix's cleanup does: header fields split into name and value
(continuation lines joined with a bare LF, white space before the colon dropped, the leading
space kept only with SMFIP_HDR_LEADSPC), body chunks of at most 65,535 bytes ending in CRLF.
The replies are applied like cleanup applies them (``PostfixHeader``, the model held against
Postfix's own results in tests/unit/test_milter_state.py), so a test reads the delivered message.

:class:`MilterClient` drives it over a blocking socket (``unix:/path`` or ``HOST:PORT``)::

    with MilterClient(address) as mta:
        mta.negotiate()
        mta.connect(b"[192.0.2.1]", b"192.0.2.1")
        mta.helo(b"client.example")
        outcome = mta.message(raw, b"<alice@example.org>", [b"<bob@example.net>"], b"4QID")
        outcome.final, outcome.reply, outcome.delivered
"""
from __future__ import annotations

import itertools
import socket
import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

from authfilter.milter.codec import (MILTER_CHUNK_SIZE, SMFIA_INET, SMFIC_ABORT, SMFIC_BODY,
                                     SMFIC_BODYEOB, SMFIC_CONNECT, SMFIC_DATA, SMFIC_EOH,
                                     SMFIC_HEADER, SMFIC_HELO, SMFIC_MACRO, SMFIC_MAIL,
                                     SMFIC_OPTNEG, SMFIC_QUIT, SMFIC_RCPT, SMFIM_CONNECT,
                                     SMFIM_DATA, SMFIM_ENVFROM, SMFIM_ENVRCPT, SMFIM_EOH,
                                     SMFIM_EOM, SMFIM_HELO, SMFIP_HDR_LEADSPC, SMFIP_NOBODY,
                                     SMFIP_NOCONNECT, SMFIP_NODATA, SMFIP_NOEOH, SMFIP_NOHDRS,
                                     SMFIP_NOHELO, SMFIP_NOMAIL, SMFIP_NORCPT, SMFIP_NR_BODY,
                                     SMFIP_NR_CONN, SMFIP_NR_DATA, SMFIP_NR_EOH, SMFIP_NR_HDR,
                                     SMFIP_NR_HELO, SMFIP_NR_MAIL, SMFIP_NR_RCPT, SMFIR_ACCEPT,
                                     SMFIR_CHGHEADER, SMFIR_CONTINUE, SMFIR_INSHEADER,
                                     SMFIR_PROGRESS, SMFIR_QUARANTINE, SMFIR_REJECT,
                                     SMFIR_REPLYCODE, SMFIR_TEMPFAIL, Header)
from tests.unit.test_milter_state import PostfixHeader

POSTFIX_OFFER = (6, 0x1FF, 0x1FFFFF)          # version, actions, steps: Postfix 3.7.11, captured
FLUSH_AT = 64 * 1024                          # buffered bytes written before a reply is due
FINAL_REPLIES = frozenset({SMFIR_ACCEPT, SMFIR_CONTINUE, SMFIR_REJECT, SMFIR_TEMPFAIL,
                           SMFIR_REPLYCODE, b"d", b"s"})     # d: discard, s: skip

# Per event command: the SMFIM_* macro list Postfix sends before it (headers go with the
# end-of-header list, body chunks with the end-of-message one), the step that leaves the event
# out and the one that says no reply comes (milter.md s. 1.2, 1.3).
_STAGES = {
    SMFIC_CONNECT: (SMFIM_CONNECT, SMFIP_NOCONNECT, SMFIP_NR_CONN),
    SMFIC_HELO: (SMFIM_HELO, SMFIP_NOHELO, SMFIP_NR_HELO),
    SMFIC_MAIL: (SMFIM_ENVFROM, SMFIP_NOMAIL, SMFIP_NR_MAIL),
    SMFIC_RCPT: (SMFIM_ENVRCPT, SMFIP_NORCPT, SMFIP_NR_RCPT),
    SMFIC_DATA: (SMFIM_DATA, SMFIP_NODATA, SMFIP_NR_DATA),
    SMFIC_HEADER: (SMFIM_EOH, SMFIP_NOHDRS, SMFIP_NR_HDR),
    SMFIC_EOH: (SMFIM_EOH, SMFIP_NOEOH, SMFIP_NR_EOH),
    SMFIC_BODY: (SMFIM_EOM, SMFIP_NOBODY, SMFIP_NR_BODY),
    SMFIC_BODYEOB: (SMFIM_EOM, 0, 0),
}
# Postfix's own lists (mail_params.h), used when the milter sends none.
POSTFIX_MACROS = {
    SMFIM_CONNECT: [b"j", b"{daemon_name}", b"{daemon_addr}", b"v", b"_"],
    SMFIM_HELO: [b"{tls_version}", b"{cipher}", b"{cipher_bits}", b"{cert_subject}",
                 b"{cert_issuer}"],
    SMFIM_ENVFROM: [b"i", b"{auth_type}", b"{auth_authen}", b"{auth_author}", b"{mail_addr}",
                    b"{mail_host}", b"{mail_mailer}"],
    SMFIM_ENVRCPT: [b"i", b"{rcpt_addr}", b"{rcpt_host}", b"{rcpt_mailer}"],
    SMFIM_DATA: [b"i"], SMFIM_EOH: [b"i"], SMFIM_EOM: [b"i"],
}


def packet(command: bytes, *strings: bytes, raw: bytes = b"") -> bytes:
    """One MTA packet: ``raw`` bytes first, then each of ``strings`` NUL-terminated."""
    data = raw + b"".join(s + b"\0" for s in strings)
    return struct.pack("!I", len(data) + 1) + command + data


def split_packets(buffer: bytearray) -> list[bytes]:
    """The whole packets at the start of ``buffer`` (removed from it), each with its length."""
    packets = []
    while len(buffer) >= 4:
        (length,) = struct.unpack_from("!I", buffer)
        if len(buffer) < 4 + length:
            break
        packets.append(bytes(buffer[:4 + length]))
        del buffer[:4 + length]
    return packets


@dataclass
class Negotiation:
    """The milter's SMFIC_OPTNEG answer."""

    version: int
    actions: int
    protocol: int
    macro_lists: dict[int, list[bytes]] | None

    @classmethod
    def parse(cls, reply: bytes) -> "Negotiation":
        if reply[4:5] != SMFIC_OPTNEG:
            raise AssertionError(f"not an optneg reply: {reply[:20]!r}")
        version, actions, protocol = struct.unpack_from("!III", reply, 5)
        rest, lists = reply[17:], {}
        while rest:                     # u32 stage, "names separated by spaces", NUL
            (stage,) = struct.unpack_from("!I", rest)
            names, _, rest = rest[4:].partition(b"\0")
            lists[stage] = names.split()
        return cls(version, actions, protocol, lists or None)


def postfix_view(raw: bytes, *, leading_space: bool) -> tuple[list[Header], bytes]:
    """The header fields and body of a CRLF message as Postfix gives them to a milter."""
    if raw.startswith(b"\r\n"):
        head, body = b"", raw[2:]
    else:
        head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[Header] = []
    for line in head.split(b"\r\n") if head else ():
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = Header(fields[-1].name, fields[-1].value + b"\n" + line)
            continue
        name, _, value = line.partition(b":")
        if not leading_space and value[:1] == b" ":
            value = value[1:]
        fields.append(Header(name.rstrip(b" \t"), value))
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"                                   # Postfix ends the last line
    return fields, body


class MtaSide:
    """Postfix's half of one milter connection, without I/O: :attr:`out` holds what is to be
    written; each ``event`` says whether the MTA now waits for a reply (then write and read)."""

    def __init__(self, macros: dict[bytes, bytes] | None = None) -> None:
        self.macros = dict(macros or {})      # every macro value the MTA knows, by name
        self.negotiation: Negotiation | None = None
        self.out = bytearray()

    def offer(self, version: int = POSTFIX_OFFER[0], actions: int = POSTFIX_OFFER[1],
              protocol: int = POSTFIX_OFFER[2]) -> None:
        self.out += packet(SMFIC_OPTNEG, raw=struct.pack("!III", version, actions, protocol))

    def negotiated(self, reply: bytes) -> Negotiation:
        self.negotiation = Negotiation.parse(reply)
        return self.negotiation

    @property
    def leading_space(self) -> bool:
        return bool(self.negotiation.protocol & SMFIP_HDR_LEADSPC)

    def event(self, command: bytes, *strings: bytes, raw: bytes = b"") -> bool:
        """Queue ``command``'s macros and, unless negotiated away, the event; True when a reply
        is due now."""
        stage, left_out, no_reply = _STAGES[command]
        lists = self.negotiation.macro_lists
        names = (lists or POSTFIX_MACROS).get(stage, [])
        pairs = [part for name in names if self._value(name) is not None
                 for part in (name, self._value(name))]
        self.out += packet(SMFIC_MACRO, *pairs, raw=command)
        if self.negotiation.protocol & left_out:
            return False
        self.out += packet(command, *strings, raw=raw)
        return command == SMFIC_BODYEOB or not self.negotiation.protocol & no_reply

    def _value(self, name: bytes) -> bytes | None:
        """Postfix looks ``i`` and ``{i}`` up alike (milter.c milter_macro_lookup)."""
        bare = name.strip(b"{}")
        return self.macros.get(bare, self.macros.get(b"{" + bare + b"}"))

    def connect(self, hostname: bytes = b"localhost", address: bytes = b"127.0.0.1",
                family: bytes = SMFIA_INET, port: int = 40000) -> bool:
        return self.event(SMFIC_CONNECT, address,
                          raw=hostname + b"\0" + family + struct.pack("!H", port))

    def helo(self, name: bytes) -> bool:
        return self.event(SMFIC_HELO, name)

    def envelope_events(self, mail_from: bytes, recipients: Sequence[bytes]) -> Iterator[bool]:
        """MAIL, each RCPT and DATA, which Postfix's smtpd writes one SMTP command at a time;
        yields after each whether a reply is due."""
        yield self.event(SMFIC_MAIL, mail_from)
        for rcpt in recipients:
            yield self.event(SMFIC_RCPT, rcpt)
        yield self.event(SMFIC_DATA)

    def content_events(self, headers: Sequence[Header], body: bytes) -> Iterator[bool]:
        """Each header field, end of header, body chunks and end of message, which cleanup
        writes in one go."""
        for h in headers:
            yield self.event(SMFIC_HEADER, h.name, h.value)
        yield self.event(SMFIC_EOH)
        for start in range(0, len(body), MILTER_CHUNK_SIZE):
            yield self.event(SMFIC_BODY, raw=body[start:start + MILTER_CHUNK_SIZE])
        yield self.event(SMFIC_BODYEOB)

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


@dataclass
class Outcome:
    """What the milter answered to a message's end, and what cleanup made of it."""

    packets: list[bytes]                  # every reply packet, progress and edits included
    seen: list[Header]                    # the header fields the milter was given
    body: bytes
    leading_space: bool
    queue_id: bytes = b"QUEUEID"

    @property
    def final(self) -> bytes:
        """The deciding reply's command byte (a, c, r, t, y)."""
        return self.packets[-1][4:5]

    @property
    def reply(self) -> bytes | None:
        """The SMFIR_REPLYCODE text, without its NUL."""
        return self.packets[-1][5:-1] if self.final == SMFIR_REPLYCODE else None

    @property
    def quarantine(self) -> bytes | None:
        reasons = [p[5:-1] for p in self.packets if p[4:5] == SMFIR_QUARANTINE]
        return reasons[-1] if reasons else None

    @property
    def edits(self) -> list[bytes]:
        return [p for p in self.packets if p[4:5] in (SMFIR_INSHEADER, SMFIR_CHGHEADER, b"h")]

    @property
    def progress(self) -> int:
        return sum(p[4:5] == SMFIR_PROGRESS for p in self.packets)

    @property
    def delivered(self) -> bytes | None:
        """The message as queued, Postfix's own Received: on top unless a field went above
        it; None when the milter refused it."""
        if self.final not in (SMFIR_ACCEPT, SMFIR_CONTINUE):
            return None
        fields = PostfixHeader(self.seen).apply(self.edits).fields
        colon = b":" if self.leading_space else b": "
        head = b"".join(name + colon + value.replace(b"\n", b"\r\n") + b"\r\n"
                        for name, value, _ in fields)
        return head + b"\r\n" + self.body


class MilterClient:
    """:class:`MtaSide` over a blocking socket."""

    def __init__(self, address: str, *, macros: dict[bytes, bytes] | None = None,
                 timeout: float = 10.0) -> None:
        if address.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address[5:])
        else:
            host, _, port = address.rpartition(":")
            self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout)
        self.mta = MtaSide(macros)
        self._in = bytearray()
        self._packets: list[bytes] = []

    def __enter__(self) -> "MilterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- I/O -------------------------------------------------------------------------------
    def flush(self) -> None:
        if self.mta.out:
            self.sock.sendall(self.mta.take())

    def read_packet(self) -> bytes:
        """The next reply packet; ConnectionError when the milter closed the connection."""
        while not self._packets:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the milter closed the connection")
            self._in += data
            self._packets += split_packets(self._in)
        return self._packets.pop(0)

    def step(self, due: bool) -> list[bytes] | None:
        """After an event: when a reply is due, every reply packet up to the deciding one
        (edits, quarantine and progress come before it); else None, the bytes buffered."""
        if not due:
            if len(self.mta.out) >= FLUSH_AT:
                self.flush()
            return None
        self.flush()
        packets = [self.read_packet()]
        while packets[-1][4:5] not in FINAL_REPLIES:
            packets.append(self.read_packet())
        return packets

    def send_raw(self, data: bytes) -> None:
        self.flush()
        self.sock.sendall(data)

    # -- the conversation ------------------------------------------------------------------
    def negotiate(self, *offer: int) -> Negotiation:
        self.mta.offer(*offer)
        self.flush()
        return self.mta.negotiated(self.read_packet())

    def connect(self, *args, **kwargs) -> list[bytes] | None:
        """SMFIC_CONNECT (:meth:`MtaSide.connect`); the replies if one was due."""
        return self.step(self.mta.connect(*args, **kwargs))

    def helo(self, name: bytes) -> list[bytes] | None:
        return self.step(self.mta.helo(name))

    def message(self, raw: bytes, mail_from: bytes, recipients: Sequence[bytes],
                queue_id: bytes = b"QUEUEID") -> Outcome:
        """One transaction, MAIL to end of message (Postfix stops at a refusal), then the
        ABORT Postfix sends after each."""
        self.mta.macros[b"i"] = queue_id
        seen, body = postfix_view(raw, leading_space=self.mta.leading_space)
        packets: list[bytes] = []
        for due in itertools.chain(self.mta.envelope_events(mail_from, recipients),
                                   self.mta.content_events(seen, body)):
            packets = self.step(due) or packets
            if packets and packets[-1][4:5] != SMFIR_CONTINUE:
                break
        self.abort()
        return Outcome(packets, seen, body, self.mta.leading_space, queue_id)

    def abort(self) -> None:
        self.mta.out += packet(SMFIC_ABORT)
        self.mta.macros.pop(b"i", None)

    def quit(self) -> None:
        self.mta.out += packet(SMFIC_QUIT)
        self.flush()
