"""The milter wire protocol without I/O: bytes from the MTA in, typed events out; replies to bytes.

Framing (libmilter ``mfdef.h``; Postfix ``src/milter/milter8.c``): every packet is a 4-byte
big-endian length covering the command byte and the data, the command byte, the data.  Strings
are NUL-terminated, integers in network order.  Everything stays ``bytes``: macro values, HELO
names, addresses and header fields may be UTF-8 (SMTPUTF8) or any 8-bit text, and a strict
decode would turn one such message into a dead milter and a tempfail (milter.md s. 2.2, the
kilter crash).

:class:`Decoder` is fed whatever the socket gave (a packet split over several reads, several
packets in one read) and returns the events of the packets completed so far.  It works on
offsets into the bytes it was given, with ``struct`` for the length and ``bytes.split`` for the
strings: no Python loop runs per byte.  Only a packet split over reads is gathered in a buffer
(each feed then costs one append and a length check, however small the pieces), and the
packets after it are read in place again.  A length over the limit is refused as soon as its
4 bytes are in, before any of the packet is buffered.  Any :class:`CodecError` means the
stream can no longer be framed: the caller closes the connection, and Postfix applies
``milter_default_action`` (milter.md s. 1.5).
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

# -- constants: Sendmail libmilter include/libmilter/mfdef.h 8.40 and mfapi.h, as copied in
# Postfix milter8.c.  MILTER_CHUNK_SIZE is the largest body chunk an MTA sends.
MILTER_LEN_BYTES = 4
MILTER_CHUNK_SIZE = 65535
SMFI_PROT_VERSION = 6

# Commands from the MTA (SMFIC_*).
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# Replies we send (SMFIR_*).
SMFIR_ACCEPT = b"a"
SMFIR_CONTINUE = b"c"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# Actions the filter may take (SMFIF_*), asked for in the optneg reply.
SMFIF_ADDHDRS = 0x01            # add and insert header fields
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10            # change and delete header fields
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100        # the optneg reply carries macro lists

# Protocol steps (SMFIP_*): NO* = do not send this event, NR_* = the filter will not reply to
# it, SKIP = the MTA understands SMFIR_SKIP, HDR_LEADSPC = header values keep their leading
# space (and the MTA adds none to the fields we add).
SMFIP_NOCONNECT = 1 << 0
SMFIP_NOHELO = 1 << 1
SMFIP_NOMAIL = 1 << 2
SMFIP_NORCPT = 1 << 3
SMFIP_NOBODY = 1 << 4
SMFIP_NOHDRS = 1 << 5
SMFIP_NOEOH = 1 << 6
SMFIP_NR_HDR = 1 << 7
SMFIP_NOUNKNOWN = 1 << 8
SMFIP_NODATA = 1 << 9
SMFIP_SKIP = 1 << 10
SMFIP_RCPT_REJ = 1 << 11
SMFIP_NR_CONN = 1 << 12
SMFIP_NR_HELO = 1 << 13
SMFIP_NR_MAIL = 1 << 14
SMFIP_NR_RCPT = 1 << 15
SMFIP_NR_DATA = 1 << 16
SMFIP_NR_UNKN = 1 << 17
SMFIP_NR_EOH = 1 << 18
SMFIP_NR_BODY = 1 << 19
SMFIP_HDR_LEADSPC = 1 << 20

# Macro list stages of the optneg reply (SMFIM_*, mfapi.h): numbers, unlike the command byte
# that names the stage of an SMFIC_MACRO packet.
SMFIM_CONNECT = 0
SMFIM_HELO = 1
SMFIM_ENVFROM = 2
SMFIM_ENVRCPT = 3
SMFIM_DATA = 4
SMFIM_EOM = 5
SMFIM_EOH = 6

# Address families of SMFIC_CONNECT (SMFIA_*).
SMFIA_UNKNOWN = b"U"
SMFIA_UNIX = b"L"
SMFIA_INET = b"4"
SMFIA_INET6 = b"6"

# The largest packet accepted.  A body chunk is at most MILTER_CHUNK_SIZE + 1, but one
# SMFIC_HEADER carries a whole header field, and Postfix keeps fields up to header_size_limit
# (102400 by default, mail_params.h); this leaves room for that plus the name.  (libmilter's own
# limit is 65535 data bytes, so a C milter would drop such a message; authentication_milter
# caps at the same 131072.)
MAX_PACKET = 128 * 1024

_LENGTH = struct.Struct("!I")
_U32 = struct.Struct("!I")
_PORT = struct.Struct("!H")
_OPTNEG = struct.Struct("!III")


# -- errors ---------------------------------------------------------------------------------
class MilterError(Exception):
    """Base of every milter protocol error: the connection cannot go on."""


class CodecError(MilterError):
    """The byte stream is not a milter packet stream."""


class PacketTooLarge(CodecError):
    def __init__(self, length: int, limit: int):
        super().__init__(f"packet of {length} bytes announced, more than the limit of {limit}")
        self.length = length
        self.limit = limit


class MalformedPacket(CodecError):
    """A packet whose length, command byte or data does not follow the protocol; the message
    names the command and the problem."""


# -- events: one per SMFIC_* command --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OptNeg:
    """SMFIC_OPTNEG: the MTA's protocol version, the actions it allows and the protocol steps
    it can leave out or not wait for (Postfix 3.7: 6, 0x1ff, 0x1fffff)."""

    version: int
    actions: int
    protocol: int


@dataclass(frozen=True, slots=True)
class Macro:
    """SMFIC_MACRO: macro values for the event that follows; ``stage`` is that event's command
    byte (``b"C"``, ``b"M"``, ... also ``b"L"`` and ``b"B"`` from Postfix).  Names come as the
    milter asked for them: ``i`` or ``{i}`` (Postfix ``milter_macro_lookup``).  The same packet
    twice in a row gives the same event (see :meth:`Decoder._macro`): read ``macros`` only."""

    stage: bytes
    macros: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Connect:
    """SMFIC_CONNECT.  ``hostname`` is ``[ip]`` when the client has no name (milter8.c);
    ``family`` is an SMFIA_* byte; ``port`` and ``address`` are None for SMFIA_UNKNOWN, and
    ``address`` is a socket path for SMFIA_UNIX."""

    hostname: bytes
    family: bytes
    port: int | None
    address: bytes | None

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The client address for an inet family; Sendmail writes IPv6 as ``IPv6:addr``."""
        if self.family not in (SMFIA_INET, SMFIA_INET6) or self.address is None:
            return None
        text = self.address.decode("ascii", "replace")
        if text[:5].lower() == "ipv6:":
            text = text[5:]
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Helo:
    """SMFIC_HELO: the HELO/EHLO argument."""

    name: bytes


