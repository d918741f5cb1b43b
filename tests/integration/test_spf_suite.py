"""The RFC 7208 conformance suite (openspf.org, release 2014.04) run through ``check_spf``.

Each scenario's zone data is served by the real loopback DNS server and every lookup goes
through the authfilter Resolver, so the suite tests the whole path, not pyspf alone.  The zone
data is mapped the way pyspf's own harness (test/testspf.py in the pyspf sdist) maps it:

* ``SPF`` records are also served as ``TXT`` when the name has no ``TXT`` entry of its own;
* ``NONE`` means "no record of this type"; an RR with no strings at all cannot be put on the
  wire (RFC 1035 s. 3.3.14 needs one or more strings) and is left out, as the harness drops it;
* ``TIMEOUT`` makes every query about the name time out, except for types listed before it.
"""
from __future__ import annotations

import asyncio

import pytest
import spf as pyspf
import yaml

from authfilter.checks.spf import check_spf
from authfilter.dns import Resolver
from authfilter.results import SessionFacts
from tests.conftest import testdata as conformance_file

QUERIED_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF")


def _suite_cases() -> list:
    try:
        path = conformance_file("spf", "rfc7208-tests.yml")
    except pytest.skip.Exception as absent:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=str(absent)))]
    cases = []
    for scenario in yaml.safe_load_all(path.read_bytes()):
        for test_id, case in scenario["tests"].items():
            cases.append(pytest.param(scenario["zonedata"], case, id=test_id))
    return cases


def load_zone(zone, zonedata: dict) -> None:
    """Serve one scenario's ``zonedata`` from the loopback DNS server."""
    for name, entries in zonedata.items():
        has_own_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        served_types: set[str] = set()
        for entry in entries:
            if entry == "TIMEOUT":
                if not served_types:
                    zone.misbehave(name, "timeout")
                for rdtype in set(QUERIED_TYPES) - served_types:
                    zone.misbehave(name, "timeout", rdtype)
                break
            (rdtype, value), = entry.items()
            if value in ("NONE", []):
                continue
            served_types.add(rdtype)
            if rdtype in ("TXT", "SPF"):
                zone.add(name, rdtype, value)
                if rdtype == "SPF" and not has_own_txt:
                    zone.add(name, "TXT", value)
                    served_types.add("TXT")
            elif rdtype == "MX":
                preference, host = value
                zone.add(name, "MX", f"{preference} {host}")
            else:
                zone.add(name, rdtype, value)


def resolver_for(zone, zonedata: dict) -> Resolver:
    """Short timeouts where the scenario has TIMEOUT records (so it does not slow the suite
    down), the usual ones elsewhere (so a loaded machine cannot turn an answer into a
    temperror)."""
    if "TIMEOUT" in repr(zonedata):
        return Resolver([zone.address], timeout=0.15, lifetime=0.25)
    return Resolver([zone.address], timeout=2.0, lifetime=5.0)


@pytest.mark.parametrize(("zonedata", "case"), _suite_cases())
def test_rfc7208_suite(zone, zonedata, case):
    load_zone(zone, zonedata)
    facts = SessionFacts.create(str(case["host"]), case.get("helo"), case["mailfrom"])
    result = asyncio.run(check_spf(facts, resolver_for(zone, zonedata)))
    expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
    assert result.result in expected, f"{case.get('spec')}: {result}"
    explanation = case.get("explanation")
    if explanation == "DEFAULT":      # the receiver's own explanation, not the domain's exp=
        assert result.reason == pyspf.EXPLANATIONS[result.result]
    elif explanation is not None:
        assert result.reason == explanation
