"""DMARC failure reports (RFC 9991) in the Authentication Failure Reporting format (RFC 6591).

Off by default (``[reports] failure_enabled``).  The proxy calls :class:`FailureReporter` after
each message (an observer that asks for the message's header fields, see ``wants_headers``);
the SMTP path only decides whether a report is due and queues it, everything else (DNS, MIME,
SMTP) happens in a background task, with the relay code of :mod:`.sender` in a thread.

When a report is made (RFC 9991 s. 2, RFC 9989 s. 4.7 ``fo``):

* only for a DMARC ``fail`` of a message that was not tempfailed (the retry is the message that
  counts), with a ``ruf`` tag in the policy record, and never for a record with ``psd=y``;
  never for a ``temperror``, accepted or not: a check that could not be made is no failure
  (RFC 7489 s. 6.6.2 only says receivers "MAY send feedback reports regarding temporary
  errors"), and the domain would learn nothing it can fix;
* ``fo=0`` (the default) and ``fo=1`` give a DMARC report (``Auth-Failure: dmarc``).  For a
  failing message no mechanism produced an aligned pass, so both conditions hold; reports about
  messages that passed DMARC are not made (privacy first: they describe legitimate mail);
* ``fo=d``: a DKIM report (``Auth-Failure: bodyhash``, ``revoked`` or ``signature``, RFC 6591
  s. 3.1) when a signature failed (``fail`` or ``permerror``), whatever its alignment;
* ``fo=s``: an SPF report (``Auth-Failure: spf``) when SPF gave ``fail``, ``softfail`` or
  ``permerror``, whatever its alignment;
* never about a report (aggregate or failure), nor about or to a suppressed domain or address;
* at most ``failure_rate_limit`` reports per policy domain per hour in each worker process
  (RFC 9991 s. 2 "MUST implement a rate-limit"); the rest are counted and dropped;
* to every authorized ``ruf`` mailto: URI (at most ``max_destinations``); an external
  destination needs ``<policy-domain>._report._dmarc.<host>`` (RFC 9991 s. 5, RFC 9990's
  procedure with ``ruf`` for ``rua``); a DNS failure there drops that destination.

What a report holds (RFC 5965 s. 2 and 3, RFC 6591 s. 3, RFC 9991 s. 4): a text part, the
``message/feedback-report`` fields, and the original header block as ``text/rfc822-headers``
(the body is never included: the proxy does not hand it to observers, and RFC 9991 s. 7 asks
for minimization).  Privacy (RFC 9991 s. 7, redaction as RFC 6590 describes it): with
``failure_redact`` (the default) every local part of an address, in the header block and in the
report's own fields, becomes ``redacted.<12 hex>``, a keyed hash (HMAC-SHA256 with a key made at
start-up), so one report's addresses can be told apart and correlated within a worker's
lifetime, but not recovered.  Message identifiers (Message-ID, In-Reply-To, References,
Content-ID) are kept so that the domain owner can find the message in its logs; display names
and the Subject are kept.  The header block is cut to ``failure_max_bytes`` (whole fields).

Sending is best-effort (RFC 9991 "Transport" only asks for an attempt per URI): a bounded
queue, one relay connection per batch, a temporary failure retried twice after a pause, then
dropped with a log line.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .. import __version__
from ..authres import header_value
from ..config import Config
from ..dmarcrecord import failure_options
from ..dns import Resolver
from ..engine import resolver_from_config
from ..observers import MessageEvent
from ..results import DkimResult, SessionFacts, SmtpReply, Verdict
from .destinations import authorized, is_suppressed, parse_uris, within
from .recorder import HeaderFields, is_dmarc_report

if TYPE_CHECKING:
    from ..policy import Action
from .sender import DeliveryError, Relay, RelaySettings, from_address, reporter_from_config

log = logging.getLogger("authfilter.reports.failure")

DMARC, DKIM, SPF = "dmarc", "dkim", "spf"
DKIM_FAILED = frozenset({"fail", "permerror"})              # "a signature that failed evaluation"
SPF_FAILED = frozenset({"fail", "softfail", "permerror"})   # "the message failed SPF evaluation"
USER_AGENT = f"authfilter/{__version__}"
WINDOW = 3600.0               # the rate limit counts reports per domain over this many seconds
MAX_TRACKED_DOMAINS = 10_000  # rate-limit state kept; past it, reports for new domains are refused
MAX_QUEUED = 1000             # reports waiting for the background sender; more are dropped
MAX_ATTEMPTS = 3              # deliveries of one report to one address (temporary failures)
RETRY_DELAYS = (60.0, 300.0)  # seconds before the 2nd and 3rd attempt
MAX_RCPT_FIELDS = 20          # Original-Rcpt-To fields in one report
CLOSE_TIMEOUT = 5.0
LOG_EVERY = 60.0


# -- what is due ----------------------------------------------------------------------------------
def _aligned(domain: str | None, verdict: Verdict, mode_tag: str) -> bool:
    """Is ``domain`` aligned with the author domain, in the record's ``adkim``/``aspf`` mode?
    (RFC 9989 s. 4.4: strict is an exact match, relaxed the same Organizational Domain.)"""
    dmarc = verdict.dmarc
    if not domain or not dmarc.from_domain:
        return False
    domain = domain.lower().rstrip(".")
    if (dmarc.record or {}).get(mode_tag, "r").lower() == "s":
        return domain == dmarc.from_domain
    org = dmarc.org_domain or dmarc.policy_domain
    return domain == dmarc.from_domain or (bool(org) and within(domain, org))


def identity_alignment(verdict: Verdict) -> list[str]:
    """RFC 9991 s. 4 item 2: the mechanisms that "failed to authenticate an aligned identity"
    (an aligned identifier whose result is not pass); empty means ``none``."""
    out = []
    if any(d.result != "pass" and _aligned(d.domain, verdict, "adkim") for d in verdict.dkim):
        out.append(DKIM)
    if verdict.spf.result != "pass" and _aligned(verdict.spf.domain, verdict, "aspf"):
        out.append(SPF)
    return out


def report_kinds(verdict: Verdict) -> tuple[str, ...]:
    """The reports a DMARC-failing message calls for, by the record's ``fo`` (RFC 9989 s. 4.7)."""
    if verdict.dmarc.result != "fail":
        return ()
    options = failure_options(verdict.dmarc.record or {}, [])
    kinds = []
    if "0" in options or "1" in options:
        kinds.append(DMARC)
    if "d" in options and failed_signature(verdict) is not None:
        kinds.append(DKIM)
    if "s" in options and verdict.spf.result in SPF_FAILED and verdict.spf.domain:
        kinds.append(SPF)
    return tuple(kinds)


