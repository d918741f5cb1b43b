"""The Grafana dashboard in contrib/ is valid and asks only for series authfilter exposes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from authfilter.checks import REGISTRY
from authfilter.dns import Resolver
from authfilter.metrics import ACTIONS, DEFENCES, RESULT_WORDS, UPSTREAM_ERRORS, Metrics
from tests.scrape import samples

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "authfilter-dashboard.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def exposed_samples() -> dict[tuple[str, tuple], float]:
    """Every sample a fully wired Metrics object serves before any message, by (name, labels)."""
    metrics = Metrics(resolver=Resolver(["127.0.0.1:53"]), report_backlog=lambda: 0)
    return samples(generate_latest(metrics.registry).decode())


def expressions(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def series_names(expr: str) -> list[str]:
    return re.findall(r"\b(?:authfilter|process)_\w+", expr)


def test_grafana_10_schema_basics(dashboard):
    assert dashboard["schemaVersion"] >= 38            # Grafana 10.0
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "method"} <= variables


def test_every_query_names_a_series_authfilter_serves_before_any_message(dashboard):
    served = {name for name, _ in exposed_samples()}
    used = {name for expr in expressions(dashboard) for name in series_names(expr)}
    assert used, "no queries found"
    assert used <= served, f"not exposed by authfilter.metrics: {sorted(used - served)}"


def test_each_line_of_the_labelled_panels_is_there_at_zero_before_any_message(dashboard):
    """A series created on first use is "No data" until then: an outage that never happened
    before would not show."""
    served = exposed_samples()
    exprs = " ".join(expressions(dashboard))
    labelled = {"authfilter_messages_total": ("action", ACTIONS),
                "authfilter_upstream_errors_total": ("kind", UPSTREAM_ERRORS),
                "authfilter_worker_restarts_total": ("worker", ("0",)),
                "authfilter_rcpt_refused_total": ("defence", DEFENCES)}
    for name, (label, values) in labelled.items():
        assert name in exprs
        for value in values:
            assert served[(name, ((label, value),))] == 0, (name, value)
    assert "refused" in UPSTREAM_ERRORS
    for method, words in RESULT_WORDS.items():
        for word in words:
            assert served[("authfilter_results_total", (("method", method), ("result", word)))] == 0
    for check in [*(c.name for c in REGISTRY), "total"]:
        assert served[("authfilter_check_duration_seconds_count", (("check", check),))] == 0


def test_the_panels_operators_asked_for(dashboard):
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    exprs = " ".join(expressions(dashboard))
    for wanted in ("message rate by action", "results of $method", "latency p50 / p99",
                   "dns cache hit ratio", "upstream errors", "cpu", "resident memory"):
        assert wanted in titles
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert "sum by (kind) (rate(authfilter_upstream_errors_total" in exprs
