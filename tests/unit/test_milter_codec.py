"""The milter codec: every command decoded from any split, errors named, replies byte-exact.

Packets are written out here by hand from the layout (4-byte length of command + data, the
command byte, NUL-terminated strings, network-order integers; milter.md s. 1.1), never with
the encoder under test, and the constants are checked against libmilter's mfdef.h 8.40.
"""
from __future__ import annotations

import json
import random
import struct

import pytest

from authfilter.milter import codec
from authfilter.milter.codec import (ACCEPT, CONTINUE, MAX_PACKET, PROGRESS, REJECT, SKIP,
                                     TEMPFAIL, Abort, Body, Connect, Data, Decoder, EndOfHeaders,
                                     EndOfMessage, Header, Helo, Macro, MailFrom,
                                     MalformedPacket, OptNeg, PacketTooLarge, Quit,
                                     QuitNewConnection, RcptTo, Unknown, add_header,
                                     change_header, insert_header, optneg_reply, quarantine,
                                     reply_code)
from tests.conftest import testdata as conformance_file


def mta_packet(command: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("!I", len(payload) + 1) + command + payload


def capture() -> list[tuple[bytes, bytes]]:
    """The packets of postfix-3.7-event-capture.jsonl: one JSON array per packet, the command
    letter and the data with every byte as the code point of the same value."""
    path = conformance_file("milter", "postfix-3.7-event-capture.jsonl")
    return [(command.encode("ascii"), data.encode("latin-1"))
            for command, data in map(json.loads, path.read_text().splitlines())]


def capture_stream() -> bytes:
    return b"".join(mta_packet(command, data) for command, data in capture())


def decode(stream: bytes, **kwargs) -> list:
    return Decoder(**kwargs).feed(stream)


# -- the captured Postfix stream ------------------------------------------------------------
CAPTURED_HEADERS = [
    Header(b"Authentication-Results", b" mx.probe.example; dkim=pass (forged 1)"),
    Header(b"From", b" Alice <alice@example.org>"),
    Header(b"To", b" bob@dest.example"),
    Header(b"Authentication-Results", b" mx.probe.example; spf=pass (forged 2)"),
    Header(b"Subject", b" fwddel caf\xc3\xa9"),
    Header(b"X-Folded", b" first part\n\tsecond part"),
    Header(b"X-NoSpace", b"nospace"),
    Header(b"Message-ID", b" <p1@example.org>"),
    Header(b"Date", b" Wed,  2 Dec 2026 04:36:25 +0000 (UTC)"),
]


def test_the_captured_postfix_stream_decodes_to_these_events():
    events = decode(capture_stream())
    queue_id = Macro(b"L", {b"i": b"125EF2324F2"})
    assert events[:11] == [
        OptNeg(6, 0x1FF, 0x1FFFFF),
        Macro(b"C", {b"j": b"mx.probe.example", b"{daemon_name}": b"mx.probe.example",
                     b"{daemon_addr}": b"127.0.0.1", b"v": b"Postfix 3.7.11",
                     b"_": b"localhost [127.0.0.1]"}),
        Connect(b"localhost", b"4", 44390, b"127.0.0.1"),
        Macro(b"H", {}),
        Helo(b"client.example"),
        Macro(b"M", {b"{mail_addr}": b"alice@example.org", b"{mail_host}": b"example.org",
                     b"{mail_mailer}": b"discard"}),
        MailFrom([b"<alice@example.org>", b"size=332", b"SMTPUTF8", b"BODY=8BITMIME"]),
        Macro(b"R", {b"{rcpt_addr}": b"bob@dest.example", b"{rcpt_host}": b"dest.example",
                     b"{rcpt_mailer}": b"discard"}),
        RcptTo([b"<bob@dest.example>"]),
        Macro(b"T", {b"i": b"125EF2324F2"}),
        Data(),
    ]
    assert events[11:29] == [e for header in CAPTURED_HEADERS for e in (queue_id, header)]
    assert events[29:] == [
        Macro(b"N", {b"i": b"125EF2324F2"}), EndOfHeaders(),
        Macro(b"B", {b"i": b"125EF2324F2"}),
        Body(b"body line 1\r\n.dot line\r\nlast line no eol\r\n"),
        Macro(b"E", {b"i": b"125EF2324F2"}), EndOfMessage(),
        Abort(), Abort(), Quit(),
    ]
    assert len(events) == len(capture())


def test_any_split_gives_the_same_events():
    stream = capture_stream()
    whole = decode(stream)
    decoder = Decoder()
    assert [e for i in range(len(stream)) for e in decoder.feed(stream[i:i + 1])] == whole
    rng = random.Random(11)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 30)))
        decoder = Decoder()
        pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        assert [e for piece in pieces for e in decoder.feed(piece)] == whole, cuts


