"""The plug-in contract of a check (authfilter.checks.base): what a check declares is all the
engine, Authentication-Results, the log line, JSON, metrics and ``authfilter check`` need.

DNS comes from a StaticResolver; the toy checks below are what a new module in
authfilter/checks/ would hold."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import authres
import pytest

from authfilter.authres import build_header, comment, property_value
from authfilter.checks import BUILT_IN, REGISTRY, Registry
from authfilter.checks.arc import ArcCheck
from authfilter.checks.base import DependentCheck, EnvelopeCheck, summary_line
from authfilter.checks.dkim import DkimCheck
from authfilter.checks.dmarc import DmarcCheck
from authfilter.checks.iprev import IprevCheck
from authfilter.checks.spf import SpfCheck
from authfilter.commands.check import summary
from authfilter.config import Config
from authfilter.dns import StaticResolver
from authfilter.engine import OFFLOAD_BYTES, Engine
from authfilter.logline import message_record
from authfilter.metrics import Metrics
from authfilter.policy import Action
from authfilter.results import SessionFacts

FACTS = SessionFacts.create("192.0.2.10", helo="mail.example.org", mail_from="alice@example.org")
ZONE = {("example.org", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
        ("_dmarc.example.org", "TXT"): ["v=DMARC1; p=reject"],
        ("10.2.0.192.in-addr.arpa", "PTR"): ["mail.example.org"],
        ("mail.example.org", "A"): ["192.0.2.10"]}
MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
           b"Message-ID: <1@example.org>\r\n\r\nHello.\r\n")
ALL_BUILT_IN = ["iprev", "spf", "helo_spf", "dkim", "arc", "dmarc", "dnsbl", "dnsbl_domain"]
BUILT_IN_METHODS = ["iprev", "spf", "dkim", "arc", "dmarc"]    # the blocklists are off


# -- toy checks ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyResult:
    result: str
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class ToyCheck(EnvelopeCheck[ToyResult]):
    """Like iprev: pass when the client's address has a PTR record."""

    name = "toy"

    def evaluate(self, facts, resolver, config, deadline):
        return self._lookup(facts, resolver, deadline)

    async def _lookup(self, facts, resolver, deadline):
        await asyncio.sleep(0.02)           # something measurable
        name = ipaddress.ip_address(facts.client_ip).reverse_pointer
        answer = await resolver.query(name, "PTR", deadline=deadline)
        return ToyResult("pass" if answer.ok else "fail", f"PTR {answer.status}")

    def temperror(self, reason, facts):
        return ToyResult("temperror", reason)

    def authres(self, result, facts):
        return [f"toy={result.result}{comment(result.reason)} smtp.remote-ip="
                f"{property_value(str(facts.client_ip))}"]

    def summary(self, result):
        return [summary_line("TOY", result.result, str(result.reason))]


class Echo(DependentCheck[ToyResult]):
    """Reports what it saw of the checks it requires, in the order the engine ran it."""

    def __init__(self, name: str, requires: tuple[str, ...], ran: list[str]) -> None:
        self.name, self.requires, self.ran = name, requires, ran

    def evaluate(self, context, prepared, results):
        self.ran.append(self.name)
        seen = ",".join(f"{n}={results[n].result}" for n in self.requires)
        return _resolved(ToyResult("pass", seen))

    def temperror(self, reason, facts):
        return ToyResult("temperror", reason)

    def authres(self, result, facts):
        return [f"{self.name}={result.result}"]

    def summary(self, result):
        return []


async def _resolved(value):
    return value


def boom(*args, **kwargs):
    raise RuntimeError("boom")


async def _boom_later():
    await asyncio.sleep(0)
    raise RuntimeError("boom")


def boom_later(*args, **kwargs):
    """A hook whose awaitable raises, once awaited."""
    return _boom_later()


@contextlib.contextmanager
def registered(check):
    REGISTRY.register(check)
    try:
        yield check
    finally:
        REGISTRY.unregister(check.name)


