"""HAProxy PROXY protocol headers, versions 1 (text) and 2 (binary), without I/O.

A load balancer in front of the filter sends one header before any SMTP byte, naming the real
client.  :func:`parse` looks at the start of the receive buffer and returns the header and its
length, ``None`` while more bytes are needed, or raises :class:`ProxyProtocolError`.
Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt (sections 2.1 and 2.2).
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107                                   # s. 2.1: the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX = 16 + 4096                             # our cap on address block + TLVs


class ProxyProtocolError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """``source`` is None for v1 ``UNKNOWN``, v2 ``LOCAL`` or non-IP families: the connection's
    own addresses then apply (s. 2.1 and 2.2: health checks and the like)."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


def parse(buf: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    if len(buf) < 6:
        if V1_PREFIX.startswith(bytes(buf)) or V2_SIGNATURE.startswith(bytes(buf)):
            return None
        raise ProxyProtocolError("no PROXY protocol header")
    if bytes(buf[:6]) == V1_PREFIX:
        return _parse_v1(buf)
    if V2_SIGNATURE.startswith(bytes(buf[:12])):
        return _parse_v2(buf)
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(buf: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyProtocolError("PROXY v1 line too long")
        return None
    words = bytes(buf[:end]).decode("ascii", "replace").split(" ")
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(1, None, None), end + 2
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"bad PROXY v1 line: {bytes(buf[:end])[:60]!r}")
    family = 4 if words[1] == "TCP4" else 6
    src, dst = _ip(words[2], family), _ip(words[3], family)
    return ProxyHeader(1, (src, _port(words[4])), (dst, _port(words[5]))), end + 2


def _parse_v2(buf: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    if len(buf) < 16:
        return None
    ver_cmd, fam, length = struct.unpack_from("!BBH", buf, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2: unsupported version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2: unknown command {command}")
    total = 16 + length
    if total > V2_MAX:
        raise ProxyProtocolError("PROXY v2 header too long")
    if len(buf) < total:
        return None
    if command == 0:                                   # LOCAL: the proxy's own connection
        return ProxyHeader(2, None, None), total
    block = bytes(buf[16:total])
    family, transport = fam >> 4, fam & 0x0F
    if transport not in (0, 1):                        # only STREAM (or UNSPEC) makes sense here
        raise ProxyProtocolError("PROXY v2: not a stream connection")
    if family == 1:                                    # AF_INET: 4 + 4 + 2 + 2 bytes
        if len(block) < 12:
            raise ProxyProtocolError("PROXY v2: short IPv4 address block")
        src, dst = ipaddress.IPv4Address(block[0:4]), ipaddress.IPv4Address(block[4:8])
        sport, dport = struct.unpack_from("!HH", block, 8)
    elif family == 2:                                  # AF_INET6: 16 + 16 + 2 + 2 bytes
        if len(block) < 36:
            raise ProxyProtocolError("PROXY v2: short IPv6 address block")
        src, dst = ipaddress.IPv6Address(block[0:16]), ipaddress.IPv6Address(block[16:32])
        sport, dport = struct.unpack_from("!HH", block, 32)
    else:                                              # UNSPEC or AF_UNIX: no IP to use
        return ProxyHeader(2, None, None), total
    return ProxyHeader(2, (str(src), sport), (str(dst), dport)), total


def _ip(text: str, family: int) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1: bad address {text[:45]!r}") from None
    if addr.version != family:
        raise ProxyProtocolError(f"PROXY v1: {text} is not IPv{family}")
    return str(addr)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535 or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"PROXY v1: bad port {text[:8]!r}")
    return int(text)


def build_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header (for tests and tools)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def build_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v2 PROXY header over TCP (for tests and tools)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    fam = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, fam, len(block)) + block
