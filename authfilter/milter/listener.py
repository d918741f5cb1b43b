"""The milter front-end inside one process: listeners, the pipeline in force, limits, drain.

:class:`MilterServer` is the :class:`~.session.ConnectionHost` of its connections: it gives
each the pipeline in force when it connects (kept for its whole life, so a reload never
disturbs a message in flight), refuses connections over ``max_sessions`` or while draining
(closed at once: Postfix applies ``milter_default_action``, as for a milter that is down), and
keeps the set of live connections for the limit and for drain.  One watchdog timer serves the
idle timeouts and progress replies of every connection (:mod:`authfilter.smtp.watchdog`).

Addresses: ``unix:/path`` (the default shape, milter.md trap 7: no TCP stall, and a chrooted
smtpd finds it under the queue directory) or ``HOST:PORT`` / ``[v6]:PORT`` (TCP, with
TCP_NODELAY and TCP_QUICKACK set by each connection).  A unix socket is created with
``socket_mode`` and, when given, ``socket_group``, so that the ``postfix`` user can connect
(pymilter's sockets follow the umask, and Postfix could not connect, milter.md s. 2.2); a
stale socket file left by a dead process is removed, anything else at the path (a live
socket, a symlink, a file) is refused.

Several workers share one socket per listener, unix or TCP (bound by the supervisor); a
:class:`~.acceptor.SharedAcceptor` in each makes the connections fill the first worker and
spill to the next only when it is full, busy or stopped, instead of spreading them evenly.
"""
from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import socket
import stat
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from ..metrics import Metrics
from ..pipeline import Pipeline
from ..results import Role
from ..smtp.server import LISTEN_BACKLOG, bind_listener
from ..smtp.watchdog import Watchdog, tick_for
from .acceptor import AcceptorBoard, SharedAcceptor
from .session import MilterConnection, MilterLimits

log = logging.getLogger("authfilter.milter")

UNIX_PREFIX = "unix:"
# From Python 3.13 closing a unix server unlinks its socket file (cleanup_socket); the file is
# ours to remove (drain), and one bound by a supervisor is shared by every worker.
_KEEP_FILE = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}


@dataclass(frozen=True, slots=True)
class MilterListener:
    """One listening address and what is done with the mail that comes through it.

    ``role``: ``inbound`` (verify, apply the policy, A-R), ``submission`` (sign; Postfix's
    submission service), ``local`` (``non_smtpd_milters``: sign, never refuse).  ``arc_seal``:
    inbound mail gets our ARC set.  ``socket_mode`` / ``socket_group``: of a unix socket.
    """

    address: str
    role: Role = "inbound"
    arc_seal: bool = False
    socket_mode: int = 0o660
    socket_group: str | None = None


def bind_milter_socket(listener: MilterListener) -> socket.socket:
    """A listening, non-blocking socket for ``listener.address``.  For several worker
    processes, bind it once before forking and give it to each :class:`MilterServer`
    (``sockets=``), which then takes its connections through a :class:`SharedAcceptor`."""
    if listener.address.startswith(UNIX_PREFIX):
        return _bind_unix(listener.address[len(UNIX_PREFIX):], listener.socket_mode,
                          listener.socket_group)
    return bind_listener(listener.address, reuse_port=False)


POSTFIX_GROUP = "postfix"


def socket_gid(group: str | None) -> int:
    """The group a unix socket gets: ``group`` when given; else Postfix's group when we may
    give the socket to it (as root, or as one of its members), so that the ``postfix`` user can
    connect out of the box; else ours (-1: unchanged; ``authfilter install-service`` then adds
    the postfix user to our group)."""
    if group is not None:
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(errno.EINVAL, f"no group {group!r} for the milter socket") from None
    try:
        postfix = grp.getgrnam(POSTFIX_GROUP).gr_gid
    except KeyError:
        return -1
    if os.geteuid() == 0 or postfix in os.getgroups():
        return postfix
    return -1


def _bind_unix(path: str, mode: int, group: str | None) -> socket.socket:
    gid = socket_gid(group)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(path)
        except OSError as exc:          # e.g. no /run/authfilter outside systemd: say where
            raise OSError(exc.errno, f"{UNIX_PREFIX}{path}: {exc.strerror}") from None
        # Not listening yet, so nobody can connect while the mode is still the umask's.
        os.chmod(path, mode)
        if gid != -1:
            os.chown(path, -1, gid)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _remove_stale(path: str) -> None:
    """Unlink a socket file nobody listens on (a dead process's); refuse anything else."""
    try:
        info = os.lstat(path)                   # lstat: a symlink is looked at, never followed
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not touching it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
    raise OSError(errno.EADDRINUSE, f"another process listens on {path}")


