"""A 4 KB message's latency through the proxy while another session sends a fold bomb.

    python bench/bench_foldbomb.py [--seconds 10] [--folds 400000] [--bombers 1] [--pause 0]
                                   [--workers 1] [--json FILE]

Set-up as in bench/bench_proxy.py, all on loopback: the loopback DNS server, the sink SMTP
server in its own process, ``authfilter serve`` relaying to it.  One worker by default, so that
every session shares one event loop (with more, the kernel may hand the two sessions to
different workers and hide a stall).  An asyncio client sends one DKIM-signed 4 KB message at a
time (SPF, DKIM and DMARC pass; EHLO, XFORWARD, MAIL, RCPT, DATA, QUIT, as Postfix does), first
alone, then while ``--bombers`` other sessions send, back to back (or ``--pause`` seconds
apart), a message whose Subject is folded ``--folds`` times (4 bytes a fold: 1.6 MB for 400,000; issue 15 measured 11.9 s for the
4 KB message beside it, against 1.8 ms alone).

Latency is from connect to the reply to end of data.  Printed: p50/p99 of the 4 KB messages
alone and beside the bomb, the difference ("added"; issue 15's target: p99 under 50 ms), and
the bombs sent with the replies they got and how long each took.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_proxy import (CLIENT_IP, _reply, load, percentile,  # noqa: E402
                               proxy_under_test, wire)
from bench.common import DOMAIN, dns_server, message, rsa_key, text_body  # noqa: E402


def fold_bomb(folds: int) -> bytes:
    head = (f"From: Someone <someone@{DOMAIN}>\r\nTo: user@sink.example\r\n"
            f"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bomb@{DOMAIN}>\r\n").encode()
    return wire(head + b"Subject: x" + b"\r\n x" * folds + b"\r\n\r\nbody\r\n")


async def send_bomb(port: int, payload: bytes) -> tuple[int, float]:
    """One fold-bomb message: (the reply code to end of data, seconds to it)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    try:
        await _reply(reader)
        for step in (b"EHLO bomber.example\r\n",
                     f"XFORWARD ADDR=192.0.2.66 HELO=bomber.{DOMAIN} SOURCE=REMOTE\r\n".encode(),
                     f"MAIL FROM:<someone@{DOMAIN}>\r\n".encode(), b"RCPT TO:<user@sink.example>\r\n",
                     b"DATA\r\n"):
            writer.write(step)
            if await _reply(reader) >= 400:
                return 0, time.perf_counter() - start
        writer.write(payload)
        code = await _reply(reader)
        writer.write(b"QUIT\r\n")
        return code, time.perf_counter() - start
    finally:
        writer.close()


async def beside_bombs(port: int, small: bytes, bomb: bytes, bombers: int, seconds: float,
                       pause: float) -> tuple[list[float], list[tuple[int, float]]]:
    done = asyncio.Event()
    bombs: list[tuple[int, float]] = []

    async def bomber():
        while not done.is_set():
            try:
                bombs.append(await send_bomb(port, bomb))
            except (OSError, ConnectionError) as exc:
                bombs.append((-1, 0.0))
                print(f"  bomb: {exc}", file=sys.stderr)
            if pause:
                await asyncio.sleep(pause)
    tasks = [asyncio.create_task(bomber()) for _ in range(bombers)]
    await asyncio.sleep(0.2)                       # the first bomb is on its way
    latencies, _, _ = await load(port, small, 1, 1_000_000, seconds, True)
    done.set()
    await asyncio.gather(*tasks)
    return latencies, bombs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="time of each measured run")
    ap.add_argument("--folds", type=int, default=400_000, help="continuation lines of the bomb's Subject")
    ap.add_argument("--bombers", type=int, default=1, help="sessions sending bombs back to back")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between a session's bombs")
    ap.add_argument("--workers", type=int, default=1, help="proxy.workers")
    ap.add_argument("--offload", type=int, default=1, help="proxy.offload_workers")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()

    pem, pub = rsa_key()
    dns = dns_server(pub)
    small, bomb = wire(message(text_body(4 * 1024), pem)), fold_bomb(a.folds)
    try:
        with proxy_under_test(dns.address, workers=a.workers, offload=a.offload,
                              prefix="bench-foldbomb-") as (proxy_port, _, _):
            asyncio.run(load(proxy_port, small, 1, 50, 30, True))                # warm up
            alone = asyncio.run(load(proxy_port, small, 1, 1_000_000, a.seconds, True))[0]
            beside, bombs = asyncio.run(beside_bombs(proxy_port, small, bomb, a.bombers,
                                                     a.seconds, a.pause))
    finally:
        dns.stop()
    row = {"folds": a.folds, "bomb_bytes": len(bomb), "workers": a.workers, "bombers": a.bombers,
           "pause_s": a.pause,
           "alone_p50_ms": percentile(alone, 0.5), "alone_p99_ms": percentile(alone, 0.99),
           "beside_p50_ms": percentile(beside, 0.5), "beside_p99_ms": percentile(beside, 0.99),
           "beside_max_ms": max(beside) * 1000 if beside else float("nan"),
           "messages_alone": len(alone), "messages_beside": len(beside),
           "bombs": len(bombs), "bomb_replies": dict(Counter(code for code, _ in bombs)),
           "bomb_p50_s": percentile([s for _, s in bombs], 0.5) / 1000}
    row["added_p50_ms"] = row["beside_p50_ms"] - row["alone_p50_ms"]
    row["added_p99_ms"] = row["beside_p99_ms"] - row["alone_p99_ms"]
    pace = f"{a.pause} s apart" if a.pause else "back to back"
    print(f"fold bomb: {a.folds} folds, {len(bomb) / 1e6:.1f} MB, {a.bombers} session(s) {pace}; "
          f"{a.workers} worker(s), client {CLIENT_IP}")
    print(f"{'4 KB':<8} {'msgs':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'alone':<8} {len(alone):>6} {row['alone_p50_ms']:>8.2f} {row['alone_p99_ms']:>8.2f} "
          f"{max(alone) * 1000:>8.2f}")
    print(f"{'beside':<8} {len(beside):>6} {row['beside_p50_ms']:>8.2f} {row['beside_p99_ms']:>8.2f} "
          f"{row['beside_max_ms']:>8.2f}")
    print(f"{'added':<8} {'':>6} {row['added_p50_ms']:>8.2f} {row['added_p99_ms']:>8.2f}")
    print(f"bombs: {len(bombs)} sent, replies {row['bomb_replies']}, p50 {row['bomb_p50_s']:.2f} s each")
    if a.json:
        Path(a.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
