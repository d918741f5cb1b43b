"""The Grafana dashboard in contrib/ is valid and asks only for series authfilter exposes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from authfilter.dns import Resolver
from authfilter.metrics import Metrics
from authfilter.results import ArcResult, DmarcResult, SpfResult, Verdict

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "authfilter-dashboard.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def exposed_series() -> set[str]:
    """Every sample name a fully wired Metrics object serves."""
    metrics = Metrics(resolver=Resolver(["127.0.0.1:53"]), report_backlog=lambda: 0)
    metrics.message_done(Verdict(SpfResult("pass", "mailfrom", "example.com"), (), ArcResult("none"),
                                 DmarcResult("none", "example.com")), "accept",
                         {"total": 0.001, "end_of_data": 0.002})
    metrics.upstream_error("connect")
    text = generate_latest(metrics.registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def expressions(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


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


def test_every_query_names_a_series_authfilter_serves(dashboard):
    served = exposed_series()
    used = {name for expr in expressions(dashboard) for name in re.findall(r"authfilter_\w+", expr)}
    assert used, "no queries found"
    assert used <= served, f"not exposed by authfilter.metrics: {sorted(used - served)}"


def test_the_panels_operators_asked_for(dashboard):
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    exprs = " ".join(expressions(dashboard))
    for wanted in ("message rate by action", "results of $method", "latency p50 / p99",
                   "dns cache hit ratio", "upstream errors"):
        assert wanted in titles
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
