"""Fair sessions: one address (or one /24) cannot take every session, and trickling bytes
cannot stretch a command line or a DATA phase past its time limit.  Real sockets on loopback;
127.0.0.2 and 127.0.0.3 stand in for other clients of the same /24."""
import socket
import time

import pytest


def connect(proxy, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10, source_address=(source, 0))
    return s


def greeting(s: socket.socket) -> bytes:
    return s.recv(200)


@pytest.fixture
def counted(start_proxy):
    """A proxy that counts loopback clients (xforward_hosts would exempt them)."""
    def start(**limits):
        return start_proxy(xforward_hosts=[], **limits)
    return start


def test_one_address_gets_its_share_then_421_and_a_slot_when_one_ends(counted):
    proxy = counted(max_sessions_per_client=2, max_sessions_per_network=0)
    first, second = connect(proxy), connect(proxy)
    assert greeting(first).startswith(b"220 ") and greeting(second).startswith(b"220 ")
    third = connect(proxy)
    assert greeting(third).startswith(b"421 4.7.0 Too many connections from your address")
    other = connect(proxy, "127.0.0.2")                       # another client is welcome
    assert greeting(other).startswith(b"220 ")
    first.close()
    time.sleep(0.3)
    again = connect(proxy)
    assert greeting(again).startswith(b"220 ")
    for s in (second, third, other, again):
        s.close()


def test_one_network_gets_its_share(counted):
    proxy = counted(max_sessions_per_client=0, max_sessions_per_network=2)
    a, b = connect(proxy, "127.0.0.2"), connect(proxy, "127.0.0.3")
    assert greeting(a).startswith(b"220 ") and greeting(b).startswith(b"220 ")
    c = connect(proxy, "127.0.0.4")
    assert greeting(c).startswith(b"421 4.7.0 ")
    for s in (a, b, c):
        s.close()


def test_postfix_as_an_xforward_peer_is_never_refused_for_its_address(start_proxy):
    proxy = start_proxy(max_sessions_per_client=1)        # 127.0.0.0/8 is an xforward host
    sessions = [connect(proxy) for _ in range(5)]
    assert all(greeting(s).startswith(b"220 ") for s in sessions)
    for s in sessions:
        s.close()


def test_a_command_trickled_byte_by_byte_times_out(start_proxy):
    proxy = start_proxy(command_timeout=2.0)
    s = connect(proxy)
    assert greeting(s).startswith(b"220 ")
    started, reply = time.monotonic(), b""
    for byte in b"NOOP NOOP NOOP NOOP NOOP":                # one byte every 0.25 s, never a CRLF
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        s.settimeout(0.25)
        try:
            reply = s.recv(200)
            break
        except socket.timeout:
            continue
    assert reply.startswith(b"421 4.4.2"), reply
    assert time.monotonic() - started < 5                     # 2 s and the watchdog's tick
    s.close()


def test_a_data_phase_trickled_byte_by_byte_ends_at_its_deadline(start_proxy):
    proxy = start_proxy(data_deadline=2.0, data_timeout=60.0)
    s = connect(proxy)
    s.settimeout(10)
    assert greeting(s).startswith(b"220 ")
    s.sendall(b"EHLO client.example\r\n")
    assert s.recv(1000).startswith(b"250")
    for command in (b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n", b"DATA\r\n"):
        s.sendall(command)
        assert s.recv(200)[:1] in (b"2", b"3")
    started, reply = time.monotonic(), b""
    s.settimeout(0.25)
    for _ in range(40):                                       # a byte every 0.25 s: steady, slow
        try:
            s.sendall(b"x")
            reply = s.recv(200)
            break
        except socket.timeout:
            continue
        except OSError:
            break
    assert reply.startswith(b"421 4.4.2"), reply
    assert time.monotonic() - started < 6
    s.close()
