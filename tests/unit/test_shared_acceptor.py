"""SharedAcceptor: workers sharing one listening socket take its connections lowest rank first,
telling each other on an AcceptorBoard.  Two acceptors in one loop stand for two workers (each
on its own descriptor of the socket, as after fork, on one board); real connections over a
real unix socket."""
import asyncio
import os
import socket
import time

import pytest

from authfilter.milter.acceptor import (SPILL_DELAY, STAND_BACK, STALE, TICK, AcceptorBoard,
                                       SharedAcceptor)


class Worker:
    """One rank: an acceptor on its own copy of the socket, the connections it took."""

    def __init__(self, listening: socket.socket, rank: int, board: AcceptorBoard) -> None:
        self.taken: list[tuple[socket.socket, float]] = []
        self.is_full = False
        own = socket.socket(fileno=os.dup(listening.fileno()))
        self.acceptor = SharedAcceptor(own, self._take, rank=rank, board=board,
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
        board = AcceptorBoard(2)
        first, second = Worker(listening, 0, board), Worker(listening, 1, board)
        clients = [await connect(listening) for _ in range(5)]
        await settle()
        return len(first.taken), len(second.taken), second.acceptor._mode, clients
    first, second, second_mode, _ = run(go())
    assert (first, second) == (5, 0)
    assert second_mode == STAND_BACK     # off the socket: not woken by the next ones


def test_idle_workers_run_no_timer_and_a_spare_one_stands_back_only_under_load(listening):
    async def go():
        board = AcceptorBoard(2)
        first, second = Worker(listening, 0, board), Worker(listening, 1, board)
        idle = (first.acceptor._timer, second.acceptor._timer)
        client = await connect(listening)
        await settle()
        loaded = second.acceptor._mode
        await asyncio.sleep(STALE + TICK * 2)          # the first's word runs out
        return idle, loaded, second.acceptor._mode, second.acceptor._timer, len(first.taken), \
            client
    idle, loaded, after, timer, taken, _ = run(go())
    assert idle == (None, None) and taken == 1
    assert loaded == STAND_BACK and after != STAND_BACK and timer is None


def test_a_full_first_rank_leaves_connections_to_the_next(listening):
    async def go():
        board = AcceptorBoard(2)
        first, second = Worker(listening, 0, board), Worker(listening, 1, board)
        first.is_full = True
        asked = time.monotonic()
        client = await connect(listening)
        await settle()
        return first.taken, second.taken, asked, client
    first, second, asked, _ = run(go())
    assert first == [] and len(second) == 1
    assert second[0][1] - asked < SPILL_DELAY + TICK     # the first said so at once


def test_a_full_rank_takes_again_once_resumed(listening):
    async def go():
        first = Worker(listening, 0, AcceptorBoard(2))    # not last: nobody else takes
        first.is_full = True
        client = await connect(listening)
        await settle()
        before = len(first.taken)
        first.is_full = False
        first.acceptor.resume()
        await asyncio.sleep(0.01)                          # well within a tick
        return before, len(first.taken), client
    before, after, _ = run(go())
    assert (before, after) == (0, 1)


def test_the_last_rank_takes_connections_even_when_full(listening):
    async def go():
        last = Worker(listening, 1, AcceptorBoard(2))
        last.is_full = True                          # it takes them and refuses them itself
        client = await connect(listening)
        await settle()
        return len(last.taken), client
    taken, _ = run(go())
    assert taken == 1


def test_a_closed_acceptor_takes_nothing_and_the_next_takes_over(listening):
    async def go():
        board = AcceptorBoard(2)
        first, second = Worker(listening, 0, board), Worker(listening, 1, board)
        first.acceptor.close()
        client = await connect(listening)
        await settle()
        return len(first.taken), len(second.taken), client
    first, second, _ = run(go())
    assert (first, second) == (0, 1)


def test_a_lower_rank_that_stops_saying_it_takes_them_is_taken_over(listening):
    """A worker that is killed, stopped or stuck no longer renews its word on the board: the
    next rank leaves the connections to it while its word holds, then takes them."""
    async def go():
        board = AcceptorBoard(2)
        board.post(0, time.monotonic() + STALE)      # said so, then went silent
        second = Worker(listening, 1, board)
        asked = time.monotonic()
        client = await connect(listening)
        await asyncio.sleep(STALE / 2)
        early = len(second.taken)
        await asyncio.sleep(STALE / 2 + TICK + SPILL_DELAY + 0.05)
        return early, second.taken, asked, client
    early, taken, asked, _ = run(go())
    assert early == 0 and len(taken) == 1
    assert STALE * 0.9 <= taken[0][1] - asked < STALE + TICK + SPILL_DELAY + 0.05


def test_a_busy_rank_looks_again_without_a_session_ending(listening, monkeypatch):
    """Busy with something else than its milter sessions (the proxy, SPF threads): no session
    end will resume it, so it looks again by itself once the busy window has passed."""
    import authfilter.milter.acceptor as acceptor
    monkeypatch.setattr(acceptor, "BUSY_WINDOW", 0.05)

    async def go():
        first = Worker(listening, 0, AcceptorBoard(2))
        first.acceptor._busy = True                  # as sampled over the last window
        first.acceptor._sampled = (time.monotonic(), time.process_time())
        first.acceptor._review()
        client = await connect(listening)
        await asyncio.sleep(0.01)
        before = len(first.taken)
        await asyncio.sleep(0.2)                     # idle since: no longer busy
        return before, len(first.taken), client
    before, after, _ = run(go())
    assert (before, after) == (0, 1)


def test_the_board_is_shared_with_forked_workers():
    board = AcceptorBoard(2)
    pid = os.fork()
    if pid == 0:                                      # the "worker" says it takes them
        board.post(0, time.monotonic() + 60)
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.mode_for(1, time.monotonic()) == STAND_BACK
