"""[ratelimit]: defaults, validation with problems naming the key, and what a limiter is made of
a config (no Redis needed here: see tests/integration/test_ratelimit_redis.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from authfilter.config import ConfigError, from_dict, to_dict, to_toml
from authfilter.ratelimit import RateLimiter
from authfilter.results import SessionFacts

ROOT = Path(__file__).resolve().parents[2]


def test_no_rules_by_default_so_no_limiter_and_no_redis_import():
    config = from_dict({})
    assert config.ratelimit.rules == []
    assert config.ratelimit.on_redis_error == "accept"
    assert RateLimiter.from_config(config) is None
    # a start-up without rate limits does not pay for importing redis (a fresh interpreter)
    code = ("import sys; from authfilter.config import from_dict; from authfilter.ratelimit import "
            "RateLimiter; assert RateLimiter.from_config(from_dict({})) is None; "
            "print('redis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_a_rule_gets_its_defaults_and_a_name():
    config = from_dict({"ratelimit": {"rules": [{"key": "client_net", "limit": 50, "period": 60},
                                                {"key": "recipient", "name": "per-rcpt"}]}})
    net, rcpt = config.ratelimit.rules
    assert (net.label, net.action, net.roles, net.trusted) == \
        ("client_net/60s", "tempfail", ["inbound", "submission"], False)
    assert (net.ipv4_prefix, net.ipv6_prefix) == (24, 64)
    assert (rcpt.label, rcpt.limit, rcpt.period) == ("per-rcpt", 100, 3600.0)


@pytest.mark.parametrize("section, problem", [
    ({"rules": [{"key": "client"}]},
     'ratelimit.rules[0].key: "client" is not one of \'client_ip\', \'client_net\''),
    ({"rules": [{"key": "client_ip"}, {"key": "ip"}]}, "ratelimit.rules[1].key: "),
    ({"rules": [{"limit": 0}]}, "ratelimit.rules[0].limit: 0 is below the minimum 1"),
    ({"rules": [{"limit": "ten"}]}, 'ratelimit.rules[0].limit: expected an integer, got "ten"'),
    ({"rules": [{"period": 0.5}]}, "ratelimit.rules[0].period: 0.5 is below the minimum 1"),
    ({"rules": [{"action": "drop"}]},
     "ratelimit.rules[0].action: \"drop\" is not one of 'tempfail', 'reject'"),
    ({"rules": [{"roles": ["local"]}]},
     "ratelimit.rules[0].roles[0]: \"local\" is not one of 'inbound', 'submission'"),
    ({"rules": [{"roles": []}]}, "ratelimit.rules[0].roles: give inbound or submission or both"),
    ({"rules": [{"ipv4_prefix": 33}]},
     "ratelimit.rules[0].ipv4_prefix: 33 is above the maximum 32"),
    ({"rules": [{"name": "two words"}]}, "ratelimit.rules[0].name: 'two words': up to 64"),
    ({"rules": [{"limit": 10**9, "period": 60}]},
     "ratelimit.rules[0]: limit 1000000000 per 60 s is over 1,000,000 per second"),
    ({"rules": [{"key": "client_ip"}, {"key": "client_ip"}]},
     "ratelimit: rules[1].name: 'client_ip/3600s' is also the name of rules[0]"),
    ({"rules": [{"key": "client_ip", "max-rate": 5}]},
     "ratelimit.rules[0].max-rate: unknown key"),
    ({"redis": "http://127.0.0.1:6379"},
     "ratelimit.redis: 'http://127.0.0.1:6379' is not redis://"),
    ({"redis": "redis://:6379/0"}, "ratelimit.redis: 'redis://:6379/0' is not redis://"),
    ({"redis": "redis://127.0.0.1:99999/0"}, "ratelimit.redis: 'redis://127.0.0.1:99999/0' is not"),
    ({"redis": "redis://127.0.0.1/zero"}, "ratelimit.redis: 'redis://127.0.0.1/zero' is not"),
    ({"redis": "unix://run/redis.sock"}, "ratelimit.redis: 'unix://run/redis.sock' is not"),
    ({"on_redis_error": "reject"},
     "ratelimit.on_redis_error: \"reject\" is not one of 'accept', 'tempfail'"),
    ({"timeout": 0}, "ratelimit.timeout: 0.0 is below the minimum 0.01"),
    ({"key_prefix": "rate limits:"}, "ratelimit.key_prefix: 'rate limits:': use printable ASCII"),
])
def test_problems_name_the_key(section, problem):
    with pytest.raises(ConfigError) as caught:
        from_dict({"ratelimit": section})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://redis.internal",
                                 "rediss://:secret@10.0.0.5:6380/2", "redis://[::1]:6379/1",
                                 "unix:///run/redis/redis.sock", "unix:///run/redis.sock?db=3"])
def test_redis_urls_accepted(url):
    assert from_dict({"ratelimit": {"redis": url}}).ratelimit.redis == url


def test_show_round_trips_the_rules_through_toml():
    import tomllib
    config = from_dict({"ratelimit": {"rules": [{"key": "sender_domain", "limit": 500,
                                                 "period": 86400, "action": "reject"}]}})
    shown = to_toml(to_dict(config))
    assert "[[ratelimit.rules]]" in shown
    assert from_dict(tomllib.loads(shown)).ratelimit == config.ratelimit


def limiter(*rules: dict) -> RateLimiter:
    return RateLimiter.from_config(from_dict({"ratelimit": {"rules": list(rules)}}))


def test_applies_only_where_a_rule_could_count():
    """Without Redis: which transactions the pipeline needs to ask about at all."""
    inbound = SessionFacts.create("192.0.2.1", mail_from="a@example.com")
    trusted = SessionFacts.create("127.0.0.1", mail_from="a@example.com", trusted=True)
    local = SessionFacts.create("127.0.0.1", role="local")
    null_sender = SessionFacts.create("192.0.2.1", mail_from="")
    no_address = SessionFacts.create(None, mail_from="a@example.com")
    login = SessionFacts.create("198.51.100.7", role="submission", trusted=True, auth_user="alice")

    ip = limiter({"key": "client_ip"})
    assert ip.applies(inbound) and not ip.applies(trusted) and not ip.applies(local)
    assert not ip.applies(no_address)
    assert limiter({"key": "client_ip", "trusted": True}).applies(trusted)
    assert not limiter({"key": "client_ip", "roles": ["submission"]}).applies(inbound)

    domain = limiter({"key": "sender_domain"})
    assert domain.applies(inbound) and not domain.applies(null_sender)

    user = limiter({"key": "auth_user", "roles": ["submission"]})
    assert user.applies(login)            # logged in: counted although the milter trusts it
    assert not user.applies(inbound)

    rcpt = limiter({"key": "recipient"})
    assert rcpt.applies(null_sender) and not rcpt.applies(trusted) and not rcpt.applies(local)