def failed_signature(verdict: Verdict) -> DkimResult | None:
    """What a DKIM report (``fo=d``) is about: the first signature that failed evaluation,
    aligned ones first."""
    failed = [d for d in verdict.dkim if d.domain and d.result in DKIM_FAILED]
    aligned = [d for d in failed if _aligned(d.domain, verdict, "adkim")]
    return (aligned or failed or [None])[0]


def aligned_unverified_signature(verdict: Verdict) -> DkimResult | None:
    """The signature whose DKIM-* fields a DMARC report carries (RFC 9991 s. 4: "REQUIRED for
    DKIM failures of an aligned identifier"): the first aligned one that did not pass."""
    return next((d for d in verdict.dkim if d.domain and d.result != "pass"
                 and _aligned(d.domain, verdict, "adkim")), None)


def dkim_failure_type(sig: DkimResult) -> str:
    """RFC 6591 s. 3 Auth-Failure for DKIM: bodyhash, revoked or signature."""
    reason = (sig.reason or "").lower()
    if "body hash" in reason or "body is shorter" in reason:
        return "bodyhash"
    if "revoked" in reason:
        return "revoked"
    return "signature"


# -- redaction ------------------------------------------------------------------------------------
_ATEXT = rb"A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff-"
# An address's local part: a quoted string or a dot-atom, before "@" and a domain.  Names
# written before an address (RFC 8601 "smtp.mailfrom=", RFC 7208 "envelope-from=", the DKIM
# tag "i=") are kept out of the match ("=" is allowed in a local part).
_LOCAL_PART = re.compile(
    rb"((?<![" + _ATEXT + rb".])(?:smtp\.mailfrom|smtp\.mail|header\.i|header\.from|"
    rb"header\.sender|envelope-from|i)=)?"
    rb"(\"(?:[^\"\\\r\n]|\\.)*\"|[" + _ATEXT + rb"]+(?:\.[" + _ATEXT + rb"]+)*)"
    rb"@(?=[A-Za-z0-9\x80-\xff\[])", re.IGNORECASE)