def verdict_of(checks: Registry | None = None, raw: bytes = MESSAGE, **engine):
    engine = Engine(Config(), StaticResolver(ZONE), checks=checks or REGISTRY, **engine)
    return asyncio.run(engine.evaluate(FACTS, raw, now=1e9))


def methods(header: str) -> list[str]:
    return [r.method for r in authres.AuthenticationResultsHeader.parse(header).results]


# -- the registry ----------------------------------------------------------------------------
def test_the_built_in_checks_run_in_header_order():
    assert [c.name for c in REGISTRY] == ALL_BUILT_IN
    assert [c.name for c in REGISTRY.client] == ["iprev", "dnsbl"]
    assert [c.name for c in REGISTRY.envelope] == ["spf", "helo_spf"]
    assert [c.name for c in REGISTRY.content] == ["dkim", "arc"]
    assert [c.name for c in REGISTRY.dependent] == ["dmarc", "dnsbl_domain"]


def test_a_check_comes_after_what_it_requires():
    checks = Registry(BUILT_IN)
    with pytest.raises(ValueError, match="b requires a: register that first"):
        checks.register(Echo("b", ("a",), []))
    checks.register(Echo("a", ("dmarc",), []))
    checks.register(Echo("b", ("a",), []))
    with pytest.raises(ValueError, match="b requires a: unregister that first"):
        checks.unregister("a")
    with pytest.raises(ValueError, match="registered already"):
        checks.register(Echo("a", (), []))
    with pytest.raises(ValueError, match="only a DependentCheck"):
        Registry([type("Needy", (ToyCheck,), {"requires": ("spf",)})()])
    with pytest.raises(TypeError):
        Registry(["spf"])


def test_dependent_checks_run_in_dependency_order_and_see_what_they_require():
    ran: list[str] = []
    checks = Registry(BUILT_IN)
    checks.register(Echo("first", ("spf", "dmarc"), ran))
    checks.register(Echo("second", ("first", "arc"), ran))
    verdict = verdict_of(checks)
    assert ran == ["first", "second"]
    assert verdict.result("first") == ToyResult("pass", "spf=pass,dmarc=pass")
    assert verdict.result("second") == ToyResult("pass", "first=pass,arc=none")


def test_content_checks_pickle_for_the_worker_process():
    assert [type(c) for c in pickle.loads(pickle.dumps(REGISTRY.content))] == [DkimCheck, ArcCheck]


# -- containment -----------------------------------------------------------------------------
BROKEN = {
    "iprev evaluate": (IprevCheck, "evaluate", boom),
    "iprev evaluate, awaited": (IprevCheck, "evaluate", boom_later),
    "spf evaluate": (SpfCheck, "evaluate", boom),
    "spf evaluate, awaited": (SpfCheck, "evaluate", boom_later),
    "dkim dns_names": (DkimCheck, "dns_names", boom),
    "dkim verify": (DkimCheck, "verify", boom),
    "arc verify": (ArcCheck, "verify", boom),
    "dmarc prepare": (DmarcCheck, "prepare", boom),
    "dmarc prepare, awaited": (DmarcCheck, "prepare", boom_later),
    "dmarc evaluate": (DmarcCheck, "evaluate", boom),
    "dmarc evaluate, awaited": (DmarcCheck, "evaluate", boom_later),
}


def with_broken(cls, hook, replacement=boom) -> Registry:
    broken = type(f"Broken{cls.__name__}", (cls,), {hook: replacement})()
    return Registry(broken if type(c) is cls else c for c in BUILT_IN)


