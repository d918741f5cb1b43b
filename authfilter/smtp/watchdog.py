"""One timer for every timeout in a worker.

Sessions and upstream connections set ``deadline`` (a ``time.monotonic()`` value) while they
wait for their peer and clear it when the bytes arrive; a single periodic check tells the ones
past their deadline (``expire()``).  This replaces a timer object per command or reply, which
cost more CPU than the rest of a command's handling.  A timeout fires between T and T + tick
seconds after the wait began; tick is a fraction of the shortest configured timeout.
"""
from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Watched(Protocol):
    deadline: float | None

    def expire(self) -> None: ...


class Watchdog:
    def __init__(self, tick: float = 1.0) -> None:
        self.tick = tick
        self.members: set[Watched] = set()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, member: Watched) -> None:
        self.members.add(member)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.tick, self._check)

    def forget(self, member: Watched) -> None:
        self.members.discard(member)

    def _check(self) -> None:
        now = time.monotonic()
        for member in [m for m in self.members if m.deadline is not None and m.deadline <= now]:
            member.deadline = None
            member.expire()
        self._handle = asyncio.get_running_loop().call_later(self.tick, self._check) \
            if self.members else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def tick_for(*timeouts: float) -> float:
    """A check interval that keeps every timeout within a third of its length (at most 1 s)."""
    return max(0.01, min(1.0, min(timeouts) / 3))
