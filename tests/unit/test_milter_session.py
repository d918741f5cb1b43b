"""The milter driver without sockets: the captured Postfix stream fed to a MilterConnection on
a stand-in transport, in one piece and byte by byte, with the real pipeline on static DNS."""
from __future__ import annotations

import asyncio
import struct

from authfilter.config import from_dict
from authfilter.dns import StaticResolver
from authfilter.metrics import Metrics
from authfilter.milter.codec import (ACCEPT, CONTINUE, SMFIF_SETSYMLIST, change_header,
                                     optneg_reply)
from authfilter.milter.session import (ACTIONS, MACRO_LISTS, PROTOCOL, MilterConnection,
                                       MilterLimits)
from authfilter.pipeline import Pipeline
from authfilter.runtime import Runtime
from tests.unit.test_milter_codec import capture, capture_stream, mta_packet

AR = b"Authentication-Results"


class Transport:
    """What MilterConnection uses of an asyncio transport."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str):
        return None                                   # a unix socket: no TCP options


class Host:
    """A MilterServer stand-in: one pipeline, no limit."""

    def __init__(self, pipeline: Pipeline, limits: MilterLimits = MilterLimits()) -> None:
        self.pipeline = pipeline
        self.limits = limits
        self.draining = False
        self.ended: list[MilterConnection] = []

    def session_started(self, connection: MilterConnection) -> bool:
        return True

    def session_ended(self, connection: MilterConnection) -> None:
        self.ended.append(connection)


def pipeline() -> Pipeline:
    """SPF passes for example.org from the captured client, 127.0.0.1; authserv-id as in the
    capture, so both of its A-R fields are forged."""
    records = {("example.org", "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
               ("_dmarc.example.org", "TXT"): ["v=DMARC1; p=reject"]}
    config = from_dict({"general": {"authserv_id": "mx.probe.example"},
                        "policy": {"trusted_networks": []}})
    return Pipeline(Runtime.build(config, StaticResolver(records), metrics=Metrics()))


def replay(pieces: list[bytes], **host_settings) -> tuple[list[bytes], Transport, Host]:
    """The packets written for ``pieces`` fed one after the other, once every check is done."""
    async def run():
        host = Host(pipeline(), **host_settings)
        connection, transport = MilterConnection(host, role="inbound"), Transport()
        connection.connection_made(transport)
        for piece in pieces:
            connection.data_received(piece)
        while connection._finishing is not None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)                     # the log line comes after the reply
        return b"".join(transport.written), transport, host
    written, transport, host = asyncio.run(run())
    packets = []
    while written:
        (length,) = struct.unpack_from("!I", written)
        packets.append(written[:4 + length])
        written = written[4 + length:]
    return packets, transport, host


def test_the_captured_stream_gets_the_negotiation_and_the_edits():
    stream = capture_stream()
    packets, transport, _ = replay([stream])
    assert packets[0] == optneg_reply(6, ACTIONS | SMFIF_SETSYMLIST, PROTOCOL, MACRO_LISTS)
    assert packets[1:3] == [change_header(2, AR), change_header(1, AR)]   # both forged A-R
    assert packets[3][4:5] == b"i" and b"dmarc=pass" in packets[3]
    assert packets[4:] == [ACCEPT]                     # nothing for the ABORTs and QUIT
    assert transport.closed                            # QUIT
    assert replay([stream[i:i + 1] for i in range(len(stream))])[0] == packets


def test_an_mta_without_no_reply_steps_gets_continue_for_each_event():
    offer = mta_packet(b"O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF & ~0xFF000 & ~0x80))
    events = [mta_packet(c, d) for c, d in capture()[1:]]
    packets, _, _ = replay([offer] + events)
    answered = [c for c, _ in capture()[1:] if c in b"CHMRLNB"]           # DATA: NODATA
    assert packets[1:1 + len(answered)] == [CONTINUE] * len(answered)
    assert packets[-1] == ACCEPT


def test_events_after_the_end_of_message_wait_for_its_reply():
    stream = capture_stream()
    end = stream.index(mta_packet(b"E")) + len(mta_packet(b"E"))
    packets, transport, _ = replay([stream[:end], stream[end:]])      # ABORT, ABORT, QUIT
    assert packets[-1] == ACCEPT and transport.closed    # QUIT first would have lost the reply


def test_a_message_over_the_header_limit_is_tempfailed():
    packets, _, _ = replay([capture_stream()], limits=MilterLimits(max_headers=3))
    assert packets[1][4:5] == b"y" and packets[1][5:].startswith(b"451 4.3.4 ")
