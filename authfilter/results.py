"""Typed inputs and outputs of the verification engine.

Every check returns one of these small frozen objects.  Result words are the ones RFC 8601
registers for the method (``pass``, ``fail``, ``none``, ``temperror``, ``permerror`` ...), so
they can go straight into an Authentication-Results header, a log line or JSON.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Mapping, NamedTuple

if TYPE_CHECKING:
    from .checks.base import Check

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Role = Literal["inbound", "submission", "local"]
"""What a listener does with mail: ``inbound`` verifies and acts; ``submission`` signs (mail
of our own users); ``local`` signs locally submitted mail (Postfix ``non_smtpd_milters``) and
never refuses it."""
ROLES: tuple[Role, ...] = ("inbound", "submission", "local")


@functools.lru_cache(maxsize=4096)
def ip_text(ip: IPAddress) -> str:
    """``str(ip)``, remembered: :mod:`ipaddress` formats the address anew on every call (a few
    microseconds), and each message of a client needs it several times (its facts, SPF,
    iprev, report rows)."""
    return str(ip)


class SmtpReply(NamedTuple):
    """An SMTP reply we give: ``(550, "5.7.26 text")``; the text carries the RFC 3463 code."""

    code: int
    text: str

    def to_bytes(self) -> bytes:
        return f"{self.code} {self.text}\r\n".encode("utf-8")


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the front-end tells us about a message (RFC 5321 envelope and client).

    ``mail_from`` is the reverse-path without angle brackets; ``""`` is the null sender and
    ``None`` means "not given" (e.g. ``authfilter check`` without ``--mail-from``).
    ``client_ip`` may be given as text; None means the front-end could not learn it (XFORWARD
    ``ADDR=[UNAVAILABLE]``, a milter CONNECT without an address): the message is verified with
    what there is (SPF ``none``, RFC 7208 s. 2.4 needs the IP), never trusted for it.
    ``trusted``: the caller vouches for the client (an embedder's authenticated user);
    :meth:`authfilter.pipeline.Pipeline.begin` also marks clients in
    ``policy.trusted_networks``.  ``role`` says what is done with the message
    (:data:`Role`).  ``auth_user``: the SASL login name, when the client authenticated (the
    milter's ``{auth_authen}``).
    """

    client_ip: IPAddress | None
    helo: str | None = None
    mail_from: str | None = None
    recipients: tuple[str, ...] = ()
    trusted: bool = False
    role: Role = "inbound"
    auth_user: str | None = None
    # the client address for logs and reports: ``unknown`` when it is not known (the log
    # line, A-R comments and report rows each ask for it: formatted once)
    client_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ip = self.client_ip
        if ip is not None and not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            ip = ipaddress.ip_address(ip)
            object.__setattr__(self, "client_ip", ip)
        object.__setattr__(self, "client_text", "unknown" if ip is None else ip_text(ip))
        if not isinstance(self.recipients, tuple):
            object.__setattr__(self, "recipients", tuple(self.recipients))
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} is not one of {', '.join(ROLES)}")

    @classmethod
    def create(cls, client_ip: str | None, helo: str | None = None, mail_from: str | None = None,
               recipients: tuple[str, ...] | list[str] = (), trusted: bool = False,
               role: Role = "inbound", auth_user: str | None = None) -> "SessionFacts":
        return cls(ipaddress.ip_address(client_ip) if client_ip else None, helo or None,
                   mail_from, tuple(recipients), trusted, role, auth_user or None)


