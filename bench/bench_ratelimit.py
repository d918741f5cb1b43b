"""Latency of one rate-limit decision (``RateLimiter.charge``) against a real Redis.

    python bench/bench_ratelimit.py [--redis redis://127.0.0.1:6379/0] [--seconds 2] [--rounds 3]
                                    [--loop asyncio|uvloop]

Charges one after another from one process, as one worker does for one RCPT after another,
each one round trip (one EVALSHA over every bucket of the decision), and prints the wall time
per charge (p50 and p99 microseconds: what a client waits for at RCPT beyond the MTA's own)
and the CPU microseconds per charge in this process, for:

* ``1 rule``: client_ip;
* ``3 rules``: client_ip, sender_domain and recipient (three buckets in one script call);
* ``redis down``: the 1 rule against a closed port, inside the back-off (Redis is not asked).

Clients come from 1,000 addresses and 100 sender domains, so the buckets are many, as in
production; the limits are high enough that nothing is refused.  The keys go under a prefix of
the bench's own and are deleted at the end.  The least disturbed round (lowest p50) is shown.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import statistics
import time
import uuid

import common  # noqa: F401  (puts the checkout on sys.path)

from authfilter.config import from_dict
from authfilter.ratelimit import RateLimiter
from authfilter.results import SessionFacts

RULES = [{"key": "client_ip", "limit": 10**9, "period": 3600},
         {"key": "sender_domain", "limit": 10**9, "period": 3600},
         {"key": "recipient", "limit": 10**9, "period": 3600}]
FACTS = [SessionFacts.create(f"198.51.{i // 250}.{i % 250 + 1}", helo="mail.bench.example",
                             mail_from=f"sender@d{i % 100}.bench.example") for i in range(1000)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def limiter(redis: str, prefix: str, rules: int) -> RateLimiter:
    return RateLimiter.from_config(from_dict({"ratelimit": {
        "redis": redis, "key_prefix": prefix, "rules": RULES[:rules]}}))


async def measure(rl: RateLimiter, seconds: float, expect: str) -> tuple[list[float], float]:
    for facts in FACTS[:20]:                             # connects, loads the script
        await rl.charge(facts, "user@sink.example", first=True)
    waits: list[float] = []
    n, start_cpu, start = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or n < 100:
        facts = FACTS[n % len(FACTS)]
        began = time.perf_counter()
        decision = await rl.charge(facts, f"user{n % 50}@sink.example", first=True)
        waits.append(time.perf_counter() - began)
        assert decision.outcome == expect, decision
        n += 1
    cpu = (time.process_time() - start_cpu) / n
    await rl.close()
    return waits, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per case and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = ap.parse_args()
    logging.getLogger("authfilter.ratelimit").setLevel(logging.ERROR)   # 'Redis down' lines
    run = asyncio.run
    if args.loop == "uvloop":
        import uvloop
        run = uvloop.run
    prefix = f"bench:{uuid.uuid4().hex}:"
    down = f"redis://127.0.0.1:{closed_port()}/0"
    cases = {"1 rule": (args.redis, 1, "allowed"), "3 rules": (args.redis, 3, "allowed"),
             "redis down": (down, 1, "error")}
    results: dict[str, list[tuple[list[float], float]]] = {name: [] for name in cases}
    try:
        for _ in range(args.rounds):                     # rounds alternate the cases
            for name, (url, rules, expect) in cases.items():
                results[name].append(run(measure(limiter(url, prefix, rules), args.seconds,
                                                 expect)))
    finally:
        import redis
        client = redis.Redis.from_url(args.redis)
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
        client.close()
    print(f"event loop: {args.loop}, Redis: {args.redis}")
    print(f"{'case':<12} {'charges':>8} {'p50 us':>8} {'p99 us':>8} {'CPU us':>8}")
    for name, rounds in results.items():
        waits, cpu = min(rounds, key=lambda r: statistics.median(r[0]))
        waits = sorted(waits)
        p50 = statistics.median(waits) * 1e6
        p99 = waits[int(len(waits) * 0.99) - 1] * 1e6
        print(f"{name:<12} {len(waits):>8} {p50:>8.0f} {p99:>8.0f} {cpu * 1e6:>8.0f}")


if __name__ == "__main__":
    main()