@dataclass(frozen=True, slots=True)
class _Envelope:
    """MAIL or RCPT: ``args[0]`` is the path with its angle brackets, the rest the ESMTP
    parameters as the client gave them (``SIZE=332``, ``BODY=8BITMIME``)."""

    args: list[bytes]

    @property
    def address(self) -> bytes:
        """The path without angle brackets (``b""`` for the null reverse-path)."""
        path = self.args[0]
        return path[1:-1] if path[:1] == b"<" and path[-1:] == b">" else path

    @property
    def parameters(self) -> list[bytes]:
        return self.args[1:]


@dataclass(frozen=True, slots=True)
class MailFrom(_Envelope):
    """SMFIC_MAIL."""


@dataclass(frozen=True, slots=True)
class RcptTo(_Envelope):
    """SMFIC_RCPT (with SMFIP_RCPT_REJ also the recipients the MTA rejected)."""


@dataclass(frozen=True, slots=True)
class Data:
    """SMFIC_DATA: the client sent DATA (or BDAT)."""


@dataclass(frozen=True, slots=True)
class Header:
    """SMFIC_HEADER: one field.  ``name`` without the colon (and without white space before
    it); ``value`` is everything after the colon, with its leading space only when
    SMFIP_HDR_LEADSPC was negotiated, continuation lines joined with a bare ``\\n``."""

    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class EndOfHeaders:
    """SMFIC_EOH."""