_MESSAGE_IDS = frozenset({b"message-id", b"in-reply-to", b"references", b"content-id",
                          b"resent-message-id"})


class Redactor:
    """Replaces local parts of addresses with ``redacted.<12 hex>`` (HMAC-SHA256 under a
    secret key): the same local part gives the same token, the token does not give it back
    (RFC 6590)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or os.urandom(32)

    def token(self, local: bytes) -> bytes:
        return b"redacted." + hmac.new(self._key, local, hashlib.sha256).hexdigest()[:12].encode()

    def text(self, value: bytes) -> bytes:
        return _LOCAL_PART.sub(lambda m: (m.group(1) or b"") + self.token(m.group(2)) + b"@",
                               value)

    def string(self, value: str) -> str:
        return self.text(value.encode("utf-8", "surrogateescape")).decode("utf-8",
                                                                          "surrogateescape")

    def field(self, name: bytes, value: bytes) -> bytes:
        """One header field's value; message identifiers are left alone."""
        return value if name.strip().lower() in _MESSAGE_IDS else self.text(value)


def header_block(headers: HeaderFields, max_bytes: int, redactor: Redactor | None) -> bytes:
    """The fields as they arrived (redacted), whole fields only, within ``max_bytes``: a field
    that does not fit is left out and later, smaller ones still go in."""
    out, size = [], 0
    for name, value in headers:
        if redactor is not None:
            value = redactor.field(name, value)
        line = name + b":" + value
        if not line.endswith(b"\r\n"):
            line += b"\r\n"
        if size + len(line) > max_bytes:
            continue
        out.append(line)
        size += len(line)
    return b"".join(out)


# -- the report -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FailureCase:
    """What the SMTP path hands to the background sender: one failing message."""

    facts: SessionFacts
    verdict: Verdict
    headers: tuple[tuple[bytes, bytes], ...]
    kinds: tuple[str, ...]
    arrival: float
    delivery_result: str       # RFC 6591 s. 3: delivered, spam, reject or other

    @property
    def policy_domain(self) -> str:
        return policy_domain(self.verdict)


def policy_domain(verdict: Verdict) -> str:
    """The domain whose record asked for the reports: rate limits and suppression go by it."""
    return (verdict.dmarc.policy_domain or verdict.dmarc.from_domain or "").lower()


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(value: str) -> str:
    """One line of printable ASCII: no CR/LF injection, non-ASCII escaped (the fields part is
    7bit)."""
    value = " ".join(_CONTROL.sub(" ", value).split())
    return value.encode("ascii", "backslashreplace").decode("ascii")


def _fold(name: str, value: str, width: int = 78, hard: int = 990) -> str:
    """``Name: value`` folded at spaces (RFC 5322 s. 2.2.3); a word longer than ``hard`` is cut."""
    words = [w if len(w) <= hard else w[:hard - 3] + "..." for w in _clean(value).split(" ")]
    lines, line = [], f"{name}:"
    for i, word in enumerate(words):
        if i and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _path(address: str | None, redactor: Redactor | None) -> str:
    address = address or ""
    return f"<{redactor.string(address) if redactor and address else address}>"


def what_failed(case: FailureCase, kind: str) -> tuple[str, str | None, DkimResult | None]:
    """(Auth-Failure word, Reported-Domain, the signature the DKIM-* fields describe)."""
    verdict = case.verdict
    if kind == DMARC:
        return DMARC, verdict.dmarc.from_domain, aligned_unverified_signature(verdict)
    if kind == DKIM:
        signature = failed_signature(verdict)
        assert signature is not None
        return dkim_failure_type(signature), signature.domain, signature
    return SPF, verdict.spf.domain, None


