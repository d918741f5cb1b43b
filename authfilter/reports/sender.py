"""``report send``: mail each finished period's reports to their ``rua`` addresses, once.

For every (policy domain, period) that ended at least ``send_delay`` ago and is not finished:

1. claim it in the store (:meth:`Store.claim`): only the run holding the claim works on it;
2. build the report, pick the authorized destinations (:mod:`.destinations`), drop suppressed
   ones and those whose size limit the message exceeds;
3. send one message per destination through the relay (RFC 9990 "Email": subject, file name and
   ``application/gzip`` attachment), skipping destinations that already have it;
4. record the outcome: ``sent``; ``skipped`` (nowhere to send); ``pending`` with a later
   ``next_attempt`` after a temporary failure (DNS or relay), until ``retry_for`` has passed;
   then ``failed``.

A run that dies between the relay's acceptance and step 4 leaves its lease to expire and the
report is sent again with the same Report-ID, Message-ID and file name, which is how RFC 9990
"Handling of Duplicates" lets the receiver spot the duplicate.  That window is the only way a
report can go twice.
"""
from __future__ import annotations

import logging
import os
import smtplib
import socket
import ssl
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from pathlib import Path
from typing import Callable

from ..config import Config, ReportsConfig
from ..dns import Resolver
from .aggregate import AggregateReport, Reporter, build_reports, period_end, period_start, report_id
from .destinations import authorized, is_suppressed, parse_uris
from .store import FAILED, PENDING, SENT, SKIPPED, Claim, Store

log = logging.getLogger("authfilter.reports")

FIRST_RETRY = 900           # seconds before the first retry; doubles, up to MAX_RETRY
MAX_RETRY = 6 * 3600
MIN_LEASE = 600


class DeliveryError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def reporter_from_config(config: Config) -> Reporter:
    rc = config.reports
    submitter = (rc.submitter or config.general.effective_authserv_id()).lower()
    return Reporter(org_name=rc.org_name or submitter,
                    email=rc.contact_email or from_address(config), submitter=submitter)


def from_address(config: Config) -> str:
    rc = config.reports
    submitter = rc.submitter or config.general.effective_authserv_id()
    return rc.from_address or f"dmarc-reports@{submitter}"


