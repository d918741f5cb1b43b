"""Shared fixtures: a real DNS server on loopback, a resolver pointed at it, and paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from authfilter.dns import Resolver
from tests.dnsserver import DnsTestServer

ROOT = Path(__file__).resolve().parent.parent
def _testdata_dir() -> Path:
    """$AUTHFILTER_TESTDATA, else ../shared/testdata beside the checkout, else the workplace's."""
    if os.environ.get("AUTHFILTER_TESTDATA"):
        return Path(os.environ["AUTHFILTER_TESTDATA"])
    for candidate in (ROOT.parent / "shared" / "testdata", Path("/work/shared/testdata")):
        if candidate.is_dir():
            return candidate
    return ROOT.parent / "shared" / "testdata"


TESTDATA = _testdata_dir()


@pytest.fixture(scope="session")
def dns_server():
    server = DnsTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def zone(dns_server):
    """The loopback DNS server, emptied for this test; add records with ``zone.add(...)``."""
    dns_server.reset()
    yield dns_server
    dns_server.reset()


@pytest.fixture
def resolver(zone):
    """A fresh (empty-cache) resolver that asks the loopback DNS server only."""
    return Resolver([zone.address], timeout=0.5, lifetime=1.0)


def testdata(*parts: str) -> Path:
    """Path of a public conformance file; the test skips with a message when it is absent."""
    path = TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"conformance data {path} not present (set AUTHFILTER_TESTDATA)")
    return path
