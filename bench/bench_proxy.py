"""The SMTP proxy under load: messages per second, latency, CPU per message, peak memory.

    python bench/bench_proxy.py [--cells 4k:1,4k:50,100k:1,100k:50,2m:1,2m:50] [--seconds 8]
                                [--workers 2] [--offload 1]

Set-up, all on loopback: the loopback DNS server (warm cache: every cell is warmed up first),
a sink SMTP server in its own process (bulk DATA reads, "250 queued as"), ``authfilter serve``
as a subprocess relaying to that sink, and an asyncio SMTP client in this process that sends
one DKIM-signed message (4 KB, 100 KB or 2 MB; SPF, DKIM and DMARC pass) per connection, the
way Postfix's smtpd talks to a before-queue filter (EHLO, XFORWARD, MAIL, RCPT, DATA, QUIT),
at a fixed concurrency.  Each cell runs twice: through the proxy, and against the sink
directly; "added p50/p99" is the difference in latency (connect to the reply to end of data).

CPU ms/msg is user+system time of the proxy's processes (supervisor, workers and the offload
pool, from /proc) during the measured run, divided by the messages sent; the system part is
shown in brackets (on loopback the kernel runs the receiving side of every send in the
sender's time).  Peak RSS is the
largest VmHWM among those processes, and their sum.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DOMAIN, SIZES, dns_server, message, rsa_key, text_body  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT_IP = "127.0.0.1"


# -- the sink (runs as a separate process: python bench/bench_proxy.py --sink PORT) ----------
async def _sink_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 sink ESMTP\r\n")
    count = 0
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-DSN\r\n"
                             b"250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                count += 1
                writer.write(b"250 2.0.0 Ok: queued as BENCH%06d\r\n" % count)
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                return
            else:
                writer.write(b"250 2.0.0 Ok\r\n")
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


def run_sink(port: int) -> None:
    async def main():
        server = await asyncio.start_server(_sink_session, "127.0.0.1", port, limit=64 << 20,
                                            backlog=512)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()
    asyncio.run(main())


# -- the client --------------------------------------------------------------------------------
async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def one_message(port: int, payload: bytes, xforward: bool) -> float:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    try:
        steps = [None, b"EHLO postfix.bench\r\n"]
        if xforward:
            steps.append(f"XFORWARD NAME=[UNAVAILABLE] ADDR={CLIENT_IP} PORT=40000 PROTO=ESMTP "
                         f"HELO=client.{DOMAIN} SOURCE=REMOTE\r\n".encode())
        steps += [f"MAIL FROM:<someone@{DOMAIN}> SIZE={len(payload)}\r\n".encode(),
                  b"RCPT TO:<user@sink.example>\r\n", b"DATA\r\n"]
        for step in steps:
            if step is not None:
                writer.write(step)
            code = await _reply(reader)
            if code >= 400:
                raise RuntimeError(f"{step!r}: {code}")
        writer.write(payload)
        code = await _reply(reader)
        elapsed = time.perf_counter() - start
        if code != 250:
            raise RuntimeError(f"end of data: {code}")
        writer.write(b"QUIT\r\n")
        await _reply(reader)
        return elapsed
    finally:
        writer.close()


async def load(port: int, payload: bytes, concurrency: int, count: int, seconds: float,
               xforward: bool) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds

    async def worker():
        nonlocal sent, errors
        while sent < count and time.perf_counter() < deadline:
            sent += 1
            try:
                latencies.append(await one_message(port, payload, xforward))
            except (OSError, RuntimeError, ConnectionError) as exc:
                errors += 1
                if errors < 5:
                    print(f"  error: {exc}", file=sys.stderr)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start, errors


def wire(raw: bytes) -> bytes:
    """Dot-stuffed DATA payload with the end marker."""
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    return (b"." + stuffed if stuffed.startswith(b".") else stuffed) + b".\r\n"


# -- process accounting ------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes."""
    user = system = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (OSError, IndexError):
            pass
    return user / CLK_TCK, system / CLK_TCK


