"""What the pipeline layer costs on top of the engine, warm DNS cache, one process.

    python bench/bench_pipeline.py [--seconds 2] [--rounds 3]

For 4 KB, 100 KB and 2 MB text messages with one RSA-2048 signature (SPF, DKIM and DMARC
pass), CPU milliseconds per message of

* ``engine``: ``Engine.evaluate`` and the Authentication-Results header, the checks alone;
* ``pipeline``: ``Pipeline.begin`` + ``Transaction.finish`` + ``done`` — trust, forged-field
  search, the same checks, policy, the header fields to add, the log record (formatted, to a
  null handler, as ``serve`` formats it), metrics;

and their difference, the pipeline's own cost.  Rounds alternate the two so that a change in
the machine's speed hits both alike.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import time

from common import SIZES, dns_server, message, rsa_key, text_body

from authfilter.authres import build_header
from authfilter.config import Config
from authfilter.dns import Resolver
from authfilter.pipeline import Pipeline
from authfilter.results import SessionFacts
from authfilter.runtime import Runtime

FACTS = SessionFacts.create("127.0.0.1", helo="mail.bench.example",
                            mail_from="someone@bench.example", recipients=["user@sink.example"])


async def per_message(step, seconds: float) -> float:
    await step()                                          # warms the cache
    n, start_cpu, start = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or n < 5:
        await step()
        n += 1
    return (time.process_time() - start_cpu) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per case and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    message_log = logging.getLogger("authfilter.message")
    message_log.addHandler(logging.NullHandler())
    message_log.setLevel(logging.INFO)                    # the record is built and formatted
    message_log.propagate = False
    pem, pub = rsa_key()
    server = dns_server(pub)
    config = Config()
    config.policy.trusted_networks = []
    runtime = Runtime.build(config, Resolver([server.address]))
    pipeline, engine = Pipeline(runtime), runtime.engine
    authserv_id = runtime.authserv_id

    print(f"{'message':<8} {'engine ms':>10} {'pipeline ms':>12} {'difference':>11}")
    for name, size in SIZES.items():
        raw = message(text_body(size), pem)

        async def checks_alone():
            verdict = await engine.evaluate(FACTS, raw, crlf_only=True)
            build_header(authserv_id, FACTS, verdict)

        async def through_pipeline():
            tx = pipeline.begin(FACTS)
            d = await tx.finish(raw, crlf_only=True)
            assert d.action == "accept", d.decision
            await tx.done(upstream_reply=(250, "2.0.0 Ok: queued as BENCH"))

        engine_ms, pipeline_ms = [], []
        for _ in range(args.rounds):
            engine_ms.append(asyncio.run(per_message(checks_alone, args.seconds)))
            pipeline_ms.append(asyncio.run(per_message(through_pipeline, args.seconds)))
        e, p = min(engine_ms), min(pipeline_ms)             # the least disturbed round of each
        print(f"{name:<8} {e:>10.3f} {p:>12.3f} {p - e:>+11.3f}")
    server.stop()


if __name__ == "__main__":
    main()
