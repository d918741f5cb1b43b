"""The proxy inside one process: listeners, the config generation in force, reload and drain.

The server is the :class:`~.session.SessionHost` of its sessions: it gives each the
:class:`~.generation.ProxyGeneration` in force when it starts, refuses new ones when full or
draining, and keeps the set of live sessions for the limit and for drain.  Listeners, worker
count and offload processes are fixed at start (changing them needs a restart; a reload says
so in the log).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from concurrent.futures import Executor

from ..config import Config
from ..dns import Resolver
from ..engine import resolver_from_config
from ..metrics import Metrics
from ..observers import Observer
from . import protocol
from .client_limits import ClientLimits
from .generation import ProxyGeneration
from .session import SmtpSession
from .watchdog import Watchdog, tick_for

log = logging.getLogger("authfilter.proxy")

LISTEN_BACKLOG = 512


def _tick(config: Config) -> float:
    p = config.proxy
    return tick_for(p.command_timeout, p.data_timeout, p.upstream_timeout)


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def bind_listener(address: str, *, reuse_port: bool) -> socket.socket:
    """A listening, non-blocking TCP socket; SO_REUSEPORT lets every worker process bind the
    same port and the kernel spread connections across them."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ProxyServer:
    """All listeners of one process.  ``start()``, then ``drain()`` to stop."""

    def __init__(self, config: Config, *, resolver: Resolver | None = None,
                 executor: Executor | None = None, workers: int = 1,
                 reuse_port: bool = False, observers: list[Observer] | None = None,
                 metrics: Metrics | None = None) -> None:
        self.resolver = resolver or resolver_from_config(config)
        self.metrics = metrics or Metrics()
        self.metrics.watch_resolver(self.resolver)
        self.executor = executor
        self.workers = workers
        self.reuse_port = reuse_port
        self.observers: list[Observer] = list(observers or [])
        self.watchdog = Watchdog(_tick(config))
        self.generation = ProxyGeneration.build(config, self.resolver, executor=executor,
                                     observers=self.observers, workers=workers,
                                     watchdog=self.watchdog, metrics=self.metrics,
                                     loop_shared=self.loop_shared)
        self.sessions: set[SmtpSession] = set()
        self._client_limits = ClientLimits()
        self._client_keys: dict[SmtpSession, tuple] = {}     # what each counted session holds
        self.draining = False
        self._servers: list[asyncio.base_events.Server] = []
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def config(self) -> Config:
        return self.generation.config

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for index, listener in enumerate(self.config.proxy.listeners):
            sock = bind_listener(listener.address, reuse_port=self.reuse_port)
            server = await loop.create_server(lambda i=index: SmtpSession(self, i), sock=sock,
                                              backlog=LISTEN_BACKLOG)
            self._servers.append(server)

    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each listener, in config order (port 0 = chosen by the OS)."""
        return [s.sockets[0].getsockname()[:2] for s in self._servers]

    # -- sessions ----------------------------------------------------------------------------
    def loop_shared(self) -> bool:
        """More than one session in this process: one big message's checks would stall the
        others if they ran on the event loop."""
        return len(self.sessions) > 1

    def refusal(self, session: SmtpSession) -> bytes | None:
        """The 421 ``session`` gets when we are full, its client or network holds its share
        of sessions already, or we are shutting down; else None (and it is counted)."""
        if self.draining:
            return protocol.SHUTTING_DOWN
        generation = self.generation
        if len(self.sessions) > generation.max_sessions:
            return protocol.TOO_MANY_SESSIONS
        keys = self._client_limits.admit(session.peer_ip, generation.max_sessions_per_client,
                                         generation.max_sessions_per_network,
                                         generation.xforward_hosts)
        if keys is None:
            log.info("421 to %s: too many sessions from its address or network", session.peer[0])
            return protocol.TOO_MANY_FROM_CLIENT
        self._client_keys[session] = keys
        return None

    def session_started(self, session: SmtpSession) -> None:
        self.metrics.session_opened()
        self.sessions.add(session)
        self.watchdog.watch(session)
        self._idle.clear()

    def session_ended(self, session: SmtpSession) -> None:
        self.metrics.session_closed()
        self._client_limits.release(self._client_keys.pop(session, ()))
        self.sessions.discard(session)
        self.watchdog.forget(session)
        if not self.sessions:
            self._idle.set()

    # -- reload and drain --------------------------------------------------------------------
    async def reload(self, config: Config) -> None:
        """Put a new config in force for new sessions.  Raises (and keeps the old one) when it
        cannot be built."""
        old = self.generation
        resolver = self.resolver if config.dns == old.config.dns else resolver_from_config(config)
        self.generation = ProxyGeneration.build(config, resolver, executor=self.executor,
                                     observers=self.observers, workers=self.workers,
                                     watchdog=self.watchdog, metrics=self.metrics,
                                     loop_shared=self.loop_shared)
        self.watchdog.tick = _tick(config)
        if resolver is not self.resolver:
            self.metrics.watch_resolver(resolver)
        self.resolver = resolver
        if [lc.address for lc in config.proxy.listeners] != [lc.address for lc in old.config.proxy.listeners]:
            log.warning("listener addresses changed: restart authfilter to apply them")
        old.close()

    async def drain(self, timeout: float) -> None:
        """Stop accepting; let transactions in progress finish for up to ``timeout`` seconds,
        then end the rest with 421."""
        self.draining = True
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.shut_down_if_idle()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning("%d sessions still busy after %g s; closing them", len(self.sessions), timeout)
            tasks = [s.task for s in self.sessions if s.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.generation.close()
        self.watchdog.close()
