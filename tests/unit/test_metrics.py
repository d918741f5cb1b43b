"""Metrics: the listen address, worker ports, the [metrics] config section and the cost per message."""
from __future__ import annotations

import time

import pytest

from authfilter.config import ConfigError, from_dict, parse_listen_address
from authfilter.metrics import Metrics, worker_listen
from authfilter.results import ArcResult, DkimResult, DmarcResult, SpfResult, Verdict


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9469", ("127.0.0.1", 9469)),
    ("[::1]:9469", ("::1", 9469)),
    (" 10.1.2.3:0 ", ("10.1.2.3", 0)),
])
def test_listen_address_parses(text, expected):
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["", "9469", "localhost:9469", "::1:9469", "127.0.0.1:",
                                  "127.0.0.1:http", "127.0.0.1:70000", "[::1]", "[nope]:1"])
def test_bad_listen_address_is_a_clear_error(text):
    with pytest.raises(ValueError, match="is not IP:PORT"):
        parse_listen_address(text)


def test_worker_ports_follow_the_supervisor_port():
    assert worker_listen("127.0.0.1:9469", 0) == "127.0.0.1:9469"
    assert worker_listen("[::1]:9469", 3) == "[::1]:9472"


def test_metrics_config_defaults_to_off_and_accepts_loopback_or_one_interface():
    assert from_dict({}).metrics.listen == ""
    assert from_dict({"metrics": {"listen": "127.0.0.1:9469"}}).metrics.listen == "127.0.0.1:9469"
    assert from_dict({"metrics": {"listen": "192.0.2.7:9469"}}).metrics.listen == "192.0.2.7:9469"


@pytest.mark.parametrize("value, message", [
    ("0.0.0.0:9469", "not on all interfaces"),
    ("[::]:9469", "not on all interfaces"),
    ("127.0.0.1:0", "fixed port"),
    ("localhost:9469", "is not IP:PORT"),
])
def test_metrics_config_problems_name_the_key(value, message):
    with pytest.raises(ConfigError) as info:
        from_dict({"metrics": {"listen": value}})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("metrics.listen: ")
    assert message in info.value.problems[0]


def test_message_done_is_cheap():
    """The proxy calls message_done once per message; it must stay far below the ~2 ms of
    CPU a message costs (budget: 20 microseconds)."""
    metrics = Metrics()
    verdict = Verdict(SpfResult("pass", "mailfrom", "example.com"),
                      (DkimResult("pass", "example.com", "s1", "rsa-sha256"),),
                      ArcResult("none"), DmarcResult("pass", "example.com"))
    timings = {"spf": 0.001, "dkim": 0.002, "arc": 0.0001, "dmarc": 0.0002, "total": 0.003,
               "end_of_data": 0.004}
    n = 5000
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            metrics.message_done(verdict, "accept", timings)
        best = min(best, (time.perf_counter() - start) / n)
    assert metrics.registry.get_sample_value("authfilter_messages_total", {"action": "accept"}) == 5 * n
    assert best < 20e-6, f"message_done took {best * 1e6:.1f} us"
