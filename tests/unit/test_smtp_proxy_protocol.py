"""PROXY protocol v1 and v2 headers (HAProxy proxy-protocol.txt s. 2.1, 2.2)."""
from __future__ import annotations

import struct

import pytest

from authfilter.smtp.proxy_protocol import (V2_SIGNATURE, ProxyHeader, ProxyProtocolError,
                                            build_v1, build_v2, parse)


def test_v1_tcp4_and_tcp6():
    raw = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO"
    assert parse(raw) == (ProxyHeader(1, ("192.0.2.1", 56324), ("198.51.100.2", 25)), len(raw) - 4)
    raw = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"
    assert parse(raw)[0].source == ("2001:db8::1", 1)


def test_v1_unknown_means_use_the_connection():
    assert parse(b"PROXY UNKNOWN\r\n") == (ProxyHeader(1, None, None), 15)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")[0].source is None


def test_partial_headers_need_more():
    full = build_v1(("192.0.2.1", 1), ("192.0.2.2", 2))
    for cut in range(len(full)):
        assert parse(full[:cut]) is None
    v2 = build_v2(("192.0.2.1", 1), ("192.0.2.2", 2))
    for cut in range(len(v2)):
        assert parse(v2[:cut]) is None


@pytest.mark.parametrize("raw", [
    b"EHLO client\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
    b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 025 25\r\n",
    b"PROXY TCP5 192.0.2.1 198.51.100.2 1 25\r\n",
    b"PROXY " + b"x" * 200,
])
def test_bad_v1(raw):
    with pytest.raises(ProxyProtocolError):
        parse(raw)


def test_v2_ipv4_ipv6_with_tlvs():
    raw = build_v2(("203.0.113.7", 5555), ("192.0.2.25", 25))
    assert parse(raw + b"EHLO") == (ProxyHeader(2, ("203.0.113.7", 5555), ("192.0.2.25", 25)), len(raw))
    raw = build_v2(("2001:db8::7", 1), ("2001:db8::25", 25))
    assert parse(raw)[0].source == ("2001:db8::7", 1)
    tlv = b"\x04\x00\x03abc"                     # a NOOP TLV after the addresses: skipped
    head = raw[:14] + struct.pack("!H", 36 + len(tlv))
    assert parse(head + raw[16:] + tlv)[1] == len(raw) + len(tlv)


def test_v2_local_and_unspec_use_the_connection():
    local = V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    assert parse(local) == (ProxyHeader(2, None, None), 16)
    unix = V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", 216) + b"\x00" * 216
    assert parse(unix)[0].source is None


@pytest.mark.parametrize("raw", [
    V2_SIGNATURE + bytes([0x31, 0x11]) + struct.pack("!H", 12) + b"\x00" * 12,   # version 3
    V2_SIGNATURE + bytes([0x2F, 0x11]) + struct.pack("!H", 12) + b"\x00" * 12,   # command 15
    V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 4) + b"\x00" * 4,     # short block
    V2_SIGNATURE + bytes([0x21, 0x12]) + struct.pack("!H", 12) + b"\x00" * 12,   # datagram
    V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 60000),              # too long
])
def test_bad_v2(raw):
    with pytest.raises(ProxyProtocolError):
        parse(raw)
