"""The only code in authfilter that talks DNS.

One asynchronous resolver per process (dnspython underneath) with

* nameservers given with ports (``127.0.0.1:5302``, ``[::1]:53``) or the system's resolv.conf;
* a per-query timeout and an optional per-message *deadline* (an absolute ``time.monotonic()``
  value) that no lookup may outlive;
* a bounded LRU cache of answers, NXDOMAIN and NODATA that honours TTLs (RFC 2308 negative
  TTLs from the SOA), and of failures (SERVFAIL, REFUSED, timeouts, bad replies) for a few
  seconds (RFC 9520: a broken zone is not asked again for every message meanwhile); a lookup
  cut short by the message's deadline is not a failure of the zone and is never cached;
* coalescing: identical lookups in flight share one query;
* one mapping of DNS outcomes to the words the RFCs use, in :class:`DnsAnswer.status`.

The checks never see dnspython exceptions: they get a :class:`DnsAnswer`.  They need only
what :class:`DnsClient` describes; :class:`StaticResolver` is a resolver whose answers come
from a mapping, for tests.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, runtime_checkable

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdataclass
import dns.rdatatype
import dns.resolver

OK = "ok"
NXDOMAIN = "nxdomain"
NODATA = "nodata"
TEMPERROR = "temperror"   # timeout, SERVFAIL/REFUSED everywhere, deadline passed
PERMERROR = "permerror"   # a name that cannot be asked (bad label, too long)

SUPPORTED_TYPES = frozenset({"A", "AAAA", "TXT", "MX", "PTR", "CNAME", "NS", "SOA"})


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """Outcome of one lookup.

    ``records`` by type: TXT -> ``bytes`` (the character-strings of one RR joined);
    A/AAAA -> address ``str``; MX -> ``(preference, exchange)``; PTR/CNAME/NS -> target ``str``.
    Host names are lower-case without the trailing dot.
    """

    name: str
    rdtype: str
    status: str
    records: tuple = ()
    canonical_name: str | None = None   # the owner name after following CNAMEs; None without CNAME
    ttl: int = 0
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def void(self) -> bool:
        """No answer data: NXDOMAIN or NODATA (RFC 7208 section 4.6.4 "void lookup")."""
        return self.status in (NXDOMAIN, NODATA)


@dataclass(slots=True)
class ResolverStats:
    queries: int = 0
    cache_hits: int = 0
    coalesced: int = 0
    failures: int = 0


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``"127.0.0.1:5302"`` -> ``("127.0.0.1", 5302)``; ``"[::1]:53"``, ``"::1"``, ``"10.0.0.1"``.

    Raises ``ValueError`` naming the problem.
    """
    spec = spec.strip()
    host, port = spec, 53
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep:
            raise ValueError(f"nameserver {spec!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"nameserver {spec!r}: expected ':PORT' after ']'")
            port = _port(spec, rest[1:])
    elif spec.count(":") == 1:
        host, _, p = spec.partition(":")
        port = _port(spec, p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {spec!r}: {host!r} is not an IP address") from None
    return host, port


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"nameserver {spec!r}: bad port {text!r}")
    return int(text)


def normalize_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


@runtime_checkable
class DnsClient(Protocol):
    """What the checks use of a resolver; :class:`Resolver` and :class:`StaticResolver` are two.

    ``remember``/``recall`` keep a result derived from cached answers for as long as those
    answers stay cached (see :meth:`Resolver.remember`).
    """

    async def query(self, name: str, rdtype: str, *, deadline: float | None = None) -> DnsAnswer: ...

    def peek(self, name: str, rdtype: str) -> DnsAnswer | None: ...

    def remember(self, key: tuple, value: object, names: Iterable[tuple[str, str]]) -> None: ...

    def recall(self, key: tuple) -> object | None: ...


class Resolver:
    """Asynchronous, caching, coalescing DNS resolver (see module docstring)."""

    def __init__(self, nameservers: Iterable[str] = (), *, timeout: float = 2.0,
                 lifetime: float = 5.0, cache_size: int = 50_000, max_ttl: int = 86_400,
                 negative_ttl: int = 900, failure_ttl: int = 5) -> None:
        self.nameservers = self._setup_network(nameservers, timeout, lifetime)
        self.lifetime = lifetime
        self.cache_size = cache_size
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.failure_ttl = failure_ttl
        self._cache: OrderedDict[tuple[str, str], tuple[float, DnsAnswer]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}
        self._derived: OrderedDict[tuple, tuple[float, object]] = OrderedDict()
        self.stats = ResolverStats()

    def _setup_network(self, nameservers: Iterable[str], timeout: float, lifetime: float) -> list[str]:
        """Configure the dnspython resolver :meth:`_ask` uses; the servers as shown to people."""
        servers = [parse_nameserver(s) for s in nameservers]
        if servers:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(h, port=p) for h, p in servers]
        else:
            try:
                self._dns = dns.asyncresolver.Resolver()          # /etc/resolv.conf
            except (dns.resolver.NoResolverConfiguration, OSError):
                self._dns = dns.asyncresolver.Resolver(configure=False)
                self._dns.nameservers = ["127.0.0.1"]
        self._dns.timeout = timeout
        self._dns.lifetime = lifetime
        self._dns.cache = None                                   # ours is cheaper and TTL-exact
        return [f"{h}:{p}" for h, p in servers] or [str(n) for n in self._dns.nameservers]

    # -- cache ---------------------------------------------------------------------------
    def peek(self, name: str, rdtype: str) -> DnsAnswer | None:
        """The cached answer if there is a fresh one; never does I/O."""
        key = (normalize_name(name), rdtype.upper())
        hit = self._cache.get(key)
        if hit is None:
            return None
        expires, answer = hit
        if expires <= time.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return answer

    def _store(self, key: tuple[str, str], answer: DnsAnswer) -> None:
        if answer.ttl <= 0 or self.cache_size <= 0:
            return
        self._cache[key] = (time.monotonic() + answer.ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._derived.clear()

    def expires_at(self, name: str, rdtype: str) -> float:
        """When the cached answer for ``name``/``rdtype`` expires (``time.monotonic()``);
        0.0 when nothing fresh is cached."""
        hit = self._cache.get((normalize_name(name), rdtype.upper()))
        return hit[0] if hit is not None and hit[0] > time.monotonic() else 0.0

    # -- results derived from cached answers -----------------------------------------------
    # A check whose result depends only on DNS answers (an SPF evaluation) may keep it here
    # until the first of those answers expires, so a repeated question costs a dict lookup.
    def remember(self, key: tuple, value: object, names: Iterable[tuple[str, str]]) -> None:
        """Keep ``value`` for as long as every answer in ``names`` stays cached."""
        until = min((self.expires_at(n, t) for n, t in names), default=0.0)
        if until <= time.monotonic() or self.cache_size <= 0:
            return
        self._derived[key] = (until, value)
        self._derived.move_to_end(key)
        while len(self._derived) > max(1, self.cache_size // 4):
            self._derived.popitem(last=False)

    def recall(self, key: tuple) -> object | None:
        hit = self._derived.get(key)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self._derived[key]
            return None
        self.stats.cache_hits += 1
        return hit[1]

    # -- lookups -------------------------------------------------------------------------
    async def query(self, name: str, rdtype: str, *, deadline: float | None = None) -> DnsAnswer:
        """Look ``name``/``rdtype`` up, from the cache when possible.

        ``deadline`` is an absolute ``time.monotonic()`` value; past it the answer is
        ``temperror`` without sending anything.
        """
        rdtype = rdtype.upper()
        if rdtype not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported record type {rdtype}")
        key = (normalize_name(name), rdtype)
        cached = self.peek(*key)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key)
        if pending is not None and pending.get_loop() is loop:
            self.stats.coalesced += 1
            return await asyncio.shield(pending)
        budget = self.lifetime
        if deadline is not None:
            budget = min(budget, deadline - time.monotonic())
            if budget <= 0.01:
                return DnsAnswer(key[0], rdtype, TEMPERROR, reason="DNS deadline for this message passed")
        future = loop.create_future()
        self._inflight[key] = future
        try:
            answer = await self._lookup(key[0], rdtype, budget)
            future.set_result(answer)
        except BaseException as exc:            # cancelled: let waiters see temperror
            future.set_result(DnsAnswer(key[0], rdtype, TEMPERROR, reason="lookup cancelled"))
            raise exc
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        self._store(key, answer)
        return answer

    async def _lookup(self, name: str, rdtype: str, budget: float) -> DnsAnswer:
        """One cache miss: the name checked, the question asked, a failure counted."""
        self.stats.queries += 1
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            return DnsAnswer(name, rdtype, PERMERROR, reason=f"bad name {name!r}: {exc}")
        answer = await self._ask(name, qname, rdtype, budget)
        if answer.status == TEMPERROR:
            self.stats.failures += 1
        return answer

    async def _ask(self, name: str, qname: dns.name.Name, rdtype: str, budget: float) -> DnsAnswer:
        """The network step: ask the nameservers, within ``budget`` seconds."""
        try:
            ans = await self._dns.resolve(qname, rdtype, search=False, raise_on_no_answer=False,
                                          lifetime=budget)
        except dns.resolver.NXDOMAIN as exc:
            return DnsAnswer(name, rdtype, NXDOMAIN, ttl=self._negative_ttl(exc, qname),
                             reason="NXDOMAIN")
        except dns.resolver.YXDOMAIN:
            return DnsAnswer(name, rdtype, PERMERROR, reason="name too long after DNAME")
        except dns.exception.Timeout:
            return self._timed_out(name, rdtype, budget)
        except dns.resolver.NoNameservers as exc:         # SERVFAIL, REFUSED from every server
            return DnsAnswer(name, rdtype, TEMPERROR, ttl=self.failure_ttl, reason=_short(exc))
        except dns.exception.DNSException as exc:         # malformed replies and the like
            return DnsAnswer(name, rdtype, TEMPERROR, ttl=self.failure_ttl, reason=_short(exc))
        except OSError as exc:                            # network unreachable
            return DnsAnswer(name, rdtype, TEMPERROR, ttl=self.failure_ttl,
                             reason=f"network error: {exc}")
        ttl = max(0, round(ans.expiration - time.time()))
        if ans.rrset is None:
            return DnsAnswer(name, rdtype, NODATA, ttl=min(ttl, self.negative_ttl), reason="NODATA")
        records = tuple(_convert(rdtype, rd) for rd in ans.rrset)
        canonical = None if ans.canonical_name == qname else normalize_name(ans.canonical_name.to_text())
        return DnsAnswer(name, rdtype, OK, records, canonical, min(ttl, self.max_ttl))

    def _timed_out(self, name: str, rdtype: str, budget: float) -> DnsAnswer:
        # Only a lookup that had its whole lifetime says the zone is unreachable.
        ttl = self.failure_ttl if budget >= self.lifetime else 0
        return DnsAnswer(name, rdtype, TEMPERROR, ttl=ttl, reason=f"DNS timeout looking up {name} {rdtype}")

    def _negative_ttl(self, exc: dns.resolver.NXDOMAIN, qname: dns.name.Name) -> int:
        """RFC 2308 section 5: min(SOA TTL, SOA MINIMUM) from the authority section."""
        try:
            response = exc.response(qname)
        except (KeyError, AttributeError, TypeError):
            return 60
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return min(rrset.ttl, rrset[0].minimum, self.negative_ttl)
        return 60


def _convert(rdtype: str, rd) -> object:
    if rdtype == "TXT":
        return b"".join(rd.strings)
    if rdtype in ("A", "AAAA"):
        return rd.address
    if rdtype == "MX":
        return (rd.preference, normalize_name(rd.exchange.to_text()))
    if rdtype in ("PTR", "CNAME", "NS"):
        return normalize_name(rd.target.to_text())
    return rd.to_text()


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


_TIMEOUT = "timeout"
_STATUS_WORDS = {"nxdomain": NXDOMAIN, "servfail": TEMPERROR, "temperror": TEMPERROR,
                 "timeout": _TIMEOUT}
_MAX_CNAME_CHAIN = 16


class StaticResolver(Resolver):
    """A :class:`Resolver` that answers from a mapping instead of the network, for tests.

    Only the network step (:meth:`_ask`) differs: caching (every answer has ``ttl``, capped
    like real ones), coalescing, ``peek``, ``remember``/``recall``, deadlines, bad names and
    ``stats`` (``stats.queries`` counts the cache misses) are the resolver's own.

    ``records`` maps ``(name, type)`` (any case, trailing dot ignored) to a sequence of records
    in the shapes :class:`DnsAnswer` documents (TXT ``str`` is encoded as UTF-8; an empty
    sequence is NODATA), or to a status word: ``"nxdomain"``, ``"servfail"``/``"temperror"``
    (failure, kept ``failure_ttl`` seconds) or ``"timeout"`` (answered at once, as the real
    resolver answers when the lifetime has run out).  A question not in the mapping follows a
    CNAME of its name; otherwise it is NODATA when the name, or a name below it, owns records
    (RFC 8020: an empty non-terminal exists), else NXDOMAIN.
    """

    def __init__(self, records: Mapping[tuple[str, str], Iterable | str], *, ttl: int = 300,
                 **options) -> None:
        self.ttl = ttl
        self._zone = {(normalize_name(name), rdtype.upper()): _static_value(rdtype.upper(), value)
                      for (name, rdtype), value in records.items()}
        super().__init__(**options)

    def _setup_network(self, nameservers: Iterable[str], timeout: float, lifetime: float) -> list[str]:
        return ["static answers"]

    async def _ask(self, name: str, qname: dns.name.Name, rdtype: str, budget: float) -> DnsAnswer:
        await asyncio.sleep(0)      # answers arrive later: identical questions meanwhile coalesce
        owner = name
        for _ in range(_MAX_CNAME_CHAIN):
            value = self._zone.get((owner, rdtype))
            alias = None if rdtype == "CNAME" else self._zone.get((owner, "CNAME"))
            if value is not None or not (isinstance(alias, tuple) and alias):
                break
            owner = alias[0]
        else:
            return DnsAnswer(name, rdtype, TEMPERROR, ttl=self.failure_ttl,
                             reason=f"CNAME chain from {name} longer than {_MAX_CNAME_CHAIN}")
        if value is None:
            value = () if self._exists(owner) else NXDOMAIN
        if value == _TIMEOUT:
            return self._timed_out(name, rdtype, budget)
        if value == TEMPERROR:
            return DnsAnswer(name, rdtype, TEMPERROR, ttl=self.failure_ttl,
                             reason=f"SERVFAIL (static answer) for {owner} {rdtype}")
        if value == NXDOMAIN or not value:
            status = NXDOMAIN if value else NODATA
            return DnsAnswer(name, rdtype, status, ttl=min(self.ttl, self.negative_ttl),
                             reason=status.upper())
        return DnsAnswer(name, rdtype, OK, value, owner if owner != name else None,
                         min(self.ttl, self.max_ttl))

    def _exists(self, name: str) -> bool:
        return any(isinstance(value, tuple) and (owner == name or owner.endswith("." + name))
                   for (owner, _), value in self._zone.items())


def _static_value(rdtype: str, value: Iterable | str) -> tuple | str:
    """A record list in :class:`DnsAnswer` shapes, or the status a word stands for."""
    if isinstance(value, str):
        if value.lower() not in _STATUS_WORDS:
            raise ValueError(f"{value!r}: give a list of {rdtype} records or one of "
                             f"{', '.join(_STATUS_WORDS)}")
        return _STATUS_WORDS[value.lower()]
    if isinstance(value, bytes):
        raise ValueError(f"{value!r}: give a list of {rdtype} records, e.g. [{value!r}]")
    return tuple(_static_record(rdtype, record) for record in value)


def _static_record(rdtype: str, record) -> object:
    if rdtype == "TXT" and isinstance(record, (str, bytes)):
        return record.encode() if isinstance(record, str) else record
    if rdtype in ("A", "AAAA"):
        address = ipaddress.ip_address(record)
        if address.version == (4 if rdtype == "A" else 6):
            return str(address)
    elif rdtype == "MX":
        preference, exchange = record
        return (int(preference), normalize_name(exchange))
    elif rdtype in ("PTR", "CNAME", "NS"):
        return normalize_name(record)
    elif rdtype != "TXT":
        return record
    raise ValueError(f"{record!r} is not a {rdtype} record")
