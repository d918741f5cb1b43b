"""CPU cost of the verification engine alone, warm DNS cache.

    python bench/bench_engine.py [--seconds 2]

For 4 KB, 100 KB and 2 MB ordinary text messages with one RSA-2048 relaxed/relaxed signature,
SPF with two includes and a DMARC record, it prints the CPU milliseconds per message of
``Engine.evaluate`` (SPF + DKIM + ARC + DMARC + A-R header), and the same for a 2 MB body made of
whitespace runs (the slow case for relaxed canonicalization).  DNS answers come from a real
loopback DNS server once, then from the resolver's cache, as in production.
"""
from __future__ import annotations

import argparse
import asyncio
import time

from common import SIZES, dns_server, message, rsa_key, text_body, whitespace_body

from authfilter.authres import build_header
from authfilter.config import Config
from authfilter.dns import Resolver
from authfilter.engine import Engine
from authfilter.results import SessionFacts


async def measure(engine: Engine, facts: SessionFacts, raw: bytes, seconds: float) -> tuple[float, str]:
    verdict = await engine.evaluate(facts, raw)          # warms the cache
    summary = f"spf={verdict.spf.result} dkim={','.join(d.result for d in verdict.dkim)} dmarc={verdict.dmarc.result}"
    n, start_cpu, start = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or n < 5:
        verdict = await engine.evaluate(facts, raw)
        build_header("mx.bench.example", facts, verdict)
        n += 1
    return (time.process_time() - start_cpu) / n * 1000, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per case")
    args = ap.parse_args()
    pem, pub = rsa_key()
    server = dns_server(pub)
    engine = Engine(Config(), Resolver([server.address]))
    facts = SessionFacts.create("127.0.0.1", helo="mail.bench.example",
                                mail_from="someone@bench.example", recipients=["user@sink.example"])
    cases = [(name, message(text_body(size), pem)) for name, size in SIZES.items()]
    cases.append(("2m-whitespace", message(whitespace_body(SIZES["2m"]), pem)))
    print(f"{'message':<15} {'bytes':>9} {'CPU ms/msg':>11}  verdict")
    for name, raw in cases:
        ms, summary = asyncio.run(measure(engine, facts, raw, args.seconds))
        print(f"{name:<15} {len(raw):>9} {ms:>11.3f}  {summary}")
    server.stop()


if __name__ == "__main__":
    main()
