"""Rate limits against a real Redis on 127.0.0.1:6379 (.ci/run starts one).

Each test has a key prefix of its own (and removes its keys), so tests do not see each other's
buckets; two RateLimiter objects on one Redis stand for two filter nodes.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import pytest

from authfilter.config import from_dict
from authfilter.metrics import Metrics
from authfilter.ratelimit import RateDecision, RateLimiter
from authfilter.results import SessionFacts
from tests.support import free_port

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")

REDIS = ("127.0.0.1", 6379)
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def server():
    client = redis.Redis(*REDIS, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        pytest.skip(f"no Redis answers at {REDIS[0]}:{REDIS[1]} ({exc}); start redis-server "
                    f"(bash .ci/run does)")
    yield client
    client.close()


@pytest.fixture
def prefix(server):
    own = f"authfilter-test:{uuid.uuid4().hex}:"
    yield own
    for key in server.scan_iter(match=own + "*"):
        server.delete(key)


def limiter(prefix: str, *rules: dict, metrics: Metrics | None = None, **settings) -> RateLimiter:
    section = {"redis": REDIS_URL, "key_prefix": prefix, "rules": list(rules), **settings}
    made = RateLimiter.from_config(from_dict({"ratelimit": section}), metrics)
    assert made is not None
    return made


def inbound(ip: str = "192.0.2.1", mail_from: str | None = "sender@example.com",
            **kw) -> SessionFacts:
    return SessionFacts.create(ip, helo="mail.example.com", mail_from=mail_from, **kw)


def keys(server, prefix: str) -> list[str]:
    return sorted(k.decode() for k in server.scan_iter(match=prefix + "*"))


async def charges(rl: RateLimiter, facts: SessionFacts, n: int, recipient: str = "rcpt@example.org",
                  first: bool = True) -> list[RateDecision]:
    return [await rl.charge(facts, recipient, first=first) for _ in range(n)]


def outcomes(decisions: list[RateDecision]) -> list[str]:
    return [d.outcome for d in decisions]


def counted(metrics: Metrics, rule: str, outcome: str) -> float:
    return metrics.registry.get_sample_value("authfilter_ratelimit_total",
                                             {"rule": rule, "outcome": outcome})


def redis_up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("authfilter_ratelimit_redis_up")


# -- the limit itself ---------------------------------------------------------------------------
def test_ten_of_fifteen_from_one_client_pass_the_rest_get_451_with_when_to_retry(server, prefix):
    metrics = Metrics()
    rl = limiter(prefix, {"key": "client_ip", "limit": 10, "period": 3600}, metrics=metrics)

    async def scenario():
        decisions = await charges(rl, inbound("192.0.2.1"), 15)
        other = await rl.charge(inbound("192.0.2.2"), "rcpt@example.org", first=True)
        await rl.close()
        return decisions, other

    decisions, other = asyncio.run(scenario())
    assert outcomes(decisions) == ["allowed"] * 10 + ["limited"] * 5
    assert all(d.refusal is None and d.rule is None for d in decisions[:10])
    for d in decisions[10:]:
        assert d.rule == "client_ip/3600s"
        assert d.refusal.code == 451
        m = re.fullmatch(r"4\.7\.28 Rate limit exceeded for client 192\.0\.2\.1, try again in "
                         r"(\d+) seconds", d.refusal.text)
        assert m, d.refusal.text
        # one token comes back every 3600/10 s
        assert 355 < d.retry_after <= 360 and int(m[1]) == pytest.approx(d.retry_after, abs=1)
    assert other.outcome == "allowed"
    assert counted(metrics, "client_ip/3600s", "allowed") == 11
    assert counted(metrics, "client_ip/3600s", "limited") == 5
    assert counted(metrics, "client_ip/3600s", "error") == 0
    assert redis_up(metrics) == 1


def test_two_nodes_on_one_redis_share_the_bucket(server, prefix):
    rule = {"key": "client_ip", "limit": 10, "period": 3600}
    node_a, node_b = limiter(prefix, rule), limiter(prefix, rule)
    facts = inbound("198.51.100.20")

    async def scenario():
        got = []
        for i in range(15):
            node = node_a if i % 2 == 0 else node_b
            got.append((node, await node.charge(facts, "rcpt@example.org", first=True)))
        await node_a.close()
        await node_b.close()
        return got

    got = asyncio.run(scenario())
    allowed = [node for node, d in got if d.outcome == "allowed"]
    assert len(allowed) == 10 and node_a in allowed and node_b in allowed
    assert [d.outcome for _, d in got[10:]] == ["limited"] * 5      # on both nodes
    assert {node for node, _ in got[10:]} == {node_a, node_b}


def test_client_net_groups_a_slash_24_and_a_slash_64(server, prefix):
    rl = limiter(prefix, {"key": "client_net", "limit": 2, "period": 3600})

    async def scenario():
        out = {}
        for ip in ("192.0.2.1", "192.0.2.77", "192.0.2.200", "192.0.3.1",
                   "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2::abcd",
                   "2001:db8:1:3::1", "::ffff:192.0.2.9"):
            out[ip] = await rl.charge(inbound(ip), "rcpt@example.org", first=True)
        await rl.close()
        return out

    out = asyncio.run(scenario())
    assert out["192.0.2.1"].outcome == out["192.0.2.77"].outcome == "allowed"
    assert out["192.0.2.200"].outcome == "limited"          # the third of one /24
    assert out["192.0.2.200"].rule == "client_net/3600s"
    assert "for network 192.0.2.0/24," in out["192.0.2.200"].refusal.text
    assert out["192.0.3.1"].outcome == "allowed"            # another /24
    assert out["2001:db8:1:2::1"].outcome == out["2001:db8:1:2:ffff::9"].outcome == "allowed"
    assert out["2001:db8:1:2::abcd"].outcome == "limited"
    assert "for network 2001:db8:1:2::/64," in out["2001:db8:1:2::abcd"].refusal.text
    assert out["2001:db8:1:3::1"].outcome == "allowed"
    assert out["::ffff:192.0.2.9"].outcome == "limited"     # IPv4-mapped: the same /24
    assert prefix + "client_net/3600s:192.0.2.0/24" in keys(server, prefix)


def test_the_wide_network_rule_limits_the_fourth_of_its_slash_16(server, prefix):
    rl = limiter(prefix, {"key": "client_net", "limit": 3, "period": 3600, "ipv4_prefix": 16})

    async def scenario():
        got = [await rl.charge(inbound(ip), "r@example.org", first=True)
               for ip in ("10.1.0.1", "10.1.200.2", "10.1.9.9", "10.1.77.1", "10.2.0.1")]
        await rl.close()
        return got

    got = asyncio.run(scenario())
    assert outcomes(got) == ["allowed", "allowed", "allowed", "limited", "allowed"]
    assert "for network 10.1.0.0/16," in got[3].refusal.text


def test_sender_domain_is_counted_case_blind_and_the_null_sender_not_at_all(server, prefix):
    rl = limiter(prefix, {"key": "sender_domain", "limit": 2, "period": 3600})

    async def scenario():
        got = [await rl.charge(inbound(f"192.0.2.{i}", mail_from=sender), "r@example.org",
                               first=True)
               for i, sender in enumerate(["a@Example.COM", "b@example.com", "c@EXAMPLE.com",
                                           "d@Example.NET.", "", "", ""], start=1)]
        await rl.close()
        return got

    got = asyncio.run(scenario())
    assert outcomes(got) == ["allowed", "allowed", "limited", "allowed",
                             "allowed", "allowed", "allowed"]
    assert "for sender domain example.com," in got[2].refusal.text
    assert keys(server, prefix) == [prefix + "sender_domain/3600s:example.com",
                                    prefix + "sender_domain/3600s:example.net"]


def test_auth_user_counts_logged_in_users_of_the_submission_role(server, prefix):
    rl = limiter(prefix, {"key": "auth_user", "limit": 2, "period": 3600, "roles": ["submission"]})
    # the milter trusts a client that logged in; the auth_user rule counts it all the same
    alice = SessionFacts.create("203.0.113.5", mail_from="alice@example.com", role="submission",
                                trusted=True, auth_user="Alice")
    alice_elsewhere = SessionFacts.create("198.51.100.99", mail_from="alice@example.com",
                                          role="submission", trusted=True, auth_user="alice")
    bob = SessionFacts.create("203.0.113.5", role="submission", trusted=True, auth_user="bob")
    anonymous = SessionFacts.create("203.0.113.5", role="submission")
    inbound_login = inbound(auth_user="alice")

    async def scenario():
        got = [await rl.charge(f, "r@example.org", first=True)
               for f in (alice, alice_elsewhere, alice, bob, anonymous, inbound_login)]
        await rl.close()
        return got

    got = asyncio.run(scenario())
    assert outcomes(got) == ["allowed", "allowed", "limited", "allowed", "allowed", "exempt"]
    assert got[2].refusal.text.startswith("4.7.28 Rate limit exceeded for user alice, ")
    assert rl.applies(alice) and not rl.applies(anonymous) and not rl.applies(inbound_login)


def test_recipient_rules_count_each_rcpt_and_message_rules_only_the_first(server, prefix):
    rl = limiter(prefix, {"key": "client_ip", "limit": 1, "period": 3600},
                 {"key": "recipient", "limit": 2, "period": 3600})
    facts = inbound("192.0.2.10")

    async def scenario():
        # one transaction: its first RCPT charges the client (its only token) and bob
        first = await rl.charge(facts, "Bob@Example.org", first=True)
        more = [await rl.charge(facts, rcpt, first=False)
                for rcpt in ("<bob@example.org>", "bob@example.org", "carol@example.org")]
        # the next transaction's first RCPT: the client has no token left
        again = await rl.charge(facts, "dave@example.org", first=True)
        await rl.close()
        return first, more, again

    first, more, again = asyncio.run(scenario())
    assert first.outcome == "allowed"
    assert outcomes(more) == ["allowed", "limited", "allowed"]
    assert more[1].rule == "recipient/3600s"
    assert more[1].refusal.text.startswith("4.7.28 Rate limit exceeded for recipient "
                                           "bob@example.org, try again in ")
    assert again.outcome == "limited" and again.rule == "client_ip/3600s"


def test_all_or_nothing_a_limited_rule_charges_no_other_bucket(server, prefix):
    metrics = Metrics()
    rl = limiter(prefix, {"key": "client_ip", "limit": 5, "period": 3600},
                 {"key": "sender_domain", "limit": 1, "period": 3600}, metrics=metrics)

    async def scenario():
        once = await rl.charge(inbound("192.0.2.5", "a@flood.example"), "r@example.org", first=True)
        refused = await charges(rl, inbound("192.0.2.5", "b@flood.example"), 3)
        # had the refused ones taken client tokens, fewer than 4 would be left
        rest = [await rl.charge(inbound("192.0.2.5", f"x@d{i}.example"), "r@example.org",
                                first=True) for i in range(5)]
        await rl.close()
        return once, refused, rest

    once, refused, rest = asyncio.run(scenario())
    assert once.outcome == "allowed"
    assert [(d.outcome, d.rule) for d in refused] == [("limited", "sender_domain/3600s")] * 3
    assert outcomes(rest) == ["allowed"] * 4 + ["limited"]
    assert rest[-1].rule == "client_ip/3600s"
    assert counted(metrics, "client_ip/3600s", "allowed") == 5
    assert counted(metrics, "client_ip/3600s", "limited") == 1
    assert counted(metrics, "sender_domain/3600s", "limited") == 3
    assert counted(metrics, "sender_domain/3600s", "allowed") == 5     # once + 4 other domains


def test_when_several_rules_are_exhausted_reject_wins_else_the_longest_wait(server, prefix):
    rl = limiter(prefix, {"key": "client_ip", "limit": 1, "period": 60},
                 {"key": "sender_domain", "limit": 1, "period": 7200},
                 {"key": "recipient", "limit": 1, "period": 3600, "action": "reject"})

    async def scenario():
        first = await rl.charge(inbound(), "r@example.org", first=True)
        both = await rl.charge(inbound(), "other@example.org", first=True)
        three = await rl.charge(inbound(), "r@example.org", first=True)
        await rl.close()
        return first, both, three

    first, both, three = asyncio.run(scenario())
    assert first.outcome == "allowed"
    assert both.rule == "sender_domain/7200s" and both.refusal.code == 451
    assert 7190 < both.retry_after <= 7200          # the hint that works for every rule
    assert three.rule == "recipient/3600s"
    assert three.refusal == (550, "5.7.28 Rate limit exceeded for recipient r@example.org")


def test_trusted_clients_are_exempt_unless_the_rule_counts_them(server, prefix):
    metrics = Metrics()
    rl = limiter(prefix, {"key": "client_ip", "limit": 1, "period": 3600}, metrics=metrics)
    counting = limiter(prefix, {"key": "client_ip", "limit": 1, "period": 3600, "trusted": True,
                                "name": "all"})
    relay = inbound("10.0.0.1", trusted=True)
    local = SessionFacts.create("127.0.0.1", role="local")

    async def scenario():
        exempt = await charges(rl, relay, 3)
        from_local = await rl.charge(local, "r@example.org", first=True)
        counted_too = await charges(counting, relay, 2)
        await rl.close()
        await counting.close()
        return exempt, from_local, counted_too

    exempt, from_local, counted_too = asyncio.run(scenario())
    assert outcomes(exempt) == ["exempt"] * 3 and from_local.outcome == "exempt"
    assert not rl.applies(relay) and counting.applies(relay)
    assert outcomes(counted_too) == ["allowed", "limited"]
    assert keys(server, prefix) == [prefix + "all:10.0.0.1"]     # the exempt ones left none
    assert counted(metrics, "client_ip/3600s", "exempt") == 3
    assert counted(metrics, "client_ip/3600s", "allowed") == 0


# -- keys, tokens and time ----------------------------------------------------------------------
def test_keys_expire_when_the_bucket_is_full_again(server, prefix):
    rl = limiter(prefix, {"key": "client_ip", "limit": 10, "period": 3600})

    async def scenario():
        await rl.charge(inbound("192.0.2.9"), "r@example.org", first=True)
        one = server.pttl(prefix + "client_ip/3600s:192.0.2.9")
        await charges(rl, inbound("192.0.2.9"), 2)
        three = server.pttl(prefix + "client_ip/3600s:192.0.2.9")
        await rl.close()
        return one, three

    one, three = asyncio.run(scenario())
    assert 355_000 < one <= 360_000             # one token out: back in 3600/10 s
    assert 1_075_000 < three <= 1_080_000       # three out
    assert server.ttl(prefix + "client_ip/3600s:192.0.2.9") > 0


def test_tokens_come_back_every_period_over_limit_and_the_key_goes_when_full(server, prefix):
    rl = limiter(prefix, {"key": "client_ip", "limit": 2, "period": 2})
    key = prefix + "client_ip/2s:192.0.2.3"

    async def scenario():
        first = await charges(rl, inbound("192.0.2.3"), 3)
        waited = first[-1].retry_after
        await asyncio.sleep(waited + 0.05)
        after = await charges(rl, inbound("192.0.2.3"), 2)
        left = server.pttl(key)
        await asyncio.sleep(min(left, 2_000) / 1000 + 0.1)     # bounded: a test never hangs
        gone = server.exists(key)
        await rl.close()
        return first, waited, after, left, gone

    first, waited, after, left, gone = asyncio.run(scenario())
    assert outcomes(first) == ["allowed", "allowed", "limited"]
    assert 0.8 < waited <= 1.0
    assert first[-1].refusal.text.endswith("try again in 1 second")
    assert outcomes(after) == ["allowed", "limited"]    # one token back after ~1 s, not two
    assert 1_800 < left <= 2_000
    assert gone == 0


def test_values_cannot_escape_their_key_or_the_reply_line(server, prefix):
    rl = limiter(prefix, {"key": "sender_domain", "limit": 1, "period": 3600},
                 {"key": "recipient", "limit": 1, "period": 3600})
    nasty = "x@evil.example\r\n250 2.0.0 Ok *:authfilter"
    long = "r@" + "a" * 300 + ".example"

    async def scenario():
        await rl.charge(inbound(mail_from=nasty), long, first=True)
        refused = await rl.charge(inbound(mail_from=nasty), "ok@example.org", first=True)
        await rl.close()
        return refused

    refused = asyncio.run(scenario())
    assert refused.outcome == "limited"
    assert "\r" not in refused.refusal.text and "\n" not in refused.refusal.text
    assert refused.refusal.to_bytes().count(b"\r\n") == 1
    found = keys(server, prefix)
    assert len(found) == 2 and all(re.fullmatch(r"[!-~]+", k) for k in found), found
    assert any(re.fullmatch(re.escape(prefix) + r"recipient/3600s:#[0-9a-f]{64}", k) for k in found)
    escaped = "evil.example%0D%0A250%202.0.0%20ok%20%2A:authfilter"
    assert prefix + "sender_domain/3600s:" + escaped in found


# -- when Redis is not there --------------------------------------------------------------------
class Gate:
    """A TCP relay to the real Redis that can be shut: then it takes what the client sends and
    never answers, as a hung Redis does."""

    def __init__(self) -> None:
        self.open = True
        self.swallowed = 0
        self.url = ""

    async def start(self) -> "Gate":
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"
        return self

    async def _relay(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection(*REDIS)

        async def pump(src, dst, from_client: bool) -> None:
            while data := await src.read(65536):
                if self.open:
                    dst.write(data)
                    await dst.drain()
                elif from_client:
                    self.swallowed += len(data)
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False),
                             return_exceptions=True)

    async def stop(self) -> None:
        self.server.close()


def test_unreachable_redis_accepts_by_default_and_the_gauge_reads_0(prefix):
    metrics = Metrics()
    rule = {"key": "client_ip", "limit": 10, "period": 3600}
    closed = f"redis://127.0.0.1:{free_port()}/0"
    rl = limiter(prefix, rule, redis=closed, metrics=metrics)

    async def scenario():
        got = await charges(rl, inbound(), 3)
        await rl.close()
        return got

    got = asyncio.run(scenario())
    assert got == [RateDecision(None, None, "error")] * 3
    assert redis_up(metrics) == 0
    assert counted(metrics, "client_ip/3600s", "error") == 3


def test_unreachable_redis_with_tempfail_gives_451_4_3_0(prefix):
    closed = f"redis://127.0.0.1:{free_port()}/0"
    rl = limiter(prefix, {"key": "client_ip"}, redis=closed, on_redis_error="tempfail")

    async def scenario():
        got = await charges(rl, inbound(), 2)
        await rl.close()
        return got

    for d in asyncio.run(scenario()):
        assert d.outcome == "error" and d.rule is None
        assert d.refusal.code == 451 and d.refusal.text.startswith("4.3.0 ")


def test_a_hung_redis_costs_one_timeout_then_is_skipped_until_the_back_off_ends(server, prefix,
                                                                                caplog):
    metrics = Metrics()
    caplog.set_level(logging.INFO, logger="authfilter.ratelimit")

    async def scenario():
        gate = await Gate().start()
        rl = limiter(prefix, {"key": "client_ip", "limit": 100, "period": 3600}, redis=gate.url,
                     timeout=0.3, error_backoff=1.0, metrics=metrics)
        log: dict = {}
        log["up"] = await rl.charge(inbound(), "r@example.org", first=True)
        log["gauge_up"] = redis_up(metrics)
        gate.open = False
        started = time.monotonic()
        log["first"] = await rl.charge(inbound(), "r@example.org", first=True)
        log["first_s"] = time.monotonic() - started
        sent = gate.swallowed
        started = time.monotonic()
        log["skipped"] = [await rl.charge(inbound(), "r@example.org", first=True)
                          for _ in range(20)]
        log["skipped_s"] = (time.monotonic() - started) / 20
        log["asked_while_skipping"] = gate.swallowed - sent
        log["gauge_down"] = redis_up(metrics)
        log["lines_down"] = len([r for r in caplog.records if r.name == "authfilter.ratelimit"])
        await asyncio.sleep(1.05)                       # the back-off is over
        gate.open = True
        log["back"] = await rl.charge(inbound(), "r@example.org", first=True)
        log["gauge_back"] = redis_up(metrics)
        await rl.close()
        await gate.stop()
        return log

    log = asyncio.run(scenario())
    assert log["up"].outcome == "allowed" and log["gauge_up"] == 1
    assert log["first"].outcome == "error" and 0.25 < log["first_s"] < 0.6
    assert all(d.outcome == "error" for d in log["skipped"])
    assert log["skipped_s"] < 0.005 and log["asked_while_skipping"] == 0
    assert log["gauge_down"] == 0
    assert log["back"].outcome == "allowed" and log["gauge_back"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "authfilter.ratelimit"]
    assert log["lines_down"] == 1 and "failed (no answer within 0.3 s)" in messages[0]
    assert "accepting mail" in messages[0]
    assert len(messages) == 2 and "answers again" in messages[1] and "21 decisions" in messages[1]


def test_the_callers_deadline_bounds_the_wait(server, prefix):
    async def scenario():
        gate = await Gate().start()
        gate.open = False
        rl = limiter(prefix, {"key": "client_ip"}, redis=gate.url, timeout=2.0)
        started = time.monotonic()
        d = await rl.charge(inbound(), "r@example.org", first=True,
                            deadline=time.monotonic() + 0.1)
        took = time.monotonic() - started
        late = await limiter(prefix, {"key": "client_ip"}, redis=gate.url).charge(
            inbound(), "r@example.org", first=True, deadline=time.monotonic() - 1)
        await rl.close()
        await gate.stop()
        return d, took, late

    d, took, late = asyncio.run(scenario())
    assert d.outcome == "error" and took < 0.3
    assert late.outcome == "error"


def test_the_script_is_loaded_again_after_a_script_flush(server, prefix):
    rl = limiter(prefix, {"key": "client_ip", "limit": 3, "period": 3600})

    async def scenario():
        before = await charges(rl, inbound(), 2)
        server.script_flush()
        after = await charges(rl, inbound(), 2)
        await rl.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert outcomes(before + after) == ["allowed", "allowed", "allowed", "limited"]