def feedback_fields(case: FailureCase, kind: str, *, authserv_id: str,
                    spf_records: Sequence[str], redactor: Redactor | None) -> list[tuple[str, str]]:
    """The ``message/feedback-report`` fields (RFC 5965 s. 3, RFC 6591 s. 3, RFC 9991 s. 4)."""
    facts, verdict = case.facts, case.verdict
    failure, reported, signature = what_failed(case, kind)
    results = header_value(authserv_id, facts, verdict)
    fields = [("Feedback-Type", "auth-failure"), ("User-Agent", USER_AGENT), ("Version", "1"),
              ("Auth-Failure", failure),
              ("Authentication-Results", redactor.string(results) if redactor else results)]
    if facts.mail_from is not None:
        fields.append(("Original-Mail-From", _path(facts.mail_from, redactor)))
    fields += [("Original-Rcpt-To", _path(r, redactor)) for r in facts.recipients[:MAX_RCPT_FIELDS]]
    fields += [("Arrival-Date", formatdate(case.arrival, usegmt=True)),
               ("Source-IP", facts.client_text),
               ("Reported-Domain", (reported or "").lower()),
               ("Delivery-Result", case.delivery_result)]
    if kind == DMARC:
        fields.append(("Identity-Alignment", ", ".join(identity_alignment(verdict)) or "none"))
    if signature is not None:       # RFC 6591 s. 3; RFC 9991 s. 4: an aligned DKIM failure
        identity = signature.identity or f"@{signature.domain}"
        fields += [("DKIM-Domain", signature.domain or ""),
                   ("DKIM-Identity", redactor.string(identity) if redactor else identity),
                   ("DKIM-Selector", signature.selector or "")]
    if kind == SPF or (kind == DMARC and SPF in identity_alignment(verdict)):
        # RFC 6591 s. 3: "SPF-DNS: txt : <domain> : <record>", one per record retrieved
        fields += [("SPF-DNS", f"txt : {verdict.spf.domain} : {r}") for r in spf_records]
    return fields


def needs_spf_record(case: FailureCase) -> bool:
    return SPF in case.kinds or (DMARC in case.kinds and SPF in identity_alignment(case.verdict))


def report_message(case: FailureCase, kind: str, *, sender: str, recipient: str,
                   submitter: str, authserv_id: str, spf_records: Sequence[str] = (),
                   redactor: Redactor | None, max_bytes: int, now: float) -> bytes:
    """One report as a complete message: ``multipart/report; report-type=feedback-report``
    with a text part, the feedback fields and the header block (RFC 5965 s. 2)."""
    fields = feedback_fields(case, kind, authserv_id=authserv_id, spf_records=spf_records,
                             redactor=redactor)
    auth_failure = what_failed(case, kind)[0]
    domain = case.verdict.dmarc.from_domain or case.policy_domain
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = sender
    msg["To"] = recipient
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Subject"] = f"DMARC failure report for {domain}: {auth_failure} from {case.facts.client_text}"
    msg["Message-ID"] = make_msgid(domain=submitter)
    msg["Auto-Submitted"] = "auto-generated"        # RFC 3834: no auto-replies to this
    msg.set_type("multipart/report")
    msg.set_param("report-type", "feedback-report")

    text = MIMEPart(policy=SMTP_POLICY)
    text.set_content(
        f"This is an authentication failure report (RFC 9991, RFC 6591) for a message\n"
        f"received from IP {case.facts.client_text} on {formatdate(case.arrival, usegmt=True)},\n"
        f"claiming to be from {domain} (Auth-Failure: {auth_failure}).\n"
        + ("Local parts of addresses are redacted; the message body is not included.\n"
           if redactor else "The message body is not included.\n"))
    feedback = MIMEPart(policy=SMTP_POLICY)
    feedback["Content-Type"] = "message/feedback-report"
    feedback["Content-Transfer-Encoding"] = "7bit"
    feedback.set_payload("".join(_fold(name, value) for name, value in fields))
    original = MIMEPart(policy=SMTP_POLICY)
    block = header_block(case.headers, max_bytes, redactor)
    plain = block.isascii() and all(len(line) <= 998 for line in block.split(b"\r\n"))
    original.set_content(block, "text", "rfc822-headers", cte="7bit" if plain else "base64")
    if not plain:
        original.set_param("charset", "utf-8")      # RFC 6532 header fields
    for part in (text, feedback, original):
        msg.attach(part)
    return msg.as_bytes()