# -- the message ------------------------------------------------------------------------------
def report_message(report: AggregateReport, reporter: Reporter, payload: bytes, *, sender: str,
                   recipient: str, now: float, compressed: bool = True) -> bytes:
    """RFC 9990 "Email": a MIME message with the report attached under its file name, the
    subject ``Report Domain: D Submitter: S Report-ID: <id>``; a short text part for people."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = sender
    msg["To"] = recipient
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Subject"] = (f"Report Domain: {report.policy_domain} Submitter: {reporter.submitter} "
                      f"Report-ID: <{report.report_id}>")
    # RFC 9990 "Email" allows the Report-ID in the Message-ID: a re-sent report is recognisable.
    msg["Message-ID"] = f"<{report.report_id}@{reporter.submitter}>"
    msg["Auto-Submitted"] = "auto-generated"      # RFC 3834: no auto-replies to this
    msg.set_content(
        f"DMARC aggregate report (RFC 9990) from {reporter.org_name} about mail from "
        f"{report.policy_domain}\nfor {formatdate(report.begin, usegmt=True)} to "
        f"{formatdate(report.end, usegmt=True)}: {report.message_count} messages from "
        f"{len({r.source_ip for r in report.records})} sources.\n")
    if compressed:
        msg.add_attachment(payload, maintype="application", subtype="gzip",
                           filename=report.filename(reporter))
    else:
        msg.add_attachment(payload, maintype="text", subtype="xml",
                           filename=report.filename(reporter, compressed=False))
    return msg.as_bytes()


# -- the relay --------------------------------------------------------------------------------
@dataclass
class RelaySettings:
    host: str
    port: int
    starttls: str = "opportunistic"      # off | opportunistic | required
    verify: bool = True
    ca_file: str = ""
    user: str = ""
    password: str = ""
    timeout: float = 30.0

    @classmethod
    def from_config(cls, rc: ReportsConfig) -> "RelaySettings":
        password = ""
        if rc.relay_password_file:
            try:
                password = Path(rc.relay_password_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise DeliveryError(f"reports.relay_password_file: cannot read "
                                    f"{rc.relay_password_file}: {exc}", permanent=False) from None
        return cls(rc.relay_host, rc.relay_port, rc.relay_starttls, rc.relay_tls_verify,
                   rc.relay_ca_file, rc.relay_user, password, rc.relay_timeout)


class Relay:
    """One SMTP connection to the relay, opened on first use and reused for every report.
    When connecting fails (refused, TLS, AUTH), the rest of the run fails at once with the
    same error instead of trying again for every report."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self._broken: DeliveryError | None = None

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        try:
            smtp.ehlo()
            if s.starttls != "off":
                if smtp.has_extn("starttls"):
                    context = ssl.create_default_context(cafile=s.ca_file or None)
                    if not s.verify:
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
                    smtp.starttls(context=context)
                    smtp.ehlo()
                elif s.starttls == "required":
                    raise DeliveryError(f"relay {s.host}:{s.port} does not offer STARTTLS",
                                        permanent=False)
            if s.user:
                if smtp.sock is None or not isinstance(smtp.sock, ssl.SSLSocket):
                    raise DeliveryError(f"relay {s.host}:{s.port}: no TLS, so no AUTH (the "
                                        f"password would travel in clear)", permanent=False)
                smtp.login(s.user, s.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def send(self, sender: str, recipient: str, data: bytes) -> None:
        """Raises :class:`DeliveryError`; permanent when the relay gave a 5xx for it."""
        if self._broken is not None:
            raise self._broken
        if self._smtp is None:
            try:
                self._smtp = self._connect()
            except DeliveryError as exc:
                self._broken = exc
                raise
            except Exception as exc:
                self._broken = self._error(exc)
                raise self._broken from None
        try:
            self._smtp.sendmail(sender, [recipient], data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients.get(recipient, (450, b""))
            raise DeliveryError(f"{recipient}: relay said {code} {_text(text)}",
                                permanent=code >= 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> DeliveryError:
        """A relay problem as a DeliveryError: permanent only for a 5xx about the message
        (a refused AUTH is a configuration problem, worth retrying once it is fixed)."""
        where = f"relay {self.settings.host}:{self.settings.port}"
        if isinstance(exc, smtplib.SMTPResponseException):
            permanent = (exc.smtp_code >= 500
                         and not isinstance(exc, smtplib.SMTPAuthenticationError))
            return DeliveryError(f"{where} said {exc.smtp_code} {_text(exc.smtp_error)}",
                                 permanent=permanent)
        return DeliveryError(f"{where}: {exc or type(exc).__name__}", permanent=False)

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- one run ----------------------------------------------------------------------------------
@dataclass
class SendSummary:
    sent: list[tuple[str, int, str]] = field(default_factory=list)     # domain, begin, address
    written: list[str] = field(default_factory=list)                   # dry run: file paths
    skipped: list[tuple[str, int, str]] = field(default_factory=list)  # domain, begin, why
    retry: list[tuple[str, int, str]] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)


def retry_delay(attempts: int) -> int:
    return min(MAX_RETRY, FIRST_RETRY * 2 ** max(0, attempts - 1))


def run_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def due_reports(store: Store, rc: ReportsConfig, now: int) -> list[tuple[str, int]]:
    """(domain, period start) of unfinished reports whose period ended ``send_delay`` ago,
    within the retry window."""
    until = period_start(now - rc.send_delay, rc.period)
    oldest = period_start(now - rc.send_delay - rc.retry_for - rc.period, rc.period)
    finished = store.finished_reports(oldest)
    return [k for k in store.report_keys(oldest, until, rc.period) if k not in finished]


class ReportSender:
    """One ``report send`` run.  ``deliver`` is the relay's ``send``; with ``dry_run_dir`` the
    run claims nothing and writes each report and each message it would send there."""

    def __init__(self, config: Config, store: Store, resolver: Resolver,
                 deliver: Callable[[str, str, bytes], None] | None, *, now: int,
                 dry_run_dir: Path | None = None) -> None:
        self.config = config
        self.rc = config.reports
        self.store = store
        self.resolver = resolver
        self.deliver = deliver
        self.now = now
        self.dry_run_dir = dry_run_dir
        self.owner = run_owner()
        self.reporter = reporter_from_config(config)
        self.sender = from_address(config)
        self.lease = max(MIN_LEASE, int(self.rc.relay_timeout * self.rc.max_destinations * 4))
        self.summary = SendSummary()

    async def run(self, domain: str | None = None) -> SendSummary:
        for key_domain, begin in due_reports(self.store, self.rc, self.now):
            if domain is None or key_domain == domain.lower():
                await self.send_one(key_domain, begin)
        return self.summary

    async def send_one(self, domain: str, begin: int) -> None:
        end = period_end(begin, self.rc.period)
        if self.dry_run_dir is not None:
            await self._work(Claim(domain, begin, end, report_id(self.reporter.submitter, domain,
                                                                 begin, end), 1, ()))
            return
        claim = self.store.claim(domain, begin, end,
                                 report_id(self.reporter.submitter, domain, begin, end),
                                 self.owner, self.now, self.lease)
        if claim is None:
            return
        try:
            state, delivered, error = await self._work(claim)
        except Exception as exc:    # a store or DNS problem: keep the report for a retry
            log.warning("report %s %s: %s", domain, begin, exc)
            state, delivered, error = PENDING, set(claim.delivered), str(exc)
        next_attempt = 0
        if state == PENDING:
            if self.now - end > self.rc.retry_for:
                state = FAILED
                self.summary.failed.append((domain, begin, error))
            else:
                next_attempt = self.now + retry_delay(claim.attempts)
                self.summary.retry.append((domain, begin, error))
        self.store.finish(claim, self.owner, state=state, delivered=delivered, error=error,
                          next_attempt=next_attempt, now=self.now)

    async def _work(self, claim: Claim) -> tuple[str, set[str], str]:
        domain, begin = claim.policy_domain, claim.period_begin
        delivered = set(claim.delivered)

        def skip(why: str) -> tuple[str, set[str], str]:
            self.summary.skipped.append((domain, begin, why))
            return SKIPPED, delivered, why

        if is_suppressed(self.rc.suppress, domain=domain):
            return skip("suppressed")
        report = next(build_reports(self.store, self.reporter, begin, self.rc.period, domain), None)
        if report is None:
            return skip("no rows")
        uris, problems = parse_uris(report.policy.get("rua"))
        if not uris:
            return skip("; ".join(problems) or "no rua")
        found = await authorized(uris[:self.rc.max_destinations], domain, report.org_domain,
                                 self.resolver)
        problems += found.skipped
        targets = [u for u in found.uris if not is_suppressed(self.rc.suppress, address=u.address)]
        payload = report.gzipped(self.reporter, rfc7489=self.rc.rfc7489_xml)
        temporary = found.retry
        for uri in targets:
            if uri.address in delivered:
                continue
            data = report_message(report, self.reporter, payload, sender=self.sender,
                                  recipient=uri.address, now=self.now)
            if not uri.fits(len(data)):
                problems.append(f"{uri.address}: report ({len(data)} bytes) over its size limit")
                continue
            try:
                self._deliver(report, payload, uri.address, data)
            except DeliveryError as exc:
                problems.append(str(exc))
                temporary = temporary or not exc.permanent
                log.warning("report %s %s to %s: %s", domain, begin, uri.address, exc)
                continue
            delivered.add(uri.address)
            if self.dry_run_dir is not None:
                continue
            self.summary.sent.append((domain, begin, uri.address))
            log.info("report %s %s (%d messages) sent to %s", domain, report.report_id,
                     report.message_count, uri.address)
        error = "; ".join(problems)
        if temporary:
            return PENDING, delivered, error
        if delivered:
            return SENT, delivered, error
        if not targets:
            return skip(error or "no authorized destination")
        self.summary.failed.append((domain, begin, error))
        return FAILED, delivered, error

    def _deliver(self, report: AggregateReport, payload: bytes, address: str, data: bytes) -> None:
        if self.dry_run_dir is None:
            assert self.deliver is not None
            self.deliver(self.sender, address, data)
            return
        name = report.filename(self.reporter)
        eml = f"{name}.to.{address.replace('/', '_')}.eml"
        for path, content in ((self.dry_run_dir / name, payload), (self.dry_run_dir / eml, data)):
            path.write_bytes(content)
            if str(path) not in self.summary.written:
                self.summary.written.append(str(path))