@dataclass(frozen=True, slots=True)
class Body:
    """SMFIC_BODY: a piece of the body (CRLF lines, dot-unstuffed; at most MILTER_CHUNK_SIZE
    bytes from Postfix)."""

    chunk: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """SMFIC_BODYEOB: the message is complete; the end-of-message reply is due."""


@dataclass(frozen=True, slots=True)
class Abort:
    """SMFIC_ABORT: forget the current message (after every message and on RSET/HELO in
    Postfix); the connection stays."""


@dataclass(frozen=True, slots=True)
class Quit:
    """SMFIC_QUIT: the SMTP session is over; the MTA closes the connection."""


@dataclass(frozen=True, slots=True)
class QuitNewConnection:
    """SMFIC_QUIT_NC: the SMTP session is over and the connection carries a new one, which
    starts with SMFIC_CONNECT (no new option negotiation)."""


@dataclass(frozen=True, slots=True)
class Unknown:
    """SMFIC_UNKNOWN: an SMTP command line the MTA did not recognise."""

    line: bytes


Event = (OptNeg | Macro | Connect | Helo | MailFrom | RcptTo | Data | Header | EndOfHeaders
         | Body | EndOfMessage | Abort | Quit | QuitNewConnection | Unknown)


# -- packet data -> events ------------------------------------------------------------------
def _strings(payload: bytes, command: str) -> list[bytes]:
    """The NUL-terminated strings of ``payload`` (milter8.c MILTER8_DATA_STRING, _ARGV)."""
    if payload[-1:] != b"\0":
        raise MalformedPacket(f"{command}: data does not end in NUL")
    strings = payload.split(b"\0")
    strings.pop()
    return strings


def _one_string(payload: bytes, command: str) -> bytes:
    strings = _strings(payload, command)
    if len(strings) != 1:
        raise MalformedPacket(f"{command}: {len(strings)} strings where one belongs")
    return strings[0]


def _optneg(payload: bytes) -> OptNeg:
    # libmilter st_optionneg needs MILTER_OPTLEN (12) bytes and ignores what follows.
    if len(payload) < _OPTNEG.size:
        raise MalformedPacket(f"SMFIC_OPTNEG: {len(payload)} bytes, 12 needed")
    return OptNeg(*_OPTNEG.unpack_from(payload))


def _macro(payload: bytes) -> Macro:
    if not payload:
        raise MalformedPacket("SMFIC_MACRO: no stage byte")
    strings = payload[1:].split(b"\0")        # Postfix sends the stage byte even with no macro
    if strings.pop():
        raise MalformedPacket("SMFIC_MACRO: data does not end in NUL")
    if len(strings) % 2:
        raise MalformedPacket(f"SMFIC_MACRO: macro {strings[-1][:40]!r} has no value")
    return Macro(payload[:1], dict(zip(strings[::2], strings[1::2])))


def _connect(payload: bytes) -> Connect:
    end = payload.find(b"\0")
    if end < 0 or end + 1 >= len(payload):
        raise MalformedPacket("SMFIC_CONNECT: no host name and family")
    hostname, family, rest = payload[:end], payload[end + 1:end + 2], payload[end + 2:]
    if family == SMFIA_UNKNOWN:
        if rest:
            raise MalformedPacket("SMFIC_CONNECT: data after family U")
        return Connect(hostname, family, None, None)
    if family not in (SMFIA_INET, SMFIA_INET6, SMFIA_UNIX):
        raise MalformedPacket(f"SMFIC_CONNECT: unknown address family {family!r}")
    if len(rest) < _PORT.size + 1:
        raise MalformedPacket("SMFIC_CONNECT: no port and address")
    (port,) = _PORT.unpack_from(rest)
    return Connect(hostname, family, port, _one_string(rest[_PORT.size:], "SMFIC_CONNECT"))


def _header(payload: bytes) -> Header:
    strings = payload.split(b"\0")           # name, value and the empty rest after the last NUL
    if len(strings) != 3 or strings[2] or not strings[0]:
        raise MalformedPacket("SMFIC_HEADER: data is not a name and a value, each ending in NUL")
    return Header(strings[0], strings[1])


