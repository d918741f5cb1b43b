"""Workers sharing a listening socket take its connections lowest rank first.

Why not let the kernel spread them: on the peer harness (2 cores, Postfix on the same machine,
4 KB messages at concurrency 20) one worker taking the whole load spent 1.10-1.44 ms of CPU per
message and two workers sharing it evenly 1.54-1.66 ms, each waking up for fewer events with
colder caches.  So the load fills one worker, and the next one only takes connections when the
lower ranks cannot: at their session limit, busy, closed, or stopped.

The workers tell each other on an :class:`AcceptorBoard`; each one's :class:`SharedAcceptor`
stays off the socket while a lower rank says it takes the connections, so a higher rank is not
woken by every connection it leaves to a lower one (each wake-up cost about 0.15 ms of CPU on
the harness's virtual machine).
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

# A worker says on the board that it takes connections each time it accepts one, for STALE
# seconds ahead.  While a lower rank's word holds, a higher rank stays off the socket and looks
# at the board every TICK.  Where no lower rank's word holds (they are idle, or stopped: killed,
# SIGSTOP, a computation holding the loop), a higher rank watches the socket and takes a
# connection that is still waiting after SPILL_DELAY (+ SPILL_STEP per rank above 1), i.e. one
# that no lower rank came to take; where every lower rank says it takes none (full, busy,
# closing), at once.  An idle server has no timer running; a loaded one, one per spare rank.
STALE = 0.15
TICK = 0.05
SPILL_DELAY = 0.020
SPILL_STEP = 0.005
NOT_TAKING = -1.0              # the word of a rank that is full, busy or closing
# A worker whose process used more than this share of a core over the last BUSY_WINDOW seconds
# leaves new connections to the next rank, so that one worker is not loaded up to the point
# where its sessions wait on each other.
BUSY_SHARE = 0.75
BUSY_WINDOW = 1.0
ACCEPT_BATCH = 64              # connections taken per wake-up; the rest wait for the next turn
ACCEPT_RETRY = 0.1             # after accept() failed for want of descriptors or memory
TAKE, SPILL, STAND_BACK, OFF = "take", "spill", "stand back", "off"


class AcceptorBoard:
    """Where the workers sharing listening sockets say whether they take connections: per
    rank, the time (CLOCK_MONOTONIC, the same clock in every process of the host) until which
    it does, or :data:`NOT_TAKING`; 0 (or a time past) says nothing.  Anonymous shared memory:
    made before the workers are forked, it is the same board in all of them.  An aligned
    8-byte store is atomic, so a reader sees an old word or the new one, never a mix."""

    _SLOT = struct.Struct("d")

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks
        self._memory = mmap.mmap(-1, self._SLOT.size * ranks)      # MAP_SHARED, zeroed

    def post(self, rank: int, word: float) -> None:
        self._SLOT.pack_into(self._memory, rank * self._SLOT.size, word)

    def mode_for(self, rank: int, now: float) -> str:
        """What ``rank`` does with new connections, by the words of the ranks below it."""
        if not rank:
            return TAKE
        size = self._SLOT.size
        words = [self._SLOT.unpack_from(self._memory, r * size)[0] for r in range(rank)]
        if any(word > now for word in words):
            return STAND_BACK
        return TAKE if all(word == NOT_TAKING for word in words) else SPILL


class SharedAcceptor:
    """Takes connections from a listening socket that several workers share, lowest rank first
    (see :data:`STALE` for the rules).

    ``accept(sock)`` is given each new connection.  A worker that is ``full()`` (at its session
    limit) takes none until :meth:`resume`, one that is busy (:data:`BUSY_SHARE`) none for
    :data:`BUSY_WINDOW`; the exception is the last rank, which takes them all (and refuses
    those over its limit, as a single worker does).
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
        self._delay = SPILL_DELAY + (rank - 1) * SPILL_STEP
        self._full = full
        self._sampled = (time.monotonic(), time.process_time())
        self._busy = False
        self._mode = OFF
        self._watching: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._pause_until = 0.0                   # after accept() failed: not before then
        self._review()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def resume(self) -> None:
        """Take connections again if this worker has room now (a session ended)."""
        if self._mode == OFF and self._timer is None and not self._closed:
            self._review()

    def close(self) -> None:
        """Take no more connections, say so, and close this process's copy of the socket."""
        self._closed = True
        self._review()
        self._sock.close()

    def _review(self) -> None:
        """Decide the mode from this worker's state and the board, and set it up."""
        now = time.monotonic()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            mode = OFF
        elif now < self._pause_until:
            mode = OFF
            self._later(self._pause_until - now, self._review)
        elif not self._last and self._full():
            mode = OFF                              # resume() when a session ends
        elif not self._last and self._is_busy(now):
            mode = OFF                              # the busy part may not be milter sessions:
            self._later(BUSY_WINDOW, self._review)  # look again by itself
        else:
            mode = self._board.mode_for(self._rank, now)
        if mode == OFF:
            self._board.post(self._rank, NOT_TAKING)
        elif self._mode == OFF:
            self._board.post(self._rank, 0.0)       # no word, until it takes one
        if mode == STAND_BACK:
            self._later(TICK, self._review)
        self._watch({TAKE: self._take, SPILL: self._spill}.get(mode))
        self._mode = mode

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        self._timer = self._loop.call_later(delay, callback)

    def _watch(self, on_readable: Callable[[], None] | None) -> None:
        if on_readable == self._watching:          # the same bound method (or None)
            return
        if self._watching is not None:
            self._loop.remove_reader(self._fd)
        if on_readable is not None:
            self._loop.add_reader(self._fd, on_readable)
        self._watching = on_readable

    def _take(self) -> None:
        if self._rank and self._board.mode_for(self._rank, time.monotonic()) != TAKE:
            self._review()                          # a lower rank takes them again
            return
        self._take_waiting()

    def _spill(self) -> None:
        """A connection no lower rank has taken yet: take it if it still waits after the delay."""
        self._watch(None)                           # level-triggered: it would come back at once
        self._later(self._delay, self._after_delay)

    def _after_delay(self) -> None:
        self._timer = None
        if self._board.mode_for(self._rank, time.monotonic()) == STAND_BACK:
            self._review()
            return
        self._take_waiting()
        if self._mode == SPILL:
            self._watch(self._spill)

    def _take_waiting(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self._last and (self._full() or self._is_busy(time.monotonic())):
                self._review()          # the next rank takes them
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
            self._board.post(self._rank, time.monotonic() + STALE)
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