def socket_address(sock: socket.socket) -> str:
    """The address a bound socket listens on, in the listener's syntax."""
    if sock.family == socket.AF_UNIX:
        return UNIX_PREFIX + sock.getsockname()
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MilterServer:
    """All milter listeners of one process.  ``start()``, then ``drain()`` to stop.

    ``pipeline``: the pipeline, or a callable giving the one in force (asked at each new
    connection); :meth:`reload` replaces either.  ``max_sessions``: connections of this
    process (each carries one SMTP session of Postfix).  ``sockets``: per listener, a socket
    already bound with :func:`bind_milter_socket` (None: bound by :meth:`start`); ``rank``
    of ``ranks``: this worker's place among the workers sharing those sockets
    (:class:`~.acceptor.SharedAcceptor`), who tell each other on ``board`` (made before they
    were forked).  ``watchdog``: shared with other front-ends of the process, else the
    server's own.
    """

    def __init__(self, listeners: Sequence[MilterListener],
                 pipeline: Pipeline | Callable[[], Pipeline], *, metrics: Metrics,
                 limits: MilterLimits = MilterLimits(), max_sessions: int = 200,
                 sockets: Sequence[socket.socket | None] | None = None,
                 rank: int = 0, ranks: int = 1, board: AcceptorBoard | None = None,
                 watchdog: Watchdog | None = None) -> None:
        self.listeners = list(listeners)
        self._pipeline = _in_force(pipeline)
        self.metrics = metrics
        self.limits = limits
        self.max_sessions = max_sessions
        self._given = list(sockets) if sockets is not None else [None] * len(self.listeners)
        if len(self._given) != len(self.listeners):
            raise ValueError(f"{len(self._given)} sockets for {len(self.listeners)} listeners")
        self._own_watchdog = watchdog is None
        self.watchdog = watchdog or Watchdog(tick_for(limits.progress_interval,
                                                      limits.idle_timeout))
        self.sessions: set[MilterConnection] = set()
        self.draining = False
        self.rank, self.ranks = rank, ranks
        self.board = board or AcceptorBoard(ranks)
        self._servers: list[asyncio.base_events.Server | SharedAcceptor] = []
        self._acceptors: list[SharedAcceptor] = []
        self._accepting: set[asyncio.Task] = set()    # accepted, not yet counted in sessions
        self._created: list[tuple[str, int]] = []    # unix sockets we made: path, inode
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listener, given in zip(self.listeners, self._given):
            sock = given or bind_milter_socket(listener)
            if given is None and sock.family == socket.AF_UNIX:
                path = sock.getsockname()
                self._created.append((path, os.stat(path).st_ino))

            def connection(listener: MilterListener = listener) -> MilterConnection:
                return MilterConnection(self, role=listener.role, arc_seal=listener.arc_seal)

            if given is not None and self.ranks > 1:
                server = SharedAcceptor(given, lambda c, f=connection: self._connect(c, f),
                                        rank=self.rank, board=self.board, full=self._full)
                self._acceptors.append(server)
            elif sock.family == socket.AF_UNIX:
                server = await loop.create_unix_server(connection, sock=sock,
                                                       backlog=LISTEN_BACKLOG, **_KEEP_FILE)
            else:
                server = await loop.create_server(connection, sock=sock, backlog=LISTEN_BACKLOG)
            self._servers.append(server)

    def addresses(self) -> list[str]:
        """The bound address of each listener, in order (a TCP port 0 resolved)."""
        return [socket_address(s.sockets[0]) for s in self._servers]

    # -- connections -------------------------------------------------------------------------
    def _full(self) -> bool:
        return self.draining or len(self.sessions) + len(self._accepting) >= self.max_sessions

    def _connect(self, sock: socket.socket,
                 factory: Callable[[], MilterConnection]) -> None:
        """Give a connection a :class:`SharedAcceptor` took to a new MilterConnection."""
        sock.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._connected(sock, factory))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    async def _connected(self, sock: socket.socket,
                         factory: Callable[[], MilterConnection]) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(factory, sock)
        except OSError as exc:
            log.warning("milter: cannot set up an accepted connection: %s", exc)
            sock.close()

    def loop_shared(self) -> bool:
        """More than one connection in this process (see :class:`~authfilter.engine.Engine`)."""
        return len(self.sessions) > 1

    def session_started(self, connection: MilterConnection) -> bool:
        if self.draining:
            return False
        if len(self.sessions) >= self.max_sessions:
            log.warning("milter: %d connections open, the limit; refusing one (Postfix applies "
                        "milter_default_action)", len(self.sessions))
            return False
        self.metrics.session_opened()
        self.sessions.add(connection)
        self.watchdog.watch(connection)
        self._idle.clear()
        return True

    def session_ended(self, connection: MilterConnection) -> None:
        self.metrics.session_closed()
        self.sessions.discard(connection)
        self.watchdog.forget(connection)
        if not self.sessions:
            self._idle.set()
        for acceptor in self._acceptors:
            acceptor.resume()

    # -- reload and drain --------------------------------------------------------------------
    def reload(self, pipeline: Pipeline | Callable[[], Pipeline]) -> None:
        """Put ``pipeline`` in force for connections made from now on."""
        self._pipeline = _in_force(pipeline)

    async def drain(self, timeout: float) -> None:
        """Stop accepting; idle connections close now, the others once their current message
        is answered, for up to ``timeout`` seconds; then a message still being checked gets
        451 (accept in the local role) and every connection closes."""
        self.draining = True
        for server in self._servers:
            server.close()
        for connection in list(self.sessions):
            connection.close_if_idle()       # the busy ones close after their message's reply
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning("milter: %d connections still busy after %g s; closing them",
                        len(self.sessions), timeout)
            await asyncio.gather(*(c.stop() for c in list(self.sessions)))
            try:                             # their connection_lost comes in a loop turn or two
                async with asyncio.timeout(1.0):
                    await self._idle.wait()
            except TimeoutError:
                pass
        for path, inode in self._created:
            _unlink_if_ours(path, inode)
        if self._own_watchdog:
            self.watchdog.close()


def _in_force(pipeline: Pipeline | Callable[[], Pipeline]) -> Callable[[], Pipeline]:
    return pipeline if callable(pipeline) else (lambda: pipeline)


def _unlink_if_ours(path: str, inode: int) -> None:
    """Remove the socket file we created, unless another process has replaced it since."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