# -- the rate limit -------------------------------------------------------------------------------
class RateLimiter:
    """At most ``limit`` reports per domain in any ``window`` seconds (a sliding window)."""

    def __init__(self, limit: int, window: float = WINDOW,
                 max_domains: int = MAX_TRACKED_DOMAINS) -> None:
        self.limit = limit
        self.window = window
        self.max_domains = max_domains
        self._sent: dict[str, deque[float]] = {}

    def allow(self, domain: str, now: float) -> bool:
        times = self._sent.get(domain)
        if times is None:
            if len(self._sent) >= self.max_domains:
                self._forget(now)
                if len(self._sent) >= self.max_domains:
                    return False
            times = self._sent[domain] = deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True

    def _forget(self, now: float) -> None:
        for domain in [d for d, t in self._sent.items() if not t or t[-1] <= now - self.window]:
            del self._sent[domain]


# -- the observer and its background sender -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outgoing:
    recipient: str
    data: bytes
    attempts: int = 0


def delivery_result(action: Action, upstream_reply: SmtpReply | None) -> str:
    """RFC 6591 s. 3 Delivery-Result from the action and the upstream's reply."""
    kind = action.kind
    if kind == "reject":
        return "reject"
    if kind == "quarantine":
        return "spam"
    code = upstream_reply.code if upstream_reply is not None else None
    if kind == "accept" and code is not None and 200 <= code < 300:
        return "delivered"
    return "other"