@pytest.mark.parametrize("case", BROKEN)
def test_a_check_that_raises_gets_its_temperror_and_the_others_still_run(case, caplog):
    cls, hook, replacement = BROKEN[case]
    with caplog.at_level(logging.ERROR, "authfilter.engine"):
        verdict = verdict_of(with_broken(cls, hook, replacement))
    name = cls.name
    failed = verdict.result(name)
    failed = failed[0] if name == "dkim" else failed
    assert failed.result == ("fail" if name == "arc" else "temperror")     # RFC 8617: no temperror
    assert f"internal error in {name} check: RuntimeError: boom" in failed.reason
    assert f"the {name} check failed" in caplog.text and "RuntimeError: boom" in caplog.text
    others = {"iprev": "pass", "spf": "pass", "arc": "none", "dmarc": "pass"}
    for other, word in others.items():
        if other != name and not (name == "spf" and other == "dmarc"):   # DMARC needs SPF
            assert verdict.result(other).result == word, other
    header = build_header("mx.test", FACTS, verdict)
    assert methods(header) == BUILT_IN_METHODS
    assert f"{name}={failed.result} (" in header
    assert verdict.failed == {name: f"internal error in {name} check: RuntimeError: boom"}


def test_a_content_check_that_raises_in_the_executor_is_contained_too():
    big = MESSAGE + b"line of text\r\n" * (OFFLOAD_BYTES // 14)
    submitted = []
    with ThreadPoolExecutor(1) as executor:
        real_submit = executor.submit
        executor.submit = lambda *a, **k: submitted.append(a) or real_submit(*a, **k)
        verdict = verdict_of(with_broken(DkimCheck, "verify"), big, executor=executor)
    assert len(submitted) == 1
    assert verdict.dkim[0].result == "temperror" and verdict.dmarc.result == "pass"
    assert list(verdict.failed) == ["dkim"]                 # noted across the process boundary


# -- timing ----------------------------------------------------------------------------------
def test_each_check_is_timed_and_the_times_reach_the_metrics():
    metrics_made_before = Metrics()
    with registered(ToyCheck()):
        verdict = verdict_of()
        metrics_made_after = Metrics()
    assert set(verdict.seconds) == {"iprev", "spf", "dkim", "arc", "dmarc", "toy"}   # helo_spf,
    # dnsbl and dnsbl_domain are off
    assert verdict.seconds["toy"] >= 0.02
    for metrics in (metrics_made_before, metrics_made_after):
        metrics.message_done(verdict, "accept", {"total": 0.03})
        sample = metrics.registry.get_sample_value
        for name in ("spf", "dkim", "arc", "dmarc", "toy", "total"):
            assert sample("authfilter_check_duration_seconds_count", {"check": name}) == 1, name
        assert sample("authfilter_check_duration_seconds_sum", {"check": "toy"}) >= 0.02
        assert sample("authfilter_check_duration_seconds_count", {"check": "helo_spf"}) in (None, 0)


# -- a toy check reaches every output without touching their modules --------------------------
def test_a_registered_check_appears_in_every_output():
    with registered(ToyCheck()):
        verdict = verdict_of()
        before = verdict_of(Registry(BUILT_IN))
        record = message_record(role="inbound", facts=FACTS, peer="", size=len(MESSAGE),
                                verdict=verdict, action=Action("accept", "dmarc=pass"),
                                upstream_reply=None, reply=None, elapsed=0.1)
        metrics = Metrics()
        metrics.message_done(verdict, "accept", {})
    assert verdict.result("toy") == ToyResult("pass", "PTR ok")

    header = build_header("mx.test", FACTS, verdict)
    assert header == build_header("mx.test", FACTS, before).removesuffix("\r\n") + \
        ";\r\n\ttoy=pass (PTR ok) smtp.remote-ip=192.0.2.10\r\n"
    assert methods(header) == BUILT_IN_METHODS + ["toy"]

    assert list(record)[list(record).index("from_domain") + 1] == "toy" and record["toy"] == "pass"

    as_json = verdict.to_dict()
    assert list(as_json) == [*ALL_BUILT_IN, "toy", "errors"]
    assert as_json["toy"] == {"result": "pass", "reason": "PTR ok"}
    assert {k: v for k, v in as_json.items() if k != "toy"} == before.to_dict()

    assert metrics.registry.get_sample_value("authfilter_results_total",
                                             {"method": "toy", "result": "pass"}) == 1
    assert summary(verdict).splitlines()[-1] == "TOY    pass      PTR ok"
    assert [c.name for c in REGISTRY] == ALL_BUILT_IN
