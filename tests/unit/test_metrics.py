"""Metrics: the listen address, the [metrics] config section, who has which series and the cost
per message."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from authfilter import metrics as metrics_module
from authfilter.config import ConfigError, from_dict, parse_listen_address
from authfilter.dns import Resolver
from authfilter.logline import OUTCOMES
from authfilter.metrics import UPSTREAM_ERRORS, Metrics
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


def test_a_standalone_process_has_process_metrics_and_one_worker_that_never_restarted():
    value = Metrics().registry.get_sample_value
    assert value("process_resident_memory_bytes") > 0 and value("process_cpu_seconds_total") > 0
    assert value("authfilter_worker_restarts_total", {"worker": "0"}) == 0


def test_a_worker_under_a_supervisor_leaves_restarts_to_it():
    value = Metrics(standalone=False).registry.get_sample_value
    assert value("authfilter_worker_restarts_total", {"worker": "0"}) is None
    assert value("process_resident_memory_bytes") > 0


def test_upstream_errors_are_counted_by_kind():
    metrics = Metrics()
    metrics.upstream_error("refused")
    metrics.upstream_error("refused")
    metrics.upstream_error("closing")
    value = metrics.registry.get_sample_value
    assert value("authfilter_upstream_errors_total", {"kind": "refused"}) == 2
    assert value("authfilter_upstream_errors_total", {"kind": "closing"}) == 1
    assert value("authfilter_upstream_errors_total", {"kind": "unavailable"}) == 0


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


def test_message_done_counts_each_message_once():
    """(Its cost, a few microseconds, is bench/bench_pipeline.py's to show, not a timed test's.)"""
    metrics = Metrics()
    verdict = Verdict(SpfResult("pass", "mailfrom", "example.com"),
                      (DkimResult("pass", "example.com", "s1", "rsa-sha256"),),
                      ArcResult("none"), DmarcResult("pass", "example.com"))
    timings = {"spf": 0.001, "dkim": 0.002, "arc": 0.0001, "dmarc": 0.0002, "total": 0.003,
               "end_of_data": 0.004}
    for _ in range(3):
        metrics.message_done(verdict, "accept", timings)
    sample = metrics.registry.get_sample_value
    assert sample("authfilter_messages_total", {"action": "accept"}) == 3
    assert sample("authfilter_results_total", {"method": "dkim", "result": "pass"}) == 3
    assert sample("authfilter_end_of_data_duration_seconds_count", {}) == 3


def served_series() -> set[str]:
    """``name{label,...}`` of each authfilter_ series a standalone process serves, unprefixed."""
    served = set()
    for family in Metrics(resolver=Resolver(["127.0.0.1:53"])).registry.collect():
        if family.name.startswith("authfilter_"):
            name = family.name.removeprefix("authfilter_") + ("_total" if family.type == "counter" else "")
            labels = sorted({k for s in family.samples for k in s.labels} - {"le"})
            served.add(name + (f"{{{','.join(labels)}}}" if labels else ""))
    return served


def listed_series(first_columns: list[str], quote: str) -> set[str]:
    return {m.group(1) for column in first_columns
            for m in re.finditer(rf"{quote}([a-z_]+(?:{{[a-z_,]+}})?){quote}", column)}


def test_the_readme_and_metrics_py_list_the_series_served_and_the_words_used():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Watching it"):readme.index("## Commands")]
    cells = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("  | `")]
    outcomes = {cell.strip("`") for cell in cells if cell.strip("`") in OUTCOMES}
    assert outcomes == set(OUTCOMES)
    assert listed_series([c for c in cells if c.strip("`") not in outcomes], "`") == served_series()
    doc_rows = [line.split("  ")[0] for line in metrics_module.__doc__.splitlines()
                if line.startswith("``") and not line.startswith("``process_")]
    assert listed_series(doc_rows, "``") == served_series()
    kinds = next(line for line in section.splitlines() if "| `upstream_errors_total{kind}`" in line)
    assert all(f"`{kind}`" in kinds for kind in UPSTREAM_ERRORS)