@dataclass(frozen=True, slots=True)
class SpfResult:
    """RFC 7208 result for one identity (``mailfrom`` or ``helo``)."""

    result: str                     # none neutral pass fail softfail temperror permerror
    identity: str                   # "mailfrom" | "helo"
    domain: str | None              # the domain the check was about
    sender: str | None = None       # the full identity checked (local@domain or postmaster@helo)
    reason: str | None = None       # explanation or error text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DkimResult:
    """Result of verifying one DKIM-Signature header field (RFC 6376 / 8301 / 8463)."""

    result: str                     # pass fail neutral policy temperror permerror
    domain: str | None              # d=
    selector: str | None            # s=
    algorithm: str | None           # a=
    identity: str | None = None     # i=
    header_b: str | None = None     # first 8+ characters of b= (RFC 6008 header.b)
    key_bits: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ArcResult:
    """RFC 8617 chain validation: cv= of the chain as it arrived."""

    result: str                     # none pass fail
    instances: int = 0
    sealers: tuple[str, ...] = ()   # d= of each ARC-Seal, instance 1 first
    oldest_pass: int | None = None  # lowest instance whose AMS still validates (RFC 8617 s. 5.2)
    ams_domain: str | None = None   # d= of the newest ARC-Message-Signature
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sealers"] = list(self.sealers)
        return d


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """DMARC evaluation (RFC 9989, or RFC 7489 in compatibility mode)."""

    result: str                     # pass fail none temperror permerror
    from_domain: str | None
    policy_domain: str | None = None    # where the record was found
    org_domain: str | None = None
    policy: str = "none"                # what the record asks for this From domain (p/sp/np)
    disposition: str = "none"           # what a receiver honouring it applies
    spf_aligned: bool = False
    dkim_aligned: bool = False
    testing: bool = False               # t=y (RFC 9989) or pct<100 sampled out (RFC 7489)
    record: dict[str, str] | None = None  # the parsed tags of the record used
    reason: str | None = None
    author_error: bool = False          # permerror because the From field has no single usable
                                        # author domain (several From fields, none, unparsable)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class CheckOutcomes:
    """Results of some checks by check name, and the seconds each took (for a check run in
    stages, their sum): what the engine gathers, stage by stage, for a :class:`Verdict`."""

    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)     # check name -> what it raised

    def add_seconds(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def update(self, other: "CheckOutcomes") -> None:
        self.results.update(other.results)
        self.failed.update(other.failed)
        for name, seconds in other.seconds.items():
            self.add_seconds(name, seconds)


def _built_in_checks() -> tuple["Check", ...]:
    from .checks import BUILT_IN        # here, not at import: the checks import this module
    return BUILT_IN


_FIELD_RESULTS = frozenset({"spf", "helo_spf", "dkim", "arc", "dmarc"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """Everything the engine found out about one message.

    The built-in checks' results are fields, typed, as policy and reports read them; any other
    check's result is in ``others`` by check name.  ``result(name)`` reads either, None for a
    check that did not run.  ``checks`` made the verdict (:mod:`authfilter.checks`), in the
    order Authentication-Results, the log line, metrics and JSON show their results; by default
    the built-in ones.  ``seconds``: how long each check took.
    """

    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    arc: ArcResult
    dmarc: DmarcResult
    helo_spf: SpfResult | None = None   # the separate, labelled HELO check when configured
    errors: tuple[str, ...] = field(default=())  # problems with the message itself
    others: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple["Check", ...] = field(default_factory=_built_in_checks, compare=False, repr=False)
    seconds: Mapping[str, float] = field(default_factory=dict, compare=False, repr=False)
    failed: Mapping[str, str] = field(default_factory=dict)   # checks that raised: their reason

    @classmethod
    def of(cls, checks: tuple["Check", ...], outcomes: CheckOutcomes,
           errors: Iterable[str] = ()) -> "Verdict":
        """The verdict of ``checks`` from their outcomes (a check without one did not run)."""
        results = outcomes.results
        others = {name: result for name, result in results.items() if name not in _FIELD_RESULTS}
        return cls(results.get("spf"), results.get("dkim"), results.get("arc"),
                   results.get("dmarc"), results.get("helo_spf"), tuple(errors), others, checks,
                   outcomes.seconds, outcomes.failed)

    def result(self, name: str) -> Any:
        """The result of the check called ``name``; None when it did not run."""
        return getattr(self, name) if name in _FIELD_RESULTS else self.others.get(name)

    def reported(self) -> Iterator[tuple["Check", Any]]:
        """``(check, result)`` for each check that ran, in order: what Authentication-Results,
        the log line, metrics and ``authfilter check`` show."""
        for check in self.checks:
            result = self.result(check.name)
            if result is not None:
                yield check, result

    def to_dict(self) -> dict[str, Any]:
        out = {check.name: None if (result := self.result(check.name)) is None
               else check.to_json(result) for check in self.checks}
        out["errors"] = list(self.errors)
        return out
