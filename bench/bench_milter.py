"""The milter front-end under load: messages per second, latency, CPU per message, peak memory.

    python bench/bench_milter.py [--cells 4k:1,4k:20,100k:20,2m:1] [--seconds 8] [--tcp]
                                 [--targets authfilter,null] [--c-null PATH]

Set-up, all on one machine: the loopback DNS server (warm cache: every cell is warmed up
first), the milter front-end (``MilterServer`` on the pipeline of a config like
bench_proxy.py's, the event loop ``serve`` would pick, the message log line written to a file)
in a subprocess on a unix socket (``--tcp``: 127.0.0.1), and an asyncio MTA client in this
process that speaks as Postfix does (tests/miltermta.py: an offer of version 6 with every
action and step, the SMFIC_MACRO of each stage, CONNECT, HELO, MAIL, RCPT, DATA, each header
field, end of header, body chunks, end of message, then ABORT, ABORT, QUIT; bytes buffered
until a reply is due, as Postfix's VSTREAM does).  One DKIM-signed message (4 KB, 100 KB or
2 MB; SPF, DKIM and DMARC pass) per connection, as Postfix opens one per SMTP session, at a
fixed concurrency.  Targets:

* ``authfilter``: the real pipeline (SPF, DKIM, ARC, DMARC, policy, A-R, log line, metrics);
* ``null``: the same front-end over a pipeline stand-in that checks nothing and inserts one
  A-R: the driver's own cost (codec, state table, asyncio, the kernel);
* ``c-null`` (with ``--c-null``): the peer harness's libmilter null milter
  (``../shared/peer-harness/tools/nullmilter.c``, ``cc -O2 -o nullmilter nullmilter.c -lmilter
  -lpthread``), the limit of the milter shape; it asks for a reply to every event.

CPU ms/msg is user+system time of the milter's processes (its offload pool included, from
/proc) during the measured run, divided by the messages; the system part is in brackets.  The
client shares the machine, so msgs/s is bounded by it too; compare targets within one run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
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

from bench.bench_proxy import (cpu_seconds, descendants, peak_rss_mb, percentile,  # noqa: E402
                               stop)
from bench.common import DOMAIN, SIZES, dns_server, message, rsa_key, text_body  # noqa: E402
from tests.miltermta import (FLUSH_AT, FINAL_REPLIES, MtaSide, Negotiation,  # noqa: E402
                             packet, postfix_view, split_packets)

from authfilter.milter.codec import (SMFIC_ABORT, SMFIC_QUIT, SMFIR_ACCEPT,  # noqa: E402
                                     SMFIR_CONTINUE)

MACROS = {b"j": b"mx.bench", b"{daemon_name}": b"mx.bench", b"v": b"Postfix 3.7.11",
          b"{mail_addr}": f"someone@{DOMAIN}".encode()}
CLIENT_IP = b"127.0.0.1"


# -- the milter (runs as a subprocess: python bench/bench_milter.py --serve ...) -------------
class NullPipeline:
    """A pipeline that checks nothing: every message is accepted with one A-R on top, as the
    C null milter does.  What is left is the front-end's own work."""

    def __init__(self, runtime) -> None:
        from authfilter.pipeline import Disposition
        from authfilter.policy import Action
        self.runtime = runtime                   # read by the connection: no early defences
        authserv_id = runtime.authserv_id
        self.disposition = Disposition("accept", None, (), (("Authentication-Results",
                                                             f"{authserv_id}; none"),),
                                       None, Action("accept", "null"), None)

    def client(self, client_ip, **_) -> None:
        return None

    def begin(self, facts, **_) -> "NullPipeline":
        return self

    def add_recipient(self, address: str) -> None:
        pass

    async def finish(self, raw: bytes, *, crlf_only: bool = False):
        return self.disposition

    async def done(self, *_, **__) -> None:
        pass

    def abandon(self) -> None:
        pass


def serve(config_path: str, address: str, null: bool) -> None:
    """As ``authfilter serve`` sets up one worker: config, logging, allocator, event loop."""
    from authfilter.logsetup import configure
    from authfilter.memory import keep_freed_buffers
    from authfilter.service import loop_runner
    from authfilter.startup import load_checked
    config = load_checked(config_path)
    configure(config)
    keep_freed_buffers()
    loop_runner(config)(_serve(config, address, null))


