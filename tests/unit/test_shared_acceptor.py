"""SharedAcceptor: workers sharing one listening unix socket take its connections lowest rank
first.  Two acceptors in one loop stand for two workers (each on its own descriptor of the
socket, as after fork); real connections over a real socket."""
import asyncio
import os
import socket
import time

import pytest

from authfilter.milter.listener import SPILL_DELAY, SharedAcceptor


class Worker:
    """One rank: an acceptor on its own copy of the socket, the connections it took."""

    def __init__(self, listening: socket.socket, rank: int, *, last: bool = False) -> None:
        self.taken: list[tuple[socket.socket, float]] = []
        self.is_full = False
        own = socket.socket(fileno=os.dup(listening.fileno()))
        self.acceptor = SharedAcceptor(own, self._take, rank=rank, last=last,
                                       full=lambda: self.is_full)

    def _take(self, sock: socket.socket) -> None:
        self.taken.append((sock, time.monotonic()))


@pytest.fixture
def listening(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "milter.sock"))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


async def connect(listening: socket.socket) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, listening.getsockname())
    return client


async def settle(seconds: float = SPILL_DELAY * 3) -> None:
    await asyncio.sleep(seconds)


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_first_rank_takes_connections_while_it_can(listening):
    async def go():
        first, second = Worker(listening, 0), Worker(listening, 1, last=True)
        clients = [await connect(listening) for _ in range(5)]
        await settle()
        return len(first.taken), len(second.taken), clients
    first, second, _ = run(go())
    assert (first, second) == (5, 0)


def test_a_full_first_rank_leaves_connections_to_the_next_after_the_delay(listening):
    async def go():
        first, second = Worker(listening, 0), Worker(listening, 1, last=True)
        first.is_full = True
        asked = time.monotonic()
        client = await connect(listening)
        await settle()
        return first.taken, second.taken, asked, client
    first, second, asked, _ = run(go())
    assert first == [] and len(second) == 1
    assert second[0][1] - asked >= SPILL_DELAY * 0.9


def test_a_full_rank_takes_again_once_resumed(listening):
    async def go():
        first = Worker(listening, 0)                 # not last: nobody else takes
        first.is_full = True
        client = await connect(listening)
        await settle()
        before = len(first.taken)
        first.is_full = False
        first.acceptor.resume()
        await settle()
        return before, len(first.taken), client
    before, after, _ = run(go())
    assert (before, after) == (0, 1)


def test_the_last_rank_takes_connections_even_when_full(listening):
    async def go():
        last = Worker(listening, 1, last=True)
        last.is_full = True                          # it takes them and refuses them itself
        client = await connect(listening)
        await settle()
        return len(last.taken), client
    taken, _ = run(go())
    assert taken == 1


def test_a_closed_acceptor_takes_nothing(listening):
    async def go():
        first, second = Worker(listening, 0), Worker(listening, 1, last=True)
        first.acceptor.close()
        client = await connect(listening)
        await settle()
        return len(first.taken), len(second.taken), client
    first, second, _ = run(go())
    assert (first, second) == (0, 1)


def test_a_busy_rank_looks_again_without_a_session_ending(listening, monkeypatch):
    """Busy with something else than its milter sessions (the proxy, SPF threads): no session
    end will resume it, so it looks again by itself once the busy window has passed."""
    import authfilter.milter.listener as listener
    monkeypatch.setattr(listener, "BUSY_WINDOW", 0.05)

    async def go():
        first = Worker(listening, 0)
        first.acceptor._busy = True                  # as sampled over the last window
        first.acceptor._sampled = (time.monotonic(), time.process_time())
        client = await connect(listening)
        await asyncio.sleep(0.01)
        before = len(first.taken)
        await asyncio.sleep(0.2)                     # idle since: no longer busy
        return before, len(first.taken), client
    before, after, _ = run(go())
    assert (before, after) == (0, 1)
