"""One config generation: everything derived from one config file that deciding about a
message needs (policy, engine, signer, sealer, observers, metrics).

Front-end neutral: the SMTP proxy and the milter hold a :class:`Runtime` through their
:class:`~authfilter.pipeline.Pipeline`, which swaps in a new one on SIGHUP; a transaction keeps
the one it began with, so a reload never disturbs a message in flight.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable

from .config import Config
from .dns import Resolver
from .engine import Engine, resolver_from_config
from .metrics import Metrics
from .observers import Observer
from .policy import Policy
from .ratelimit import RateLimiter
from .signing import ArcSealer, Signer


def _always() -> bool:
    return True


def listeners(config: Config) -> list:
    """Every front-end's listeners (proxy and milter): each has a ``role`` and ``arc_seal``."""
    return [*config.proxy.listeners, *config.milter.listeners]


def signs(config: Config) -> bool:
    """Whether this config signs anything: a listener that signs, or a signing table."""
    return bool(config.signing.keys) or any(lc.role != "inbound" for lc in listeners(config))


def seals(config: Config) -> bool:
    """Whether this config seals: a listener that seals, or a sealing domain."""
    return bool(config.signing.arc.domain) or any(lc.arc_seal for lc in listeners(config))


@dataclass
class Runtime:
    config: Config
    policy: Policy
    engine: Engine
    signer: Signer | None            # None: nothing in this config signs
    sealer: ArcSealer | None         # None: nothing in this config seals
    observers: list[Observer]
    metrics: Metrics
    authserv_id: str
    ratelimiter: "RateLimiter | None" = None     # None: no [[ratelimit.rules]]

    @classmethod
    def build(cls, config: Config, resolver: Resolver | None = None, *,
              executor: Executor | None = None, observers: list[Observer] | None = None,
              metrics: Metrics | None = None,
              loop_shared: Callable[[], bool] = _always) -> "Runtime":
        """Raises (PolicyError, SigningConfigError, OSError) when the config cannot be put into
        force.  ``loop_shared``: see :class:`~authfilter.engine.Engine`."""
        metrics = metrics or Metrics()
        return cls(
            config=config,
            policy=Policy.from_config(config),
            engine=Engine(config, resolver or resolver_from_config(config), executor, loop_shared),
            signer=Signer.from_config(config) if signs(config) else None,
            sealer=ArcSealer.from_config(config) if seals(config) else None,
            observers=observers if observers is not None else [],
            metrics=metrics,
            authserv_id=config.general.effective_authserv_id(),
            ratelimiter=RateLimiter.from_config(config, metrics),
        )

    def close(self) -> None:
        """This generation is out of force (a reload, the end of a drain): its Redis
        connections close once the loop gets to it (a transaction of it still running that
        asks again reconnects)."""
        limiter = self.ratelimiter
        if limiter is not None:
            try:
                asyncio.get_running_loop().create_task(limiter.close())
            except RuntimeError:            # no loop: nothing was ever connected in one
                pass
