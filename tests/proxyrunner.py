"""Run the SMTP proxy (authfilter.smtp.server.ProxyServer) in a background thread for tests,
so blocking clients (smtplib, raw sockets) can talk to it from the test thread."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from authfilter.config import Config, ListenerConfig
from authfilter.dns import Resolver
from authfilter.observers import MessageEvent
from authfilter.smtp.server import ProxyServer


def proxy_config(upstream: str, **proxy_settings: Any) -> Config:
    """A config for tests: one inbound listener on a free loopback port, nothing trusted."""
    config = Config()
    config.general.authserv_id = "mx.test"
    config.proxy.upstream = upstream
    config.proxy.listeners = [ListenerConfig(address="127.0.0.1:0")]
    config.proxy.offload_workers = 0
    config.policy.trusted_networks = []
    for key, value in proxy_settings.items():
        setattr(config.proxy, key, value)
    return config


class ProxyThread:
    def __init__(self, config: Config, nameserver: str) -> None:
        self.config = config
        self.nameserver = nameserver
        self.loop = asyncio.new_event_loop()
        self.server: ProxyServer | None = None
        self.observed: list[tuple] = []
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                resolver = Resolver([self.nameserver], timeout=0.5, lifetime=1.0,
                                    failure_ttl=self.config.dns.failure_ttl)
                self.server = ProxyServer(self.config, resolver=resolver,
                                          observers=[self._observe])
                await self.server.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.server.drain(2.0)

        self.loop.run_until_complete(main())
        self.loop.close()

    def _observe(self, e: MessageEvent) -> None:
        """Each message's event, as (facts, verdict, action, upstream_reply, elapsed)."""
        self.observed.append((e.facts, e.verdict, e.action, e.upstream_reply, e.elapsed))

    def start(self) -> "ProxyThread":
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        return self.server.addresses()[0][1]

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a coroutine function) in the proxy's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(10)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
