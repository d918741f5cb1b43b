"""The proxy's side of one config generation: what every session started under it shares.

A :class:`ProxyGeneration` is everything derived from one config: the pipeline on its
:class:`~authfilter.runtime.Runtime` (policy, engine, signer, sealer), upstream pools, TLS
contexts, the peers trusted to send XFORWARD or a PROXY protocol header.  Sessions keep the
generation they started with, so SIGHUP swaps in a new one (:meth:`.server.ProxyServer.reload`)
without disturbing messages in flight.
"""
from __future__ import annotations

import ipaddress
import math
import ssl
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

from ..config import Config, ListenerConfig
from ..dns import Resolver
from ..metrics import Metrics
from ..observers import Observer
from ..pipeline import Pipeline
from ..runtime import Runtime
from .upstream import UpstreamPool
from .watchdog import Watchdog


class NetworkSet:
    """IP networks, asked whether an address is in one of them."""

    def __init__(self, networks: list[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def contains(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


def tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    """A server context when the listener has a certificate (RFC 3207 STARTTLS)."""
    if not listener.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(listener.tls_cert, listener.tls_key or None)
    return context


def share(limit: int, workers: int) -> int:
    """One worker's share of a limit of all workers together (0 = no limit): the kernel
    spreads connections over the workers."""
    return 0 if limit <= 0 else max(1, math.ceil(limit / workers))


@dataclass
class ProxyGeneration:
    """The proxy's side of one config generation: the pipeline on its :class:`Runtime`, and
    the listeners' TLS contexts, upstream pools and trusted peers."""

    runtime: Runtime
    pipeline: Pipeline
    hostname: str
    xforward_hosts: NetworkSet
    proxy_protocol_hosts: NetworkSet
    max_sessions: int
    max_sessions_per_client: int            # this worker's shares (0 = no limit)
    max_sessions_per_network: int
    _tls: list[ssl.SSLContext | None] = field(default_factory=list)
    _pools: list[UpstreamPool] = field(default_factory=list)

    @classmethod
    def build(cls, config: Config, resolver: Resolver, *, executor: Executor | None,
              observers: list[Observer], workers: int, watchdog: Watchdog,
              metrics: Metrics, loop_shared: Callable[[], bool]) -> "ProxyGeneration":
        """Raises ConfigError-like exceptions (PolicyError, OSError, SigningConfigError) when
        the config cannot be put into force.  ``loop_shared``: see :class:`Engine`."""
        runtime = Runtime.build(config, resolver, executor=executor, observers=observers,
                                metrics=metrics, loop_shared=loop_shared)
        proxy = config.proxy
        hostname = proxy.hostname or runtime.authserv_id
        pools: dict[str, UpstreamPool] = {}
        for lc in proxy.listeners:
            address = lc.upstream or proxy.upstream
            if address not in pools:
                pools[address] = UpstreamPool(address, hostname, proxy.upstream_timeout,
                                              proxy.upstream_idle, watchdog)
        return cls(
            runtime=runtime,
            pipeline=Pipeline(runtime),
            hostname=hostname,
            xforward_hosts=NetworkSet(proxy.xforward_hosts),
            proxy_protocol_hosts=NetworkSet(proxy.proxy_protocol_hosts),
            max_sessions=max(1, math.ceil(proxy.max_sessions / workers)),
            max_sessions_per_client=share(proxy.max_sessions_per_client, workers),
            max_sessions_per_network=share(proxy.max_sessions_per_network, workers),
            _tls=[tls_context(lc) for lc in proxy.listeners],
            _pools=[pools[lc.upstream or proxy.upstream] for lc in proxy.listeners],
        )

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def metrics(self) -> Metrics:
        return self.runtime.metrics

    def tls_context(self, listener_index: int) -> ssl.SSLContext | None:
        return self._tls[listener_index]

    def pool(self, listener_index: int) -> UpstreamPool:
        return self._pools[listener_index]

    def close(self) -> None:
        for pool in set(self._pools):
            pool.close()
        self.runtime.close()