def peak_rss_mb(pids: list[int]) -> tuple[float, float]:
    values = []
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    values.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return (max(values) if values else 0.0), sum(values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def proxy_under_test(dns_address: str, *, workers: int, offload: int, prefix: str
                     ) -> Iterator[tuple[int, int, subprocess.Popen]]:
    """``authfilter serve`` as a before-queue proxy in front of this file's sink (each a
    subprocess), on the loopback DNS server: ``(proxy port, sink port, serve process)`` once
    both listen; stopped and cleaned up on leaving."""
    sink_port, proxy_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    config = tmp / "authfilter.toml"
    config.write_text(f"""
[general]
authserv_id = "bench.test"
[dns]
nameservers = ["{dns_address}"]
[proxy]
upstream = "127.0.0.1:{sink_port}"
workers = {workers}
offload_workers = {offload}
max_sessions = 1000
[[proxy.listeners]]
address = "127.0.0.1:{proxy_port}"
[policy]
trusted_networks = []
""")
    root = Path(__file__).resolve().parent.parent
    sink = subprocess.Popen([sys.executable, str(root / "bench" / "bench_proxy.py"), "--sink",
                             str(sink_port)])
    proxy_log = (tmp / "authfilter.log").open("wb")
    proxy = subprocess.Popen([sys.executable, "-m", "authfilter", "serve", "--config", str(config)],
                             cwd=root, stdout=proxy_log, stderr=proxy_log)
    try:
        wait_listening(sink_port, sink)
        wait_listening(proxy_port, proxy)
        time.sleep(1.0)                                   # let the offload pool start
        yield proxy_port, sink_port, proxy
    finally:
        stop(proxy)
        stop(sink)
        proxy_log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def mixed(port: int, payloads: dict[str, bytes], seconds: float) -> dict:
    """4 KB messages one at a time, alone and then beside a stream of 2 MB messages (two at a
    time): how much a big message's verification delays the other sessions of the proxy."""
    async def both():
        small = asyncio.create_task(load(port, payloads["4k"], 1, 100_000, seconds, True))
        big = asyncio.create_task(load(port, payloads["2m"], 2, 100_000, seconds, True))
        return await small, await big
    asyncio.run(load(port, payloads["2m"], 2, 4, 30, True))                    # warm up
    alone = asyncio.run(load(port, payloads["4k"], 1, 100_000, seconds, True))[0]
    (beside, _, _), (big, _, _) = asyncio.run(both())
    row = {"mix": True, "4k_alone_p50_ms": percentile(alone, 0.5), "4k_alone_p99_ms": percentile(alone, 0.99),
           "4k_beside_2m_p50_ms": percentile(beside, 0.5), "4k_beside_2m_p99_ms": percentile(beside, 0.99),
           "2m_messages": len(big)}
    print(f"{'mix':<10} 4 KB alone p50/p99 {row['4k_alone_p50_ms']:.2f}/{row['4k_alone_p99_ms']:.2f} ms; "
          f"beside 2 MB x2: {row['4k_beside_2m_p50_ms']:.2f}/{row['4k_beside_2m_p99_ms']:.2f} ms "
          f"({len(big)} 2 MB messages)")
    return row


# -- main -------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cells", default="4k:1,4k:50,100k:1,100k:50,2m:1,2m:50,mix",
                    help="size:concurrency pairs (sizes: 4k, 100k, 2m), and 'mix': 4 KB "
                         "latency alone and beside 2 MB messages")
    ap.add_argument("--seconds", type=float, default=8.0, help="time limit per measured run")
    ap.add_argument("--count", type=int, default=3000, help="message limit per measured run")
    ap.add_argument("--workers", type=int, default=0, help="proxy.workers (0 = one per core)")
    ap.add_argument("--offload", type=int, default=1, help="proxy.offload_workers")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    if a.sink:
        run_sink(a.sink)
        return

    pem, pub = rsa_key()
    dns = dns_server(pub)
    payloads = {name: wire(message(text_body(size), pem)) for name, size in SIZES.items()}
    results = []
    try:
        with proxy_under_test(dns.address, workers=a.workers, offload=a.offload,
                              prefix="bench-proxy-") as (proxy_port, sink_port, proxy):
            print(f"{'cell':<10} {'target':<7} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'CPU ms/msg (sys)':>16} {'peak RSS MB (max/sum)':>22} {'errors':>6}")
            for cell in a.cells.split(","):
                if cell == "mix":
                    results.append(mixed(proxy_port, payloads, a.seconds))
                    continue
                size, conc = cell.split(":")
                conc = int(conc)
                payload = payloads[size]
                asyncio.run(load(proxy_port, payload, min(conc, 10), 40, 30, True))     # warm up
                row = {"size": size, "concurrency": conc}
                for target, port in (("proxy", proxy_port), ("sink", sink_port)):
                    pids = descendants(proxy.pid)
                    cpu0 = cpu_seconds(pids)
                    lat, elapsed, errors = asyncio.run(load(port, payload, conc, a.count, a.seconds,
                                                            target == "proxy"))
                    pids = descendants(proxy.pid)
                    user, system = (b - a for a, b in zip(cpu0, cpu_seconds(pids)))
                    cpu = user + system
                    n = len(lat)
                    rss_max, rss_sum = peak_rss_mb(pids)
                    row[target] = {"msgs_per_s": n / elapsed if elapsed else 0, "p50_ms": percentile(lat, 0.5),
                                   "p99_ms": percentile(lat, 0.99), "messages": n, "errors": errors,
                                   "cpu_ms_per_msg": cpu * 1000 / n if n and target == "proxy" else None,
                                   "system_ms_per_msg": system * 1000 / n if n and target == "proxy" else None,
                                   "peak_rss_mb_max": rss_max, "peak_rss_mb_sum": rss_sum}
                    r = row[target]
                    cpu_text = f"{r['cpu_ms_per_msg']:.2f} ({r['system_ms_per_msg']:.2f})" \
                        if r["cpu_ms_per_msg"] is not None else "-"
                    rss_text = f"{rss_max:.0f}/{rss_sum:.0f}" if target == "proxy" else "-"
                    print(f"{size + ':' + str(conc):<10} {target:<7} {r['msgs_per_s']:>8.0f} "
                          f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {cpu_text:>16} {rss_text:>22} {errors:>6}")
                added = (row["proxy"]["p50_ms"] - row["sink"]["p50_ms"], row["proxy"]["p99_ms"] - row["sink"]["p99_ms"])
                row["added_p50_ms"], row["added_p99_ms"] = added
                print(f"{'':<10} {'added':<7} {'':>8} {added[0]:>8.2f} {added[1]:>8.2f}")
                results.append(row)
    finally:
        dns.stop()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