def _without_data(event: Event, command: str) -> Callable[[bytes], Event]:
    """The parser of a command that has no data.  Postfix (milter8.c milter8_eob) and Sendmail
    (milter.c) send SMFIC_BODYEOB empty too, so data there means a framing error, not the
    final body chunk old libmilter would accept."""

    def parse(payload: bytes) -> Event:
        if payload:
            raise MalformedPacket(f"{command}: {len(payload)} unexpected bytes of data")
        return event

    return parse


# Command byte -> parser; SMFIC_MACRO's is Decoder._macro, which caches _macro's event.
_PARSERS: dict[int, Callable[[bytes], Event]] = {
    SMFIC_OPTNEG[0]: _optneg,
    SMFIC_CONNECT[0]: _connect,
    SMFIC_HELO[0]: lambda payload: Helo(_one_string(payload, "SMFIC_HELO")),
    SMFIC_MAIL[0]: lambda payload: MailFrom(_strings(payload, "SMFIC_MAIL")),
    SMFIC_RCPT[0]: lambda payload: RcptTo(_strings(payload, "SMFIC_RCPT")),
    SMFIC_DATA[0]: _without_data(Data(), "SMFIC_DATA"),
    SMFIC_HEADER[0]: _header,
    SMFIC_EOH[0]: _without_data(EndOfHeaders(), "SMFIC_EOH"),
    SMFIC_BODY[0]: Body,
    SMFIC_BODYEOB[0]: _without_data(EndOfMessage(), "SMFIC_BODYEOB"),
    SMFIC_ABORT[0]: _without_data(Abort(), "SMFIC_ABORT"),
    SMFIC_QUIT[0]: _without_data(Quit(), "SMFIC_QUIT"),
    SMFIC_QUIT_NC[0]: _without_data(QuitNewConnection(), "SMFIC_QUIT_NC"),
    SMFIC_UNKNOWN[0]: lambda payload: Unknown(_one_string(payload, "SMFIC_UNKNOWN")),
}


class Decoder:
    """Packets in, events out.  ``max_packet`` bounds the length field (command byte + data)."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._pending = bytearray()     # the start of a packet whose end has not arrived
        self._needed = 0                # size _pending must reach: the length field, or the packet
        self._last_macro: tuple[bytes, Macro] | None = None
        self._parsers = {**_PARSERS, SMFIC_MACRO[0]: self._macro}

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The events of every packet that ``data`` completes, in order.  Raises
        :class:`PacketTooLarge` or :class:`MalformedPacket`; the decoder is unusable after."""
        if not isinstance(data, bytes):
            data = bytes(data)
        pending = self._pending
        if not pending:
            return self._packets(data, 0)
        # Complete the packet an earlier feed began, then carry on inside ``data`` itself.
        start = 0
        with memoryview(data) as view:
            while True:
                wanted = self._needed - len(pending)
                if len(data) - start < wanted:
                    pending += view[start:]
                    return []
                pending += view[start:start + wanted]
                start += wanted
                if self._needed != MILTER_LEN_BYTES:
                    break
                self._needed = self._packet_end(pending, 0)     # the length is in: whole packet
        event = self._parse(pending[MILTER_LEN_BYTES], memoryview(pending), MILTER_LEN_BYTES + 1)
        pending.clear()
        return [event] + self._packets(data, start)

    def _macro(self, payload: bytes) -> Macro:
        """Postfix sends the same SMFIC_MACRO before every header field and body chunk
        (milter8.c passes the same eoh/eod macro list with each): the last one is reused, so
        consecutive events share one ``macros`` dict (read it, do not change it)."""
        last = self._last_macro
        if last is not None and last[0] == payload:
            return last[1]
        event = _macro(payload)
        self._last_macro = (payload, event)
        return event

    def _packet_end(self, buf: bytes | bytearray, pos: int) -> int:
        """Where the packet that starts at ``pos`` ends, from its length field."""
        (length,) = _LENGTH.unpack_from(buf, pos)
        if not 0 < length <= self.max_packet:
            raise self._bad_length(length)
        return pos + MILTER_LEN_BYTES + length

    def _parse(self, command: int, view: memoryview, data: int) -> Event:
        """The event of the one packet in ``view``, its data from ``data`` on (a packet that
        spanned reads: its payload is copied once, out of the pending buffer)."""
        with view:
            parse = self._parsers.get(command)
            if parse is None:
                raise _unknown_command(command)
            return parse(bytes(view[data:]))

    def _bad_length(self, length: int) -> CodecError:
        if length:
            return PacketTooLarge(length, self.max_packet)
        return MalformedPacket("packet of length 0: no command byte")

    def _packets(self, buf: bytes, pos: int) -> list[Event]:
        """The events of the whole packets in ``buf`` from ``pos``; the rest goes to _pending.
        (The hot loop of the front-end: locals instead of attribute look-ups.)"""
        events: list[Event] = []
        append, parsers, unpack = events.append, self._parsers, _LENGTH.unpack_from
        limit, size = self.max_packet, len(buf)
        while size - pos >= MILTER_LEN_BYTES:
            (length,) = unpack(buf, pos)
            if not 0 < length <= limit:
                raise self._bad_length(length)
            data, end = pos + MILTER_LEN_BYTES + 1, pos + MILTER_LEN_BYTES + length
            if end > size:
                self._needed = end - pos
                break
            parse = parsers.get(buf[data - 1])
            if parse is None:
                raise _unknown_command(buf[data - 1])
            append(parse(buf[data:end]))
            pos = end
        else:                                   # no break: what is left is not even a length
            if pos == size:
                return events
            self._needed = MILTER_LEN_BYTES
        with memoryview(buf) as view:
            self._pending += view[pos:]
        return events


