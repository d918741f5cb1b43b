"""When the engine hands a big message to its executor: only while other sessions share the
event loop (they would wait for its canonicalization and hashing); alone, the message is
checked in place, which saves copying it to a worker process and back.  Same verdict either way."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from authfilter.config import Config
from authfilter.engine import OFFLOAD_BYTES, Engine
from authfilter.results import SessionFacts


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_big_message_goes_to_the_executor_only_while_the_loop_is_shared(zone, resolver):
    zone.add("example.org", "TXT", "v=spf1 -all")
    zone.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    big = b"From: a@example.org\r\nSubject: big\r\n\r\n" + b"line of text\r\n" * (OFFLOAD_BYTES // 14 + 1)
    small = b"From: a@example.org\r\n\r\nsmall\r\n"
    facts = SessionFacts.create("192.0.2.1", helo="mx.example.org", mail_from="a@example.org",
                                recipients=["b@example.net"])
    shared = [False]
    with CountingExecutor() as executor:
        engine = Engine(Config(), resolver, executor, loop_shared=lambda: shared[0])

        async def verdicts():
            alone = await engine.evaluate(facts, big, now=0)
            counted_alone = executor.submitted
            shared[0] = True
            beside_others = await engine.evaluate(facts, big, now=0)
            await engine.evaluate(facts, small, now=0)
            return alone, counted_alone, beside_others

        alone, counted_alone, beside_others = asyncio.run(verdicts())
    assert counted_alone == 0 and executor.submitted == 1
    assert alone == beside_others and alone.dmarc.result == "fail"
