"""Warm-cache CPU cost of one check_spf (record with two includes), loopback DNS server; and
how long a huge record chain (nine includes of ~40 KB) holds up the event loop: the longest gap
between the 1 ms ticks of another coroutine while it is checked."""
import asyncio, statistics, time
import common  # noqa: F401,E402  (puts the checkout on sys.path)
from tests.dnsserver import DnsTestServer
from tests.mailtools import publish_spf_include_chain
from authfilter.dns import Resolver
from authfilter.results import SessionFacts
from authfilter.checks.spf import check_spf

server = DnsTestServer().start()
server.add("example.org", "TXT", "v=spf1 include:_spf1.example.org include:_spf2.example.org -all")
server.add("_spf1.example.org", "TXT", "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8::/32 ~all")
server.add("_spf2.example.org", "TXT", "v=spf1 a:out.example.org mx ~all")
server.add("out.example.org", "A", "192.0.2.20")
server.add("_spf2.example.org", "MX", "10 mx.example.org")
server.add("mx.example.org", "A", "192.0.2.25")
resolver = Resolver([server.address])
CASES = {"pass in include 1": "198.51.100.7", "pass via a: in include 2": "192.0.2.20",
         "fail after both includes + a + mx": "203.0.113.9"}

async def run(ip, n):
    facts = SessionFacts.create(ip, "mail.example.org", "alice@example.org")
    assert (await check_spf(facts, resolver)).result in ("pass", "fail")   # warms the cache
    queries = len(server.queries)
    t0 = time.process_time()
    for _ in range(n):
        await check_spf(facts, resolver)
    spent = time.process_time() - t0
    assert len(server.queries) == queries, "warm checks must not query"
    return spent / n * 1e6

for label, ip in CASES.items():
    runs = [asyncio.run(run(ip, 2000)) for _ in range(7)]
    print(f"{label:36s} median {statistics.median(runs):6.1f} us  (min {min(runs):.1f}, max {max(runs):.1f})")

HEAVY = "big.example.org"
publish_spf_include_chain(server, HEAVY)


async def heavy(ips):
    stalls = []
    for ip in ips:
        gaps, done = [0.0], asyncio.Event()

        async def tick():
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.001)
                gaps.append(time.perf_counter() - last - 0.001)
                last = time.perf_counter()
        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0.002)                  # the ticker is waiting on its timer
        started = time.perf_counter()
        result = await check_spf(SessionFacts.create(ip, "mail.example.org", f"a@{HEAVY}"), resolver)
        took = time.perf_counter() - started
        done.set()
        await ticker
        stalls.append((max(gaps), took, result.result))
    return stalls

asyncio.run(heavy(["203.0.113.1"]))                                  # warms the cache
stalls = asyncio.run(heavy([f"203.0.113.{n}" for n in range(2, 12)]))  # a new client each: no memo
print(f"huge chain (9 x 40 KB), warm: check {statistics.median(s[1] for s in stalls) * 1000:.0f} ms "
      f"median; longest event-loop stall {max(s[0] for s in stalls) * 1000:.1f} ms "
      f"(median {statistics.median(s[0] for s in stalls) * 1000:.1f} ms) over {len(stalls)} checks")
server.stop()