def _unknown_command(command: int) -> MalformedPacket:
    return MalformedPacket(f"unknown command byte {bytes([command])!r}")


# -- replies -> bytes -----------------------------------------------------------------------
def packet(command: bytes, payload: bytes = b"") -> bytes:
    """One packet: length (command byte + data), command byte, data."""
    return _LENGTH.pack(len(payload) + 1) + command + payload


CONTINUE = packet(SMFIR_CONTINUE)
ACCEPT = packet(SMFIR_ACCEPT)
REJECT = packet(SMFIR_REJECT)        # Postfix: 550 5.7.1 Command rejected
TEMPFAIL = packet(SMFIR_TEMPFAIL)    # Postfix: 451 4.7.1 Service unavailable - try again later
PROGRESS = packet(SMFIR_PROGRESS)    # restarts the MTA's timeout (LM smfi_progress)
SKIP = packet(SMFIR_SKIP)            # to a body chunk: no more chunks (needs SMFIP_SKIP)

# RFC 5322 s. 3.6.8 ftext: printable US-ASCII except ":".
_FTEXT = bytes(c for c in range(33, 127) if c != 0x3A)
# A macro list is split on commas and spaces by Postfix (milter.c milter_macro_lookup).
_NOT_IN_MACRO_NAME = (b"\0", b" ", b",")


def _cstring(value: bytes, what: str) -> bytes:
    if b"\0" in value:
        raise ValueError(f"{what} contains NUL: {value[:40]!r}")
    return value + b"\0"


def _field(name: bytes, value: bytes) -> bytes:
    """``name\\0value\\0`` of a header edit.  The MTA writes the value as it is: continuation
    lines are separated by a bare ``\\n`` (Postfix cleanup_out_header splits on it), so a CR
    would end up inside the queue file."""
    if not name or name.translate(None, _FTEXT):
        raise ValueError(f"not a header field name: {name[:40]!r}")
    if b"\r" in value:
        raise ValueError(f"header value with CR (fold with a bare LF): {value[:40]!r}")
    return name + b"\0" + _cstring(value, "header value")