def test_a_packet_completed_and_the_next_ones_come_from_one_feed():
    first, rest = mta_packet(b"H", b"client.example\0"), mta_packet(b"A") + mta_packet(b"Q")
    decoder = Decoder()
    assert decoder.feed(first[:3]) == []                 # not even the length yet
    assert decoder.feed(first[3:9]) == []
    assert decoder.feed(first[9:] + rest + rest[:2]) == [Helo(b"client.example"), Abort(), Quit()]
    assert decoder.feed(memoryview(rest[2:])) == [Abort(), Quit()]     # any bytes-like


def test_identical_macro_packets_share_one_event():
    events = decode(mta_packet(b"D", b"Li\0Q1\0") * 2 + mta_packet(b"D", b"Li\0Q2\0"))
    assert events[0] is events[1] and events[2] == Macro(b"L", {b"i": b"Q2"})


# -- every command --------------------------------------------------------------------------
@pytest.mark.parametrize(("command", "payload", "event"), [
    (b"O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF), OptNeg(6, 0x1FF, 0x1FFFFF)),
    (b"O", struct.pack("!III", 2, 0, 0) + b"future", OptNeg(2, 0, 0)),     # libmilter: >= 12
    (b"D", b"C", Macro(b"C", {})),
    (b"D", b"M{auth_authen}\0bob\0{mail_addr}\0\0", Macro(b"M", {b"{auth_authen}": b"bob",
                                                                 b"{mail_addr}": b""})),
    (b"C", b"[192.0.2.1]\0" + b"4" + struct.pack("!H", 25) + b"192.0.2.1\0",
     Connect(b"[192.0.2.1]", b"4", 25, b"192.0.2.1")),
    (b"C", b"mx.example\0" + b"6" + struct.pack("!H", 65535) + b"2001:db8::1\0",
     Connect(b"mx.example", b"6", 65535, b"2001:db8::1")),
    (b"C", b"localhost\0" + b"L" + struct.pack("!H", 0) + b"/run/smtp.sock\0",
     Connect(b"localhost", b"L", 0, b"/run/smtp.sock")),
    (b"C", b"unknown\0U", Connect(b"unknown", b"U", None, None)),
    (b"H", b"client.example\0", Helo(b"client.example")),
    (b"M", b"<>\0", MailFrom([b"<>"])),
    (b"R", b"<bob@dest.example>\0NOTIFY=NEVER\0", RcptTo([b"<bob@dest.example>", b"NOTIFY=NEVER"])),
    (b"T", b"", Data()),
    (b"L", b"Subject\0\0", Header(b"Subject", b"")),
    (b"N", b"", EndOfHeaders()),
    (b"B", b"line\r\n", Body(b"line\r\n")),
    (b"E", b"", EndOfMessage()),
    (b"A", b"", Abort()),
    (b"Q", b"", Quit()),
    (b"K", b"", QuitNewConnection()),
    (b"U", b"XCLIENT NAME=x\0", Unknown(b"XCLIENT NAME=x")),
])
def test_every_command(command, payload, event):
    assert decode(mta_packet(command, payload)) == [event]


def test_a_full_size_body_chunk():
    chunk = bytes(range(256)) * 255 + b"\r\n" * 127 + b"x"          # MILTER_CHUNK_SIZE bytes
    assert len(chunk) == codec.MILTER_CHUNK_SIZE
    assert decode(mta_packet(b"B", chunk)) == [Body(chunk)]


def test_eight_bit_text_survives_as_bytes():
    latin1_subject, utf8_sender = b" caf\xe9 \xff\x80", b"caf\xc3\xa9@example.org"
    events = decode(mta_packet(b"D", b"M{mail_addr}\0" + utf8_sender + b"\0{auth_authen}\0\xfe\0")
                    + mta_packet(b"H", b"h\xc3\xa9lo.example\0")
                    + mta_packet(b"M", b"<" + utf8_sender + b">\0SMTPUTF8\0")
                    + mta_packet(b"L", b"Subject\0" + latin1_subject + b"\0"))
    assert events == [Macro(b"M", {b"{mail_addr}": utf8_sender, b"{auth_authen}": b"\xfe"}),
                      Helo(b"h\xc3\xa9lo.example"),
                      MailFrom([b"<" + utf8_sender + b">", b"SMTPUTF8"]),
                      Header(b"Subject", latin1_subject)]
    assert events[2].address == utf8_sender and events[2].parameters == [b"SMTPUTF8"]


def test_envelope_address_and_connect_ip():
    assert MailFrom([b"<>"]).address == b"" and RcptTo([b"bob@x"]).address == b"bob@x"
    assert str(Connect(b"h", b"4", 1, b"192.0.2.1").ip) == "192.0.2.1"
    assert str(Connect(b"h", b"6", 1, b"IPv6:2001:db8::1").ip) == "2001:db8::1"    # Sendmail
    assert Connect(b"h", b"6", 1, b"not an address").ip is None
    assert Connect(b"h", b"L", 0, b"/run/s").ip is None
    assert Connect(b"h", b"U", None, None).ip is None


# -- limits and malformed packets -----------------------------------------------------------
def test_an_oversized_length_is_refused_before_its_data_arrives():
    decoder = Decoder()
    with pytest.raises(PacketTooLarge, match=f"{MAX_PACKET + 1} bytes .* limit of {MAX_PACKET}"):
        decoder.feed(struct.pack("!I", MAX_PACKET + 1))
    assert decode(mta_packet(b"B", b"x" * (MAX_PACKET - 1))) == [Body(b"x" * (MAX_PACKET - 1))]
    with pytest.raises(PacketTooLarge):                   # the length split over two feeds
        decoder = Decoder(max_packet=100)
        decoder.feed(b"\0\0")
        decoder.feed(struct.pack("!I", 101)[2:])


@pytest.mark.parametrize(("stream", "problem"), [
    (b"\0\0\0\0", "length 0"),
    (mta_packet(b"Z"), r"unknown command byte b'Z'"),
    (mta_packet(b"O", b"\0" * 11), "SMFIC_OPTNEG: 11 bytes"),
    (mta_packet(b"D"), "SMFIC_MACRO: no stage"),
    (mta_packet(b"D", b"Ci\0"), "SMFIC_MACRO: macro b'i' has no value"),
    (mta_packet(b"D", b"Ci\0x"), "SMFIC_MACRO: data does not end in NUL"),
    (mta_packet(b"C", b"host"), "SMFIC_CONNECT: no host name"),
    (mta_packet(b"C", b"host\0X\0\0a\0"), "SMFIC_CONNECT: unknown address family b'X'"),
    (mta_packet(b"C", b"host\0" + b"4\0"), "SMFIC_CONNECT: no port"),
    (mta_packet(b"C", b"host\0" + b"4\0\x19" + b"1.2.3.4"), "SMFIC_CONNECT: data does not end"),
    (mta_packet(b"C", b"host\0Ux"), "SMFIC_CONNECT: data after family U"),
    (mta_packet(b"H", b"a\0b\0"), "SMFIC_HELO: 2 strings"),
    (mta_packet(b"H", b"client"), "SMFIC_HELO: data does not end in NUL"),
    (mta_packet(b"M"), "SMFIC_MAIL: data does not end in NUL"),
    (mta_packet(b"L", b"Subject\0x"), "SMFIC_HEADER"),
    (mta_packet(b"L", b"Subject\0x\0y\0"), "SMFIC_HEADER"),
    (mta_packet(b"L", b"\0x\0"), "SMFIC_HEADER"),
    (mta_packet(b"T", b"x"), "SMFIC_DATA: 1 unexpected bytes"),
    (mta_packet(b"E", b"last chunk"), "SMFIC_BODYEOB: 10 unexpected bytes"),
    (mta_packet(b"U", b"NOOP"), "SMFIC_UNKNOWN"),
])
def test_malformed_packets_name_the_problem(stream, problem):
    with pytest.raises(MalformedPacket, match=problem):
        decode(stream)


# -- constants and replies ------------------------------------------------------------------
MFDEF_8_40 = {      # libmilter include/libmilter/mfdef.h 8.40, mfapi.h
    "SMFIC_ABORT": b"A", "SMFIC_BODY": b"B", "SMFIC_CONNECT": b"C", "SMFIC_MACRO": b"D",
    "SMFIC_BODYEOB": b"E", "SMFIC_HELO": b"H", "SMFIC_QUIT_NC": b"K", "SMFIC_HEADER": b"L",
    "SMFIC_MAIL": b"M", "SMFIC_EOH": b"N", "SMFIC_OPTNEG": b"O", "SMFIC_QUIT": b"Q",
    "SMFIC_RCPT": b"R", "SMFIC_DATA": b"T", "SMFIC_UNKNOWN": b"U",
    "SMFIR_ACCEPT": b"a", "SMFIR_CONTINUE": b"c", "SMFIR_ADDHEADER": b"h",
    "SMFIR_INSHEADER": b"i", "SMFIR_CHGHEADER": b"m", "SMFIR_PROGRESS": b"p",
    "SMFIR_QUARANTINE": b"q", "SMFIR_REJECT": b"r", "SMFIR_SKIP": b"s", "SMFIR_TEMPFAIL": b"t",
    "SMFIR_REPLYCODE": b"y",
    "SMFIF_ADDHDRS": 0x01, "SMFIF_CHGBODY": 0x02, "SMFIF_ADDRCPT": 0x04, "SMFIF_DELRCPT": 0x08,
    "SMFIF_CHGHDRS": 0x10, "SMFIF_QUARANTINE": 0x20, "SMFIF_CHGFROM": 0x40,
    "SMFIF_ADDRCPT_PAR": 0x80, "SMFIF_SETSYMLIST": 0x100,
    "SMFIP_NOCONNECT": 0x1, "SMFIP_NOHELO": 0x2, "SMFIP_NOMAIL": 0x4, "SMFIP_NORCPT": 0x8,
    "SMFIP_NOBODY": 0x10, "SMFIP_NOHDRS": 0x20, "SMFIP_NOEOH": 0x40, "SMFIP_NR_HDR": 0x80,
    "SMFIP_NOUNKNOWN": 0x100, "SMFIP_NODATA": 0x200, "SMFIP_SKIP": 0x400,
    "SMFIP_RCPT_REJ": 0x800, "SMFIP_NR_CONN": 0x1000, "SMFIP_NR_HELO": 0x2000,
    "SMFIP_NR_MAIL": 0x4000, "SMFIP_NR_RCPT": 0x8000, "SMFIP_NR_DATA": 0x10000,
    "SMFIP_NR_UNKN": 0x20000, "SMFIP_NR_EOH": 0x40000, "SMFIP_NR_BODY": 0x80000,
    "SMFIP_HDR_LEADSPC": 0x100000,
    "SMFIM_CONNECT": 0, "SMFIM_HELO": 1, "SMFIM_ENVFROM": 2, "SMFIM_ENVRCPT": 3,
    "SMFIM_DATA": 4, "SMFIM_EOM": 5, "SMFIM_EOH": 6,
    "SMFIA_UNKNOWN": b"U", "SMFIA_UNIX": b"L", "SMFIA_INET": b"4", "SMFIA_INET6": b"6",
    "MILTER_LEN_BYTES": 4, "MILTER_CHUNK_SIZE": 65535, "SMFI_PROT_VERSION": 6,
}


def test_constants_are_libmilters():
    assert {name: getattr(codec, name) for name in MFDEF_8_40} == MFDEF_8_40
    flags = [v for k, v in MFDEF_8_40.items() if k.startswith("SMFIP_")]
    assert sum(flags) == 0x1FFFFF                         # SMFI_CURR_PROT: Postfix 3.7 offers it
    assert sum(v for k, v in MFDEF_8_40.items() if k.startswith("SMFIF_")) == 0x1FF


def test_replies_without_data():
    assert (CONTINUE, ACCEPT, REJECT, TEMPFAIL, PROGRESS, SKIP) == (
        b"\0\0\0\x01c", b"\0\0\0\x01a", b"\0\0\0\x01r", b"\0\0\0\x01t", b"\0\0\0\x01p",
        b"\0\0\0\x01s")


def test_optneg_reply_with_macro_lists():
    assert optneg_reply(6, 0x31, 0x1FF000) == mta_packet(b"O", struct.pack("!III", 6, 0x31,
                                                                           0x1FF000))
    reply = optneg_reply(6, 0x131, codec.SMFIP_HDR_LEADSPC,
                         {codec.SMFIM_CONNECT: [b"{daemon_name}", b"{client_addr}"],
                          codec.SMFIM_ENVFROM: [b"{auth_authen}", b"{i}"]})
    assert reply == mta_packet(b"O", struct.pack("!III", 6, 0x131, 0x100000)
                               + struct.pack("!I", 0) + b"{daemon_name} {client_addr}\0"
                               + struct.pack("!I", 2) + b"{auth_authen} {i}\0")
    for bad in ({7: [b"i"]}, {0: []}, {0: [b"{a} {b}"]}, {0: [b"a,b"]}, {0: [b""]}):
        with pytest.raises(ValueError):
            optneg_reply(6, 0, 0, bad)


def test_header_edits_layout():
    assert insert_header(0, b"Authentication-Results", b" mx; spf=pass\n\tsecond") == mta_packet(
        b"i", b"\0\0\0\0Authentication-Results\0 mx; spf=pass\n\tsecond\0")
    assert change_header(2, b"Authentication-Results") == mta_packet(
        b"m", b"\0\0\0\x02Authentication-Results\0\0")
    assert change_header(1, b"Subject", b" new") == mta_packet(b"m", b"\0\0\0\x01Subject\0 new\0")
    assert add_header(b"X-Probe", b" appended") == mta_packet(b"h", b"X-Probe\0 appended\0")
    assert quarantine(b"DMARC quarantine for example.org") == mta_packet(
        b"q", b"DMARC quarantine for example.org\0")
    for bad in (lambda: add_header(b"Bad Name", b"v"), lambda: add_header(b"A:B", b"v"),
                lambda: add_header(b"", b"v"), lambda: add_header(b"X", b"a\r\n\tb"),
                lambda: add_header(b"X", b"a\0b"), lambda: insert_header(0, b"X\xe9", b"v"),
                lambda: quarantine(b"")):
        with pytest.raises(ValueError):
            bad()


def postfix_accepts_reply(data: bytes) -> bool:
    """Postfix 3.12 milter8.c milter8_valid_smtp_reply, line by line."""
    text = data[:-1] if data.endswith(b"\0") else data
    if b"\0" in text:
        return False
    lines = text.split(b"\r\n")
    for n, line in enumerate(lines):
        final = n == len(lines) - 1
        if (len(line) < 4 or line[:1] not in (b"4", b"5") or not line[1:3].isdigit()
                or line[3:4] != (b" " if final else b"-") or b"\r" in line or b"\n" in line
                or (line[4:5].isdigit() and line[4:5] != line[:1])):
            return False
    return True


def test_reply_code_layout_escaping_and_multiple_lines():
    one = reply_code(550, "5.7.1 DMARC policy of example.org says reject")
    assert one == mta_packet(b"y", b"550 5.7.1 DMARC policy of example.org says reject\0")
    assert reply_code(451, "4.3.0 100% busy") == mta_packet(b"y", b"451 4.3.0 100%% busy\0")
    two = reply_code(550, "5.7.1 first line\nsecond line")
    assert two == mta_packet(b"y", b"550-5.7.1 first line\r\n550 5.7.1 second line\0")
    assert reply_code(421, "closing") == mta_packet(b"y", b"421 closing\0")
    for data in (one, two, reply_code(451, "4.7.1 a\n4.7.1 b\nc")):
        assert postfix_accepts_reply(data[5:])
    for code, text in ((250, "2.0.0 ok"), (550, "4.7.1 wrong class"), (550, "a\r\nb"),
                       (550, "a\0b"), (451, "5.7.1 x"), (550, "x\n4 y")):
        with pytest.raises(ValueError):
            reply_code(code, text)
