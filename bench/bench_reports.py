"""DMARC report costs: recording in the SMTP path, and building the reports of a busy day.

    python bench/bench_reports.py [--rows 1000000] [--store sqlite|postgresql://...] [--repeat 5]

1. ``record()``: the cost the SMTP path pays per message (a verdict with two DKIM signatures,
   built once; the row, the report-loop check and the deque append).  Median of ``--repeat``
   runs of 100,000 calls, in microseconds.  Budget: 50 µs.
2. One period with ``--rows`` rows (default 1,000,000) spread over 2,000 policy domains and
   50,000 source addresses (half the mail from 100 big senders, half from all of them, which
   leaves few identical rows to group: the hard case for report size), written
   in batches of 5,000 as the recorder does; then every report of the period built and
   gzipped (what ``report send`` does before mailing).  Budget: 60 s for 1,000,000 rows.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from authfilter.reports.aggregate import Reporter, build_reports, period_start  # noqa: E402
from authfilter.reports.backends import open_store  # noqa: E402
from authfilter.reports.recorder import Recorder  # noqa: E402
from authfilter.reports.rows import EvaluationRow  # noqa: E402
from authfilter.results import (ArcResult, DkimResult, DmarcResult, SessionFacts,  # noqa: E402
                                SpfResult, Verdict)

DAY = 86400
BEGIN = period_start(int(time.time()) - 2 * DAY, DAY)
REPORTER = Reporter("Bench Receiver", "dmarc@receiver.example", "receiver.example")


def bench_record(repeat: int) -> float:
    facts = SessionFacts.create("192.0.2.44", helo="mx.sender.example", mail_from="a@example.com",
                                recipients=["u@receiver.example"])
    verdict = Verdict(
        spf=SpfResult("pass", "mailfrom", "example.com"),
        dkim=(DkimResult("pass", "example.com", "s2026", "rsa-sha256"),
              DkimResult("pass", "esp.example", "k1", "rsa-sha256")),
        arc=ArcResult("none"),
        dmarc=DmarcResult("pass", "example.com", "example.com", "example.com", policy="reject",
                          spf_aligned=True, dkim_aligned=True,
                          record={"v": "DMARC1", "p": "reject", "rua": "mailto:d@example.com"}))
    headers = [(b"From", b" a@example.com\r\n"), (b"Subject", b" Hello\r\n"),
               (b"Content-Type", b" text/plain\r\n")]
    n = 100_000
    runs = []
    for _ in range(repeat):
        recorder = Recorder(lambda: None, buffer_rows=n + 1)
        t = time.perf_counter()
        for _ in range(n):
            recorder.record(facts, verdict, "none", headers=headers)
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def synthetic_rows(count: int, seed: int = 7):
    rnd = random.Random(seed)
    domains = [f"d{i}.example" for i in range(2000)]
    sources = [f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}."
               f"{rnd.randint(1, 254)}" for _ in range(50_000)]
    for i in range(count):
        domain = domains[min(int(rnd.paretovariate(1.2)) - 1, 1999)]
        ip = sources[rnd.randrange(100) if rnd.random() < 0.5 else rnd.randrange(50_000)]
        passed = rnd.random() < 0.85
        yield EvaluationRow(
            BEGIN + i % DAY, domain, domain, domain, domain if passed else "bounce.example", "",
            ip, domain, "mfrom", "pass" if passed else "fail",
            f"{domain}\ts1\tpass" if passed else f"{domain}\ts1\tfail", int(passed), int(passed),
            "none" if passed else rnd.choice(("none", "quarantine", "reject")), "",
            f"p=reject;sp=quarantine;rua=mailto:dmarc@{domain}", "treewalk")


def bench_generate(url: str, rows: int) -> tuple[float, float, int, int, int]:
    store = open_store(url)
    try:
        t = time.perf_counter()
        batch: list[EvaluationRow] = []
        for row in synthetic_rows(rows):
            batch.append(row)
            if len(batch) == 5000:
                store.insert_rows(batch)
                batch = []
        store.insert_rows(batch)
        insert = time.perf_counter() - t

        t = time.perf_counter()
        reports = records = size = 0
        for report in build_reports(store, REPORTER, BEGIN, DAY):
            size += len(report.gzipped(REPORTER))
            reports += 1
            records += len(report.records)
        generate = time.perf_counter() - t
    finally:
        store.close()
    return insert, generate, reports, records, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--store", default="sqlite",
                        help="sqlite (a temporary file) or a postgresql:// URL (a scratch schema "
                             "is created and dropped)")
    args = parser.parse_args()

    print(f"record(): {bench_record(args.repeat):.1f} µs per message (median of {args.repeat} "
          f"x 100,000; budget 50 µs)")

    if args.store == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            result = bench_generate(f"sqlite://{tmp}/bench.sqlite", args.rows)
    else:
        import psycopg
        schema = f"authfilter_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.store, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
            try:
                sep = "&" if "?" in args.store else "?"
                result = bench_generate(f"{args.store}{sep}options=-csearch_path%3D{schema}",
                                        args.rows)
            finally:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
    insert, generate, reports, records, size = result
    print(f"store ({args.store.split(':')[0]}): {args.rows:,} rows written in {insert:.1f} s "
          f"({args.rows / insert:,.0f} rows/s)")
    print(f"generate: {reports:,} reports, {records:,} records, {size / 1e6:.1f} MB gzipped in "
          f"{generate:.1f} s (budget 60 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
