"""Workers sharing a listening socket take its connections lowest rank first.

Why not let the kernel spread them: on the peer harness (2 cores, Postfix on the same machine,
4 KB messages at concurrency 20) one worker taking the whole load spent 1.10-1.44 ms of CPU per
message and two workers sharing it evenly 1.54-1.66 ms, each waking up for fewer events with
colder caches.  So the load fills one worker, and the next one only takes connections when the
lower ranks cannot: at their session limit, busy, closed, or stopped.

The workers tell each other on an :class:`AcceptorBoard`; each one's :class:`SharedAcceptor`
watches the socket only while no lower rank says it takes the connections, so a higher rank
is not woken by connections it leaves to a lower one.
"""
from __future__ import annotations

import asyncio
import logging
import mmap
import socket
import struct
import time
from typing import Callable

log = logging.getLogger("authfilter.milter")

# A worker that takes connections says so on the board every TICK seconds, for STALE seconds
# ahead; a higher rank looks at the board every TICK.  A lower rank that fills up, gets busy or
# closes says so at once, and the next rank takes over within a TICK; one that stops saying
# anything (killed, SIGSTOP, a computation that holds its loop) within STALE + TICK.  Both
# are short against Postfix's milter_connect_timeout (30 s); 25 wake-ups a second per worker
# cost nothing measurable.
TICK = 0.04
STALE = 0.12
# A worker whose process used more than this share of a core over the last BUSY_WINDOW seconds
# leaves new connections to the next rank, so that one worker is not loaded up to the point
# where its sessions wait on each other.
BUSY_SHARE = 0.75
BUSY_WINDOW = 1.0
ACCEPT_BATCH = 64              # connections taken per wake-up; the rest wait for the next turn
ACCEPT_RETRY = 0.1             # after accept() failed for want of descriptors or memory


class AcceptorBoard:
    """Where the workers sharing listening sockets say whether they take connections: per
    rank, the time (CLOCK_MONOTONIC, the same clock in every process of the host) until which
    it does, 0 when it does not.  Anonymous shared memory: made before the workers are
    forked, it is the same board in all of them.  An aligned 8-byte store is atomic, so a
    reader sees an old time or the new one, never a mix."""

    _SLOT = struct.Struct("d")

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks
        self._memory = mmap.mmap(-1, self._SLOT.size * ranks)      # MAP_SHARED, zeroed

    def post(self, rank: int, until: float) -> None:
        self._SLOT.pack_into(self._memory, rank * self._SLOT.size, until)

    def taken_below(self, rank: int, now: float) -> bool:
        """Whether a rank below ``rank`` takes connections at ``now``."""
        unpack, size = self._SLOT.unpack_from, self._SLOT.size
        return any(unpack(self._memory, r * size)[0] > now for r in range(rank))


class SharedAcceptor:
    """Takes connections from a listening socket that several workers share, lowest rank first.

    ``accept(sock)`` is given each new connection.  The acceptor watches the socket, and says
    so on ``board``, while this worker can take connections and no lower rank says it does;
    ``full()`` (at the session limit) stops it until :meth:`resume`, being busy
    (:data:`BUSY_SHARE`) for :data:`BUSY_WINDOW`.  The last rank takes connections even when
    full (and refuses those over its limit, as a single worker does).
    """

    def __init__(self, sock: socket.socket, accept: Callable[[socket.socket], None], *,
                 rank: int, board: AcceptorBoard, full: Callable[[], bool]) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._accept = accept
        self._rank = rank
        self._board = board
        self._last = rank == board.ranks - 1
        self._full = full
        self._sampled = (time.monotonic(), time.process_time())
        self._busy = False
        self._watching = False
        self._closed = False
        self._pause_until = 0.0                   # after accept() failed: not before then
        self._timer: asyncio.TimerHandle | None = None
        self._tick()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def resume(self) -> None:
        """Take connections again if this worker has room now (a session ended)."""
        if not self._watching:
            self._review()

    def close(self) -> None:
        """Take no more connections, say so, and close this process's copy of the socket."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._review()
        self._sock.close()

    def _tick(self) -> None:
        self._review()
        if not self._closed:
            self._timer = self._loop.call_later(TICK, self._tick)

    def _review(self) -> None:
        """Watch the socket or not, and post it on the board."""
        now = time.monotonic()
        taking = (not self._closed and now >= self._pause_until
                  and (self._last or not (self._full() or self._is_busy(now)))
                  and not self._board.taken_below(self._rank, now))
        if taking and not self._watching:
            self._loop.add_reader(self._fd, self._take)
        elif self._watching and not taking:
            self._loop.remove_reader(self._fd)
        self._watching = taking
        self._board.post(self._rank, now + STALE if taking else 0.0)

    def _take(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self._last and self._full():
                self._review()          # the next rank takes them; resume() when one ends
                return
            try:
                connection, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return                  # another worker took it, or the client gave up
            except OSError as exc:      # EMFILE, ENOBUFS...: the others may still have room
                log.warning("milter: cannot accept a connection: %s", exc)
                self._pause_until = time.monotonic() + ACCEPT_RETRY
                self._review()
                return
            self._accept(connection)

    def _is_busy(self, now: float) -> bool:
        """Whether this process used more than BUSY_SHARE of a core lately (sampled at most
        once per BUSY_WINDOW)."""
        then, cpu_then = self._sampled
        if now - then >= BUSY_WINDOW:
            cpu = time.process_time()
            self._busy = (cpu - cpu_then) > BUSY_SHARE * (now - then)
            self._sampled = (now, cpu)
        return self._busy