async def _serve(config, address: str, null: bool) -> None:
    from authfilter.milter.listener import MilterListener, MilterServer
    from authfilter.pipeline import Pipeline
    from authfilter.runtime import Runtime
    from authfilter.service import make_executor
    executor = make_executor(config)
    server: MilterServer | None = None
    runtime = Runtime.build(config, executor=executor, loop_shared=lambda: server.loop_shared())
    pipeline = NullPipeline(runtime) if null else Pipeline(runtime)
    server = MilterServer([MilterListener(address, socket_mode=0o600)], pipeline,
                          metrics=runtime.metrics, max_sessions=1000)
    await server.start()
    if executor is not None:
        await asyncio.get_running_loop().run_in_executor(executor, int)   # start the pool
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    print("listening", flush=True)
    await stopping.wait()
    await server.drain(5.0)
    if executor is not None:
        executor.shutdown(cancel_futures=True)


# -- the MTA side ----------------------------------------------------------------------------
def script(negotiation: Negotiation, raw: bytes) -> list[tuple[bytes, bool]]:
    """The bytes of one SMTP session after the option negotiation, in the writes Postfix
    makes, each with whether a reply follows: smtpd writes each SMTP command's event as the
    command comes (CONNECT and HELO, MAIL, RCPT, DATA: small writes with pauses, what Nagle
    and delayed ACKs stall on TCP, milter.md s. 1.7), cleanup writes the content until a reply
    is due or FLUSH_AT bytes are buffered.  Computed once per target and size, so that the
    client's own CPU stays small."""
    mta = MtaSide({**MACROS, b"i": b"BENCHQID"})
    mta.negotiation = negotiation
    headers, body = postfix_view(raw, leading_space=mta.leading_space)

    def smtpd_events() -> Iterator[bool]:
        yield mta.connect(b"localhost", CLIENT_IP)
        yield mta.helo(f"client.{DOMAIN}".encode())
        yield from mta.envelope_events(f"<someone@{DOMAIN}>".encode(), [b"<user@sink.example>"])

    pieces = [(mta.take(), due) for due in smtpd_events()]
    pieces += [(mta.take(), due) for due in mta.content_events(headers, body)
               if due or len(mta.out) >= FLUSH_AT]
    return pieces + [(packet(SMFIC_ABORT) + packet(SMFIC_ABORT) + packet(SMFIC_QUIT), False)]


async def open_milter(address: str):
    if address.startswith("unix:"):
        return await asyncio.open_unix_connection(address[5:], limit=1 << 20)
    host, _, port = address.rpartition(":")            # Nagle stays on, as Postfix keeps it
    return await asyncio.open_connection(host, int(port), limit=1 << 20)


async def replies(reader: asyncio.StreamReader, buffer: bytearray) -> list[bytes]:
    """Reply packets up to the deciding one."""
    packets: list[bytes] = []
    while not packets or packets[-1][4:5] not in FINAL_REPLIES:
        ready = split_packets(buffer)
        if ready:
            packets += ready
            continue
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the milter closed the connection")
        buffer += data
    return packets


async def negotiate(address: str) -> Negotiation:
    reader, writer = await open_milter(address)
    mta = MtaSide()
    mta.offer()
    writer.write(mta.take())
    (reply,) = await replies_of_optneg(reader)
    writer.close()
    return Negotiation.parse(reply)


async def replies_of_optneg(reader: asyncio.StreamReader) -> list[bytes]:
    head = await reader.readexactly(4)
    return [head + await reader.readexactly(int.from_bytes(head, "big"))]


async def one_session(address: str, offer: bytes, pieces: list[tuple[bytes, bool]]) -> float:
    start = time.perf_counter()
    reader, writer = await open_milter(address)
    try:
        writer.write(offer)
        await replies_of_optneg(reader)
        buffer = bytearray()
        final = b""
        for data, due in pieces:
            writer.write(data)
            if due:
                final = (await replies(reader, buffer))[-1][4:5]
                if final not in (SMFIR_CONTINUE, SMFIR_ACCEPT):
                    raise RuntimeError(f"reply {final!r}")
        elapsed = time.perf_counter() - start
        if final not in (SMFIR_ACCEPT, SMFIR_CONTINUE):        # continue: libmilter's accept
            raise RuntimeError(f"end of message: {final!r}")
        return elapsed
    finally:
        writer.close()


async def load(address: str, offer: bytes, pieces, concurrency: int, count: int,
               seconds: float) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    sent = errors = 0
    deadline = time.perf_counter() + seconds

    async def worker():
        nonlocal sent, errors
        while sent < count and time.perf_counter() < deadline:
            sent += 1
            try:
                latencies.append(await one_session(address, offer, pieces))
            except (OSError, RuntimeError, ConnectionError, asyncio.IncompleteReadError) as exc:
                errors += 1
                if errors < 5:
                    print(f"  error: {exc!r}", file=sys.stderr)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start, errors


# -- the targets -----------------------------------------------------------------------------
def wait_for(address: str, process: subprocess.Popen, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"milter exited with {process.returncode}")
        try:
            asyncio.run(negotiate(address))
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {address}")


