"""What the early defences add per message, warm DNS cache, one process.

    python bench/bench_defences.py [--seconds 2] [--rounds 3] [--redis redis://127.0.0.1:6379/15]

A 4 KB message with one RSA-2048 signature (SPF, DKIM and DMARC pass) through the pipeline
as a front-end drives it for a new client connection: ``Pipeline.client`` (the client checks
start), ``begin``, one ``recipient`` (the RCPT decision), ``finish``, ``done``.  For each
configuration, CPU milliseconds per message and the RCPT decision's wall time (p50 and p99
microseconds, the time a client waits for the RCPT reply beyond the MTA's own):

* ``none``: iprev off, no lists, no rate limit (the cost of the pipeline without defences);
* ``iprev``: the reverse DNS check (on by default);
* ``iprev+3 dnsbl``: and three IP blocklists, not listed;
* ``iprev+3 dnsbl+ratelimit``: and two rate-limit rules (client_ip, sender_domain) in Redis,
  one round trip per message (only with ``--redis``; a database the bench may fill).

The DNS answers come from the loopback DNS server once and then from the resolver's cache, as
for a client that comes back within the answers' TTL.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import uuid

from common import SIZES, dns_server, message, rsa_key, text_body

from authfilter.config import DnsblListConfig, from_dict
from authfilter.dns import Resolver
from authfilter.pipeline import Pipeline
from authfilter.results import SessionFacts
from authfilter.runtime import Runtime

CLIENT = "127.0.0.1"
FACTS = SessionFacts.create(CLIENT, helo="mail.bench.example", mail_from="someone@bench.example")
LISTS = ("bl1.bench", "bl2.bench", "bl3.bench")


def pipeline_for(server, *, iprev: bool, lists: int, redis: str | None) -> Pipeline:
    settings: dict = {"policy": {"trusted_networks": []}, "iprev": {"enabled": iprev},
                      "dnsbl": {"lists": [{"zone": z} for z in LISTS[:lists]]}}
    if redis:
        settings["ratelimit"] = {"redis": redis, "key_prefix": f"bench:{uuid.uuid4().hex}:",
                                 "rules": [{"key": "client_ip", "limit": 10**9, "period": 3600},
                                           {"key": "sender_domain", "limit": 10**9,
                                            "period": 3600}]}
    config = from_dict(settings)
    runtime = Runtime.build(config, Resolver([server.address]))
    if redis:
        from authfilter.ratelimit import RateLimiter
        runtime.ratelimiter = RateLimiter.from_config(config, runtime.metrics)
    return Pipeline(runtime)


async def measure(pipeline: Pipeline, raw: bytes, seconds: float) -> tuple[float, list[float]]:
    waits: list[float] = []

    async def one() -> None:
        client = pipeline.client(CLIENT)
        tx = pipeline.begin(FACTS, client=client)
        started = time.perf_counter()
        refusal = await tx.recipient("user@sink.example")
        waits.append(time.perf_counter() - started)
        assert refusal is None, refusal
        tx.add_recipient("user@sink.example")
        d = await tx.finish(raw, crlf_only=True)
        assert d.action == "accept", d.decision
        await tx.done(upstream_reply=(250, "2.0.0 Ok: queued as BENCH"))
        client.close()

    for _ in range(3):
        await one()                                       # warms the cache
    waits.clear()
    n, start_cpu, start = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or n < 5:
        await one()
        n += 1
    return (time.process_time() - start_cpu) / n * 1000, waits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per case and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--redis", help="a Redis URL for the rate-limit case, e.g. "
                                    "redis://127.0.0.1:6379/15")
    args = ap.parse_args()
    message_log = logging.getLogger("authfilter.message")
    message_log.addHandler(logging.NullHandler())
    message_log.setLevel(logging.INFO)
    message_log.propagate = False
    pem, pub = rsa_key()
    server = dns_server(pub)
    server.add("1.0.0.127.in-addr.arpa", "PTR", "mail.bench.example.")
    server.add("mail.bench.example", "A", CLIENT)
    raw = message(text_body(SIZES["4k"]), pem)
    cases = {"none": dict(iprev=False, lists=0, redis=None),
             "iprev": dict(iprev=True, lists=0, redis=None),
             "iprev+3 dnsbl": dict(iprev=True, lists=3, redis=None)}
    if args.redis:
        cases["iprev+3 dnsbl+ratelimit"] = dict(iprev=True, lists=3, redis=args.redis)
    results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in cases}
    for _ in range(args.rounds):                          # rounds alternate the cases
        for name, case in cases.items():
            results[name].append(asyncio.run(measure(pipeline_for(server, **case), raw,
                                                     args.seconds)))
    print(f"{'case':<26} {'CPU ms/msg':>10} {'added':>8} {'RCPT p50 us':>12} {'RCPT p99 us':>12}")
    base = min(cpu for cpu, _ in results["none"])
    for name, rounds in results.items():
        cpu, waits = min(rounds, key=lambda r: r[0])     # the least disturbed round
        waits = sorted(waits)
        p50 = statistics.median(waits) * 1e6
        p99 = waits[int(len(waits) * 0.99) - 1] * 1e6
        print(f"{name:<26} {cpu:>10.3f} {cpu - base:>+8.3f} {p50:>12.0f} {p99:>12.0f}")
    server.stop()


if __name__ == "__main__":
    main()