class FailureReporter:
    """The pipeline observer: decides in the SMTP path (no I/O), reports in the background."""

    def __init__(self, config: Config, *, resolver: Resolver | None = None,
                 redaction_key: bytes | None = None,
                 retry_delays: Sequence[float] = RETRY_DELAYS,
                 clock: Callable[[], float] = time.time) -> None:
        rc = config.reports
        self.rc = rc
        self.enabled = rc.failure_enabled
        self.authserv_id = config.general.effective_authserv_id()
        self.sender = from_address(config)
        self.submitter = reporter_from_config(config).submitter
        self.redactor = Redactor(redaction_key) if rc.failure_redact else None
        self.limiter = RateLimiter(rc.failure_rate_limit)
        self.retry_delays = tuple(retry_delays)
        self.clock = clock
        self._config = config
        self._resolver = resolver
        self._queue: asyncio.Queue = asyncio.Queue(MAX_QUEUED)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._last_log: dict[str, float] = {}
        self.queued = 0            # reports accepted for sending (one per message and kind)
        self.rate_limited = 0      # reports not made: over the rate limit
        self.sent = 0              # messages the relay accepted (one per report and address)
        self.dropped = 0           # messages given up: queue full, permanent error, retries spent
        self.errors = 0            # observer calls that failed (never raised)

    # -- the SMTP path ----------------------------------------------------------------------
    def __call__(self, event: MessageEvent) -> None:
        if not self.enabled or event.verdict is None or event.headers is None \
                or event.facts.trusted:
            return
        try:
            self._consider(event.facts, event.verdict, event.action, event.upstream_reply,
                           event.headers)
        except Exception as exc:    # never into the SMTP path
            self.errors += 1
            self._warn("error", "failure report not made: %s", exc)

    def _consider(self, facts: SessionFacts, verdict: Verdict, action: Action,
                  upstream_reply: SmtpReply | None, headers: HeaderFields) -> None:
        dmarc = verdict.dmarc
        record = dmarc.record or {}
        if dmarc.result != "fail" or not record.get("ruf"):
            return
        if record.get("psd", "").lower() == "y":        # RFC 9991 s. 2: MUST NOT
            return
        if action.kind == "tempfail" or (upstream_reply is not None
                                         and 400 <= upstream_reply.code < 500):
            return
        kinds = report_kinds(verdict)
        if not kinds or is_dmarc_report(headers):
            return
        domain = policy_domain(verdict)
        if is_suppressed(self.rc.suppress, domain=domain):
            return
        now = self.clock()
        allowed = tuple(k for k in kinds if self.limiter.allow(domain, now))
        self.rate_limited += len(kinds) - len(allowed)
        if not allowed:
            return
        case = FailureCase(facts, verdict, tuple(headers), allowed, now,
                           delivery_result(action, upstream_reply))
        if self._put(case):
            self.queued += len(allowed)

    def _put(self, item: FailureCase | list[Outgoing]) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            self.dropped += 1 if isinstance(item, FailureCase) else len(item)
            self._warn("full", "failure report queue full (%d): report dropped", MAX_QUEUED)
            return False

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[kind] = now
            log.warning(message, *args)

    # -- in the background --------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None or not self.enabled:
            return
        self._loop = asyncio.get_running_loop()
        if self._resolver is None:
            self._resolver = resolver_from_config(self._config)
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="authfilter-failure-reports")
        self._task = asyncio.create_task(self._run(), name="authfilter-failure-reports")

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                outgoing = await self._prepare(item) if isinstance(item, FailureCase) else item
                if outgoing:
                    assert self._loop is not None
                    errors = await self._loop.run_in_executor(self._executor, self._deliver,
                                                              outgoing)
                    self._settle(outgoing, errors)
            except Exception:
                self.errors += 1
                log.exception("failure report not sent")
            finally:
                self._queue.task_done()

    async def _prepare(self, case: FailureCase) -> list[Outgoing]:
        """Authorized destinations (DNS), then one message per report kind and destination."""
        dmarc = case.verdict.dmarc
        domain = case.policy_domain
        uris, problems = parse_uris((dmarc.record or {}).get("ruf"))
        assert self._resolver is not None
        found = await authorized(uris[:self.rc.max_destinations], domain,
                                 dmarc.org_domain or domain, self._resolver, tag="ruf")
        targets = [u for u in found.uris if not is_suppressed(self.rc.suppress, address=u.address)]
        for problem in problems + found.skipped:
            log.info("failure report for %s: %s", domain, problem)
        if not targets:
            return []
        spf_records = await self._spf_records(case.verdict.spf.domain) \
            if needs_spf_record(case) else []
        now = self.clock()
        out = []
        for kind in case.kinds:
            for uri in targets:
                data = report_message(case, kind, sender=self.sender, recipient=uri.address,
                                      submitter=self.submitter, authserv_id=self.authserv_id,
                                      spf_records=spf_records, redactor=self.redactor,
                                      max_bytes=self.rc.failure_max_bytes, now=now)
                if uri.fits(len(data)):
                    out.append(Outgoing(uri.address, data))
                else:
                    log.info("failure report for %s: %s: %d bytes over its size limit", domain,
                             uri.address, len(data))
        return out

    async def _spf_records(self, domain: str | None) -> list[str]:
        """The SPF records at ``domain`` (RFC 6591 SPF-DNS), as the resolver has them now."""
        if not domain:
            return []
        assert self._resolver is not None
        answer = await self._resolver.query(domain, "TXT")
        texts = [r.decode("utf-8", "replace") if isinstance(r, bytes) else str(r)
                 for r in (answer.records if answer.ok else ())]
        return [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]

    def _deliver(self, outgoing: list[Outgoing]) -> list[DeliveryError | None]:
        """In the sender thread: one relay connection for the batch; each message's error."""
        try:
            relay = Relay(RelaySettings.from_config(self.rc))
        except DeliveryError as exc:          # the password file cannot be read
            return [exc] * len(outgoing)
        errors: list[DeliveryError | None] = []
        try:
            for out in outgoing:
                try:
                    relay.send(self.sender, out.recipient, out.data)
                    errors.append(None)
                except DeliveryError as exc:
                    errors.append(exc)
        finally:
            relay.close()
        return errors

    def _settle(self, outgoing: list[Outgoing], errors: list[DeliveryError | None]) -> None:
        """Count and log each outcome; temporary failures are retried, up to MAX_ATTEMPTS."""
        retry = []
        for out, exc in zip(outgoing, errors):
            if exc is None:
                self.sent += 1
                log.info("failure report sent to %s", out.recipient)
            elif exc.permanent or out.attempts + 1 >= MAX_ATTEMPTS:
                self.dropped += 1
                log.warning("failure report to %s dropped: %s", out.recipient, exc)
            else:
                retry.append(dataclasses.replace(out, attempts=out.attempts + 1))
        if retry:
            self._retry_later(retry)

    def _retry_later(self, retry: list[Outgoing]) -> None:
        assert self._loop is not None
        delay = self.retry_delays[min(retry[0].attempts, len(self.retry_delays)) - 1]

        def fire() -> None:
            self._timers.discard(handle)
            self._put(retry)

        handle = self._loop.call_later(delay, fire)
        self._timers.add(handle)

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is queued (for up to ``timeout`` s); pending retries are given up."""
        if self._task is None:
            return
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            self.dropped += self._queue.qsize()
            log.warning("failure reports still queued at shutdown: %d dropped",
                        self._queue.qsize())
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        assert self._executor is not None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = None