def optneg_reply(version: int, actions: int, protocol: int,
                 macro_lists: Mapping[int, Iterable[bytes]] | None = None) -> bytes:
    """SMFIC_OPTNEG back to the MTA: our version, the SMFIF_* actions we will use, the SMFIP_*
    steps to leave out or not to wait for, then for each SMFIM_* stage in ``macro_lists`` the
    macro names we want there (libmilter milter_addsymlist: u32 stage, names joined by spaces,
    NUL).  This is how smfi_setsymlist reaches the MTA: no SMFIR_SETSYMLIST packet is ever
    sent.  Postfix then sends no macro of a stage left out (milter8.c: the lists start empty)."""
    payload = _OPTNEG.pack(version, actions, protocol)
    for stage, names in (macro_lists or {}).items():
        if not SMFIM_CONNECT <= stage <= SMFIM_EOH:
            raise ValueError(f"not an SMFIM_* macro stage: {stage}")
        names = list(names)
        if not names or any(not n or any(c in n for c in _NOT_IN_MACRO_NAME) for n in names):
            raise ValueError(f"bad macro names for stage {stage}: {names!r}")
        payload += _U32.pack(stage) + b" ".join(names) + b"\0"
    return packet(SMFIC_OPTNEG, payload)


def reply_code(code: int, text: str) -> bytes:
    """SMFIR_REPLYCODE: reject (5xx) or tempfail (4xx) with our own reply.

    ``text`` is what follows the code (``"5.7.1 DMARC policy ..."``); lines separated by
    ``\\n`` make a multi-line reply, sent as RFC 5321 s. 4.2.1 lines joined by CRLF, the code on
    each (``ddd-`` then ``ddd ``), the enhanced code of the first line repeated on the others
    as libmilter's smfi_setmlreply does.  Postfix checks exactly that shape and that an
    enhanced code has the reply's class (milter8.c milter8_valid_smtp_reply, 3.12); it takes
    the reply as a Sendmail format string, so ``%`` goes as ``%%`` (milter.md s. 1.4).
    """
    if not 400 <= code <= 599:
        raise ValueError(f"SMFIR_REPLYCODE needs a 4xx or 5xx code, not {code}")
    if "\r" in text or "\0" in text:
        raise ValueError(f"reply text with CR or NUL: {text[:60]!r}")
    lines = text.split("\n")
    enhanced = lines[0].split(" ", 1)[0]
    parts = enhanced.split(".")
    if not (len(parts) == 3 and all(p.isdigit() for p in parts)):
        enhanced = ""
    out = []
    for n, line in enumerate(lines):
        if enhanced and n and not line.startswith(enhanced + " "):
            line = f"{enhanced} {line}"
        if line[:1].isdigit() and line[0] != str(code)[0]:
            raise ValueError(f"reply line {line[:40]!r} starts with another class than {code}")
        out.append(f"{code}{' ' if n == len(lines) - 1 else '-'}{line}")
    return packet(SMFIR_REPLYCODE, "\r\n".join(out).replace("%", "%%").encode("utf-8") + b"\0")


def insert_header(index: int, name: bytes, value: bytes) -> bytes:
    """SMFIR_INSHEADER: u32 index, name, value.  0 is the very top, above Postfix's own
    Received:; 1 is right below it (milter.md s. 1.4, measured)."""
    return packet(SMFIR_INSHEADER, _U32.pack(index) + _field(name, value))


def change_header(index: int, name: bytes, value: bytes = b"") -> bytes:
    """SMFIR_CHGHEADER: u32 index (the nth field of that name, 1-based, as the milter saw
    them), name, value; an empty value deletes the field (Postfix cleanup_del_header)."""
    return packet(SMFIR_CHGHEADER, _U32.pack(index) + _field(name, value))


def add_header(name: bytes, value: bytes) -> bytes:
    """SMFIR_ADDHEADER: the field goes to the end of the header block."""
    return packet(SMFIR_ADDHEADER, _field(name, value))


def quarantine(reason: bytes) -> bytes:
    """SMFIR_QUARANTINE: Postfix puts the message on hold; the final accept must follow
    (milter8.c: no state change).  libmilter refuses an empty reason (smfi_quarantine)."""
    if not reason:
        raise ValueError("SMFIR_QUARANTINE needs a reason")
    return packet(SMFIR_QUARANTINE, _cstring(reason, "quarantine reason"))