def start_target(name: str, address: str, config: Path, log_file, c_null: str | None):
    if name == "c-null":
        if address.startswith("unix:"):
            command = [c_null, address, "bench.test"]
        else:
            host, _, port = address.rpartition(":")
            command = [c_null, f"inet:{port}@{host}", "bench.test"]
    else:
        command = [sys.executable, __file__, "--serve", str(config), "--listen", address]
        command += ["--null"] if name == "null" else []
    process = subprocess.Popen(command, stdout=log_file, stderr=log_file,
                               cwd=Path(__file__).resolve().parent.parent)
    wait_for(address, process)
    return process


def free_address(tmp: Path, name: str, tcp: bool) -> str:
    if not tcp:
        return f"unix:{tmp}/{name}.sock"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--listen", help=argparse.SUPPRESS)
    ap.add_argument("--null", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cells", default="4k:1,4k:20,100k:20,2m:1",
                    help="size:concurrency pairs (sizes: 4k, 100k, 2m)")
    ap.add_argument("--targets", default="authfilter,null", help="authfilter, null, c-null")
    ap.add_argument("--c-null", help="path of the built libmilter null milter (adds c-null)")
    ap.add_argument("--tcp", action="store_true", help="TCP on 127.0.0.1 instead of unix sockets")
    ap.add_argument("--seconds", type=float, default=8.0, help="time limit per measured run")
    ap.add_argument("--count", type=int, default=3000, help="message limit per measured run")
    ap.add_argument("--offload", type=int, default=1, help="proxy.offload_workers")
    ap.add_argument("--event-loop", default="auto", help="proxy.event_loop of the milter")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.listen, a.null)
        return
    targets = a.targets.split(",") + (["c-null"] if a.c_null and "c-null" not in a.targets
                                      else [])
    pem, pub = rsa_key()
    dns = dns_server(pub)
    payloads = {name: message(text_body(size), pem) for name, size in SIZES.items()}
    tmp = Path(tempfile.mkdtemp(prefix="bench-milter-"))
    config = tmp / "authfilter.toml"
    config.write_text(f"""
[general]
authserv_id = "bench.test"
[dns]
nameservers = ["{dns.address}"]
[proxy]
offload_workers = {a.offload}
event_loop = "{a.event_loop}"
[logging]
level = "info"
[policy]
trusted_networks = []
""")
    log_file = (tmp / "milter.log").open("wb")
    processes = {}
    results = []
    offer = MtaSide()
    offer.offer()
    offer_bytes = offer.take()
    try:
        addresses = {t: free_address(tmp, t, a.tcp) for t in targets}
        for target in targets:
            processes[target] = start_target(target, addresses[target], config, log_file,
                                             a.c_null)
        negotiated = {t: asyncio.run(negotiate(addresses[t])) for t in targets}
        print(f"{'cell':<10} {'target':<11} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'CPU ms/msg (sys)':>16} {'peak RSS MB':>12} {'errors':>6}")
        for cell in a.cells.split(","):
            size, conc = cell.split(":")
            conc = int(conc)
            row = {"size": size, "concurrency": conc}
            for target in targets:
                address, process = addresses[target], processes[target]
                pieces = script(negotiated[target], payloads[size])
                asyncio.run(load(address, offer_bytes, pieces, min(conc, 10), 40, 30))  # warm
                pids = descendants(process.pid)
                cpu0 = cpu_seconds(pids)
                lat, elapsed, errors = asyncio.run(load(address, offer_bytes, pieces, conc,
                                                        a.count, a.seconds))
                pids = descendants(process.pid)
                user, system = (after - before for before, after in zip(cpu0, cpu_seconds(pids)))
                n = len(lat)
                rss_max, _ = peak_rss_mb(pids)
                r = row[target] = {
                    "msgs_per_s": n / elapsed if elapsed else 0, "messages": n, "errors": errors,
                    "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
                    "cpu_ms_per_msg": (user + system) * 1000 / n if n else None,
                    "system_ms_per_msg": system * 1000 / n if n else None,
                    "peak_rss_mb": rss_max}
                cpu = f"{r['cpu_ms_per_msg']:.2f} ({r['system_ms_per_msg']:.2f})" if n else "-"
                print(f"{cell:<10} {target:<11} {r['msgs_per_s']:>8.0f} {r['p50_ms']:>8.2f} "
                      f"{r['p99_ms']:>8.2f} {cpu:>16} {rss_max:>12.0f} {errors:>6}")
            results.append(row)
    finally:
        for process in processes.values():
            stop(process)
        dns.stop()
        log_file.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
