"""Rate limits at RCPT time, shared by every worker process and every node through one Redis.

Each ``[[ratelimit.rules]]`` table is a token bucket per value of its key: per client address,
client network (/24, /64), MAIL FROM domain or SASL login, counted once per message (at the
transaction's first RCPT), or per recipient address, counted once per RCPT.  A bucket holds
``limit`` tokens and one comes back every ``period / limit`` seconds; a message that finds a
bucket empty gets ``451 4.7.28`` (RFC 7372's "mail flood detected") with the seconds until a
token is back, or ``550 5.7.28`` for ``action = "reject"``::

    limiter = RateLimiter.from_config(config, metrics)        # None: no rules, Redis never asked
    if limiter is not None and limiter.applies(facts):
        decision = await limiter.charge(facts, "bob@example.org", first=True,
                                        deadline=time.monotonic() + 2)
        if decision.refusal is not None:
            ...                                                # give the client decision.refusal
    await limiter.close()

Why GCRA
--------
The buckets are kept as the generic cell rate algorithm (GCRA, the ATM traffic policer, ITU-T
I.371): a token bucket stored as one number per bucket, its *theoretical arrival time* (TAT).
Taking a token moves the TAT one emission interval ``T = period / limit`` later; a message is
allowed while the new TAT is at most ``limit * T`` ahead of now, so a full bucket lets
``limit`` messages through at once and then one per ``T``.  Against the alternatives:

* exact, unlike a fixed-window counter (``INCR`` + ``EXPIRE`` per window), which lets twice
  the limit through across a window boundary;
* one short string key per bucket and O(1) work per message, unlike a sliding log (a sorted
  set of every message's time, ``limit`` members per busy bucket: 100,000 entries for a
  limit of 100,000 a day), whose memory grows with the limit;
* no refill job: the key's TTL (``PX``) is the time until the bucket is full again, so idle
  buckets vanish by themselves at exactly the moment they no longer hold information.

Redis
-----
One call of :meth:`RateLimiter.charge` is one round trip: one ``EVALSHA`` of :data:`SCRIPT`
over every bucket concerned (``EVAL`` when Redis answers ``NOSCRIPT``, after a restart or a
``SCRIPT FLUSH``; it caches the script again).  The script is all-or-nothing: it first checks
every bucket and, when any is empty, charges none and returns each empty one with its wait, so
a refused message uses up nothing and the decision names the rule (a ``reject`` rule before a
``tempfail`` one, else the one with the longest wait, whose retry hint is the one that works).
Times come from the Redis server's clock (``TIME``), never the node's, so nodes with skewed
clocks agree; Redis replicates the script's effects (the ``SET``s), not the script, so
replicas agree too (Redis 7; ``redis.replicate_commands()`` asks for it on older servers).
Several keys in one script means one Redis, not Redis Cluster.

Keys are ``key_prefix`` + the rule's name + ``:`` + the value, percent-encoded (domains,
addresses and logins lowercased first; a value over 128 bytes is replaced by ``#`` and its
SHA-256), so no value, however a client writes it, can reach another rule's or another
value's key.  Reply texts show the value with anything but printable ASCII replaced by ``?``
and cut at 64 characters: never a CR or LF of the client's.

Failures
--------
When Redis does not answer within ``timeout`` (or what is left of the caller's deadline) or
answers with an error, the decision's outcome is ``error``: mail goes on
(``on_redis_error = "accept"``, the default: the limiter failing never loses or refuses mail),
or gets ``451 4.3.0`` (``"tempfail"``).  Redis is then left alone for ``error_backoff``
seconds, answering the same way at once, so that while it is down no message waits for the
timeout; after that one message tries again.  A line is logged when it goes down, once a
minute while it stays down and when it answers again, not one per message; the gauge
``authfilter_ratelimit_redis_up`` and ``authfilter_ratelimit_total{rule,outcome}`` are in
:mod:`authfilter.metrics`.

Each process (each worker: they are forked) has its own redis-py asyncio client and
connection pool, made on the first charge in the running event loop; redis-py reconnects by
itself.  ``redis`` is imported only when a limiter is made (that is, when rules exist): a
start-up without rate limits does not pay the 0.2 s its import takes.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from .results import SessionFacts, SmtpReply

if TYPE_CHECKING:
    from .config import Config, RateLimitConfig, RateRuleConfig
    from .metrics import Metrics

log = logging.getLogger("authfilter.ratelimit")

MESSAGE_KEYS = ("client_ip", "client_net", "sender_domain", "auth_user")
"""Keys counted once per message (at its first RCPT); ``recipient`` is counted per RCPT."""
EPOCH = 1_700_000_000
"""Seconds: the script's times are microseconds since then, exact to 1/64 us in a double
for the next century (microseconds since 1970 would be exact to 1/4 us only)."""
MAX_VALUE = 128            # bytes of an encoded value in a key; longer ones are hashed
SHOWN = 64                 # characters of a value shown in a reply
REMINDER = 60.0            # seconds between "still down" log lines

SCRIPT = f"""\
-- authfilter rate limits: GCRA over every bucket of one decision, all or nothing.
-- KEYS[i]: a bucket, its value the theoretical arrival time (TAT) in microseconds since
-- {EPOCH} on this server's clock; ARGV[2i-1]: its emission interval in microseconds
-- (period / limit); ARGV[2i]: its burst (limit).  Returns {{}} when every bucket had a token
-- (then each is charged one), else {{i, wait_us, ...}} for each empty one (nothing charged).
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = (tonumber(t[1]) - {EPOCH}) * 1000000 + tonumber(t[2])
local tats, limited = {{}}, {{}}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  tat = tat + interval
  local wait = tat - tonumber(ARGV[2 * i]) * interval - now
  if wait > 0 then
    limited[#limited + 1] = i
    limited[#limited + 1] = math.ceil(wait)
  end
  tats[i] = tat
end
if #limited > 0 then return limited end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.17g', tats[i]),
             'PX', string.format('%d', math.ceil((tats[i] - now) / 1000)))
end
return limited
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

TEMPFAIL_ERROR = SmtpReply(451, "4.3.0 Rate limits cannot be checked now, try again later")


@dataclass(frozen=True, slots=True)
class RateDecision:
    """What the rate limits say about one RCPT.

    ``refusal``: None to go on, else the reply to give.  ``rule``: the name of the rule that
    limited (None otherwise).  ``outcome``: ``allowed`` (within every limit concerned, or
    nothing to count), ``limited``, ``error`` (Redis could not be asked; ``refusal`` is
    451 4.3.0 with ``on_redis_error = "tempfail"``), ``exempt`` (every rule concerned
    exempts this client: its role or its trust).  ``retry_after``: seconds until the
    limiting rule has a token again.
    """

    refusal: SmtpReply | None
    rule: str | None
    outcome: str
    retry_after: float | None = None


ALLOWED = RateDecision(None, None, "allowed")
EXEMPT = RateDecision(None, None, "exempt")


def _encoded(value: str) -> str:
    """``value`` as a safe part of a Redis key: percent-encoded, or hashed when long."""
    text = quote(value, safe="@.-_+:[]/", errors="backslashreplace")
    if len(text) <= MAX_VALUE:
        return text
    return "#" + hashlib.sha256(value.encode("utf-8", "backslashreplace")).hexdigest()


def _shown(value: str) -> str:
    """``value`` for a reply text: printable ASCII only, at most :data:`SHOWN` characters."""
    text = "".join(c if " " < c < "\x7f" else "?" for c in value)
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."


def _address(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value.lower() or None


class _Rule:
    """One configured rule, ready for use: what to count, its bucket's key and its GCRA
    parameters."""

    __slots__ = ("name", "key", "per_message", "interval", "burst", "roles", "trusted",
                 "reject", "prefix", "v4", "v6")

    def __init__(self, rule: "RateRuleConfig", key_prefix: str) -> None:
        self.name = rule.label
        self.key = rule.key
        self.per_message = rule.key in MESSAGE_KEYS
        self.interval = repr(rule.period * 1_000_000 / rule.limit)    # microseconds per token
        self.burst = str(rule.limit)
        self.roles = frozenset(rule.roles)
        self.trusted = rule.trusted
        self.reject = rule.action == "reject"
        self.prefix = f"{key_prefix}{quote(self.name, safe='/')}:"
        self.v4, self.v6 = rule.ipv4_prefix, rule.ipv6_prefix

    def role_counted(self, facts: SessionFacts) -> bool:
        return facts.role in self.roles

    def trust_counted(self, facts: SessionFacts) -> bool:
        """Trusted clients are exempt unless ``trusted = true``; an auth_user rule counts a
        logged-in user whatever the trust (logging in is what the milter trusts)."""
        return (not facts.trusted or self.trusted
                or (self.key == "auth_user" and bool(facts.auth_user)))

    def value(self, facts: SessionFacts, recipient: str) -> str | None:
        """What this rule counts for the message, normalised; None: nothing to count."""
        key = self.key
        if key in ("client_ip", "client_net"):
            ip = facts.client_ip
            if ip is None:
                return None
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if key == "client_ip":
                return str(ip)
            length = self.v4 if ip.version == 4 else self.v6
            return str(ipaddress.ip_network(f"{ip}/{length}", strict=False))
        if key == "sender_domain":
            sender = _address(facts.mail_from)
            if not sender or "@" not in sender:
                return None                     # the null sender, or no domain
            return sender.rpartition("@")[2].rstrip(".") or None
        if key == "auth_user":
            return (facts.auth_user or "").strip().lower() or None
        return _address(recipient)

    def redis_key(self, value: str) -> str:
        return self.prefix + _encoded(value)

    def what(self, value: str) -> str:
        """The limited thing, for the reply text."""
        kind = {"client_ip": "client", "client_net": "network", "sender_domain": "sender domain",
                "auth_user": "user", "recipient": "recipient"}[self.key]
        return f"{kind} {_shown(value)}"


class RateLimiter:
    """The rate limits of one config (see the module docstring).  Use from one event loop per
    process; a forked child or another loop gets a client of its own."""

    def __init__(self, config: "RateLimitConfig", metrics: "Metrics | None" = None) -> None:
        self.config = config
        self._metrics = metrics
        self._rules = [_Rule(rule, config.key_prefix) for rule in config.rules]
        self._recipient_rules = [r for r in self._rules if not r.per_message]
        self._timeout = config.timeout
        self._backoff = config.error_backoff
        self._error = RateDecision(TEMPFAIL_ERROR if config.on_redis_error == "tempfail" else None,
                                   None, "error")
        self._where = _display(config.redis)
        self._redis: Any = None
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._skip_until = 0.0           # monotonic: Redis is not asked before then
        self._down_since: float | None = None
        self._reminded = 0.0
        self._unanswered = 0             # decisions made without Redis while it is down
        self._redis_module: Any = None
        if self._rules:
            try:
                import redis.asyncio
                import redis.backoff
                import redis.exceptions
            except ImportError as exc:
                raise ImportError(f"[[ratelimit.rules]] need the redis package (python3 -m pip "
                                  f"install 'redis>=5'): {exc}") from exc
            self._redis_module = redis
        if metrics is not None:
            metrics.ratelimit_rules(rule.name for rule in self._rules)

    @classmethod
    def from_config(cls, config: "Config",
                    metrics: "Metrics | None" = None) -> "RateLimiter | None":
        """The limiter of ``config``'s ``[ratelimit]``; None when it has no rules."""
        if not config.ratelimit.rules:
            return None
        return cls(config.ratelimit, metrics)

    @property
    def rules(self) -> list[str]:
        return [rule.name for rule in self._rules]

    def applies(self, facts: SessionFacts) -> bool:
        """Whether any rule could count this transaction (its role, its trust, a value to
        count): when not, :meth:`charge` would only ever say ``exempt`` or ``allowed``."""
        return any(rule.role_counted(facts) and rule.trust_counted(facts)
                   and (not rule.per_message or rule.value(facts, "") is not None)
                   for rule in self._rules)

    async def charge(self, facts: SessionFacts, recipient: str, *, first: bool,
                     deadline: float | None = None) -> RateDecision:
        """Count one RCPT: with ``first`` (the transaction's first RCPT, or the first since the
        rate limits last refused one) the message rules and the recipient rules for
        ``recipient``, else the recipient rules only.  One round trip to Redis, bounded by
        ``timeout`` and by ``deadline`` (a :func:`time.monotonic` time).  Never raises (but
        for cancellation)."""
        buckets: list[tuple[_Rule, str, str]] = []
        exempt = False
        for rule in (self._rules if first else self._recipient_rules):
            if not rule.role_counted(facts):
                exempt = True
                continue
            if not rule.trust_counted(facts):
                exempt = True
                self._count(rule, "exempt")
                continue
            value = rule.value(facts, recipient)
            if value is not None:
                buckets.append((rule, value, rule.redis_key(value)))
        if not buckets:
            return EXEMPT if exempt else ALLOWED
        now = time.monotonic()
        if now < self._skip_until:                   # Redis failed a moment ago
            return self._failed(buckets, None, now)
        budget = self._timeout if deadline is None else min(self._timeout, deadline - now)
        if budget <= 0:
            return self._failed(buckets, None, now)
        args: list[str] = [b[2] for b in buckets]
        for rule, _, _ in buckets:
            args += (rule.interval, rule.burst)
        try:
            async with asyncio.timeout(budget):
                limited = await self._run(len(buckets), args)
        except Exception as exc:        # TimeoutError, redis-py's errors, OSError: an error
            return self._failed(buckets, exc if not isinstance(exc, TimeoutError)
                                else TimeoutError(f"no answer within {budget:g} s"), now)
        self._answered()
        if not limited:
            for rule, _, _ in buckets:
                self._count(rule, "allowed")
            return ALLOWED
        hits = [(buckets[int(limited[i]) - 1], int(limited[i + 1]) / 1e6)
                for i in range(0, len(limited), 2)]
        for (rule, _, _), _ in hits:
            self._count(rule, "limited")
        rejecting = [hit for hit in hits if hit[0][0].reject]
        (rule, value, _), wait = rejecting[0] if rejecting else max(hits, key=lambda h: h[1])
        if rule.reject:
            reply = SmtpReply(550, f"5.7.28 Rate limit exceeded for {rule.what(value)}")
        else:
            seconds = max(1, math.ceil(wait))
            reply = SmtpReply(451, f"4.7.28 Rate limit exceeded for {rule.what(value)}, try "
                                   f"again in {seconds} second{'s' if seconds != 1 else ''}")
        return RateDecision(reply, rule.name, "limited", wait)

    async def _run(self, keys: int, args: list[str]) -> list:
        client = self._client()
        try:
            return await client.evalsha(SCRIPT_SHA, keys, *args)
        except self._redis_module.exceptions.NoScriptError:
            return await client.eval(SCRIPT, keys, *args)

    def _client(self) -> Any:
        """This process's and this loop's client (made on first use: workers are forked)."""
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._redis is None or self._owner != owner:
            redis = self._redis_module
            # no socket_timeout: charge() bounds each call with asyncio.timeout, and redis-py
            # would add an asyncio.wait_for (a task) to every read and write
            self._redis = redis.asyncio.Redis.from_url(
                self.config.redis, socket_connect_timeout=self._timeout, health_check_interval=0,
                # one immediate retry on a broken connection (Redis restarted since it was
                # opened); never on a timeout, where the script may have run
                retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 1,
                                                (redis.exceptions.ConnectionError,)),
                retry_on_timeout=False)
            self._owner = owner
        return self._redis

    # -- health --------------------------------------------------------------------------------
    def _failed(self, buckets: list[tuple[_Rule, str, str]], exc: BaseException | None,
                now: float) -> RateDecision:
        """An ``error`` decision; ``exc``: Redis just failed (else: it was not asked)."""
        for rule, _, _ in buckets:
            self._count(rule, "error")
        self._unanswered += 1
        if exc is None:
            return self._error
        self._skip_until = now + self._backoff
        if self._metrics is not None:
            self._metrics.ratelimit_redis(False)
        reason = str(exc) or type(exc).__name__
        if self._down_since is None:
            self._down_since = self._reminded = now
            self._unanswered = 1
            log.warning("rate limits: Redis at %s failed (%s); %s until it answers, asking it "
                        "again every %g s", self._where, reason,
                        "refusing with 451 4.3.0" if self._error.refusal else "accepting mail",
                        self._backoff)
        elif now - self._reminded >= REMINDER:
            self._reminded = now
            log.warning("rate limits: Redis at %s still failing (%s) after %.0f s; %d decisions "
                        "made without it", self._where, reason, now - self._down_since,
                        self._unanswered)
        return self._error

    def _answered(self) -> None:
        if self._down_since is not None:
            log.warning("rate limits: Redis at %s answers again after %.1f s; %d decisions were "
                        "made without it", self._where, time.monotonic() - self._down_since,
                        self._unanswered)
            self._down_since = None
        self._unanswered = 0
        if self._metrics is not None:
            self._metrics.ratelimit_redis(True)

    def _count(self, rule: _Rule, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.ratelimit_counted(rule.name, outcome)

    async def close(self) -> None:
        """Close this process's connections (a client of another process or loop is only
        dropped: its sockets are not ours to use)."""
        client, owner = self._redis, self._owner
        self._redis = self._owner = None
        if client is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if owner == (os.getpid(), running):
            try:
                await client.aclose()
            except Exception as exc:
                log.debug("rate limits: closing the Redis client: %s", exc)


def _display(url: str) -> str:
    """The Redis URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + host).geturl()
