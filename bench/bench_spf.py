"""Warm-cache CPU cost of one check_spf (record with two includes), loopback DNS server."""
import asyncio, statistics, time
import common  # noqa: F401,E402  (puts the checkout on sys.path)
from tests.dnsserver import DnsTestServer
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
server.stop()
