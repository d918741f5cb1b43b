"""Fixtures of the proxy tests: a sink MTA on loopback and proxies started in-process."""
import pytest

from tests.proxyrunner import ProxyThread, proxy_config
from tests.smtpsink import SmtpSink


@pytest.fixture(scope="module")
def sink():
    s = SmtpSink().start()
    yield s
    s.stop()


@pytest.fixture
def start_proxy(zone, sink):
    sink.reset()
    started = []

    def start(config=None, **proxy_settings):
        config = config or proxy_config(sink.address, **proxy_settings)
        proxy = ProxyThread(config, zone.address).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
