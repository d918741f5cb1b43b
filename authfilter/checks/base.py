"""The one interface every check implements: what it reads, when it runs, what it reports.

A check is one authentication method: a name, the config section holding its settings, a result
type (the type parameter ``R``), the checks whose results it needs (``requires``), an evaluation
and, for that result, its Authentication-Results entries, log fields, metric keys, JSON value
and ``authfilter check`` lines.  The engine (:mod:`authfilter.engine`) runs every registered
check (:mod:`authfilter.checks`); the header, the log line, metrics, JSON and ``check`` output
loop over the checks a :class:`~authfilter.results.Verdict` was made by, so adding a check is a
module here plus its policy rules.

What a check reads decides when it runs, so that DNS round trips overlap:

* :class:`ClientCheck` reads the client's address only (iprev, DNS blocklists).  It starts as
  soon as the front-end knows the client (at connect, or at XFORWARD / PROXY), so its lookups
  overlap the whole SMTP dialogue, and its result is known when RCPT is answered: the early
  defences refuse there (:meth:`authfilter.pipeline.Transaction.recipient`).
* :class:`EnvelopeCheck` reads the session facts only (SPF).  It starts at MAIL FROM, while the
  message is still being sent.
* :class:`ContentCheck` verifies signatures in the message (DKIM, ARC).  It names the TXT records
  it reads (:meth:`~ContentCheck.dns_names`); the engine fetches those of every content check at
  once, then runs every :meth:`~ContentCheck.verify` in one call, which for a big message may be
  a worker process's: ``verify`` does no I/O and a check instance must pickle (keep its state in
  the class).
* :class:`DependentCheck` combines other checks' results (DMARC: SPF and DKIM).  Its own DNS work
  (:meth:`~DependentCheck.prepare`) starts at end of data beside the key fetch;
  :meth:`~DependentCheck.evaluate` runs once every check in ``requires`` has its result.

A result of ``None`` means the check did not run for this message (the HELO check when it is
off): it has no header entry, log field or metric, and is ``null`` in JSON.  A check that raises
gets :meth:`Check.temperror` as its result instead, the other checks still run, and the
verdict notes the failure (``Verdict.failed``), so that the pipeline tempfails the message: an
error of ours never decides its fate.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import (TYPE_CHECKING, Any, Awaitable, ClassVar, Collection, Generic, Mapping,
                    NamedTuple, TypeVar)

if TYPE_CHECKING:
    from ..config import Config
    from ..dkimcore import BodyHashes
    from ..dns import DnsAnswer, Resolver
    from ..message import Message
    from ..results import SessionFacts

R = TypeVar("R")


class Check(ABC, Generic[R]):
    """What every check has; subclass one of the three kinds below, not this.

    ``name`` keys the check's result in the verdict, its JSON, its timing and the registry;
    ``section`` names the :class:`~authfilter.config.Config` attribute holding its settings.
    The defaults of :meth:`log_fields`, :meth:`metric_keys` and :meth:`to_json` suit a result
    with a ``result`` word (RFC 8601 s. 2.7) and a ``to_dict`` method.
    """

    __slots__ = ()
    name: ClassVar[str]
    section: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()

    def settings(self, config: "Config") -> Any:
        return getattr(config, self.section) if self.section else None

    @abstractmethod
    def temperror(self, reason: str, facts: "SessionFacts") -> R:
        """The result when the check itself failed (it raised): the method's temporary-error
        result, with ``reason``."""

    @abstractmethod
    def authres(self, result: R, facts: "SessionFacts") -> list[str]:
        """Its ``method=result ...`` entries of our Authentication-Results header (RFC 8601
        s. 2.2), in order; :mod:`authfilter.authres` has the value and comment syntax."""

    @abstractmethod
    def summary(self, result: R) -> list[str]:
        """Its lines in ``authfilter check`` output (:func:`summary_line` lays one out)."""

    def log_fields(self, result: R) -> dict[str, Any]:
        """Its ``key=value`` fields in the one log line per message."""
        return {self.name: result.result}          # type: ignore[attr-defined]

    def metric_keys(self, result: R) -> list[tuple[str, str]]:
        """``(method, result)`` once per result, counted in ``authfilter_results_total``."""
        return [(self.name, result.result)]        # type: ignore[attr-defined]

    def to_json(self, result: R) -> Any:
        """Its value in :meth:`Verdict.to_dict <authfilter.results.Verdict.to_dict>`."""
        return result.to_dict()                    # type: ignore[attr-defined]


class ClientCheck(Check[R]):
    """A check of the connecting client, started when its address is known (see the module
    docstring).  ``facts`` then has the client address, the role and ``trusted``, maybe the
    HELO name; no envelope."""

    __slots__ = ()

    @abstractmethod
    def evaluate(self, facts: "SessionFacts", resolver: "Resolver", config: "Config",
                 deadline: float) -> Awaitable[R] | None:
        """The check of this client, or None when it does not apply (its result is then
        None)."""


class EnvelopeCheck(Check[R]):
    """A check of the envelope alone, started at MAIL FROM (see the module docstring)."""

    __slots__ = ()

    @abstractmethod
    def evaluate(self, facts: "SessionFacts", resolver: "Resolver", config: "Config",
                 deadline: float) -> Awaitable[R] | None:
        """The check of this envelope (an absolute ``time.monotonic()`` ``deadline``), or None
        when it does not apply (its result is then None)."""


class ContentCheck(Check[R]):
    """A check of signatures in the message, from prefetched TXT answers (see the module
    docstring)."""

    __slots__ = ()

    @abstractmethod
    def dns_names(self, message: "Message", config: "Config") -> Collection[str]:
        """The TXT records :meth:`verify` reads."""

    @abstractmethod
    def verify(self, message: "Message", keys: Mapping[str, "DnsAnswer"], config: "Config",
               now: float, bodies: "BodyHashes") -> R:
        """Pure: no I/O.  ``keys`` holds the TXT answer for each of :meth:`dns_names` (a name
        missing from it was not looked up in time); ``bodies`` the body hashes, shared with the
        other content checks."""


class MessageContext(NamedTuple):
    """What a :class:`DependentCheck` may read at end of data."""

    facts: "SessionFacts"
    message: "Message"
    resolver: "Resolver"
    config: "Config"
    deadline: float                 # absolute, time.monotonic()


class DependentCheck(Check[R]):
    """A check that combines the results of ``requires`` (see the module docstring)."""

    __slots__ = ()

    def prepare(self, context: MessageContext) -> Awaitable[Any] | None:
        """Work that needs no other check's result (DNS, mostly), started at end of data; what
        it gives is handed to :meth:`evaluate`.  None: nothing to prepare."""
        return None

    @abstractmethod
    def evaluate(self, context: MessageContext, prepared: Any,
                 results: Mapping[str, Any]) -> Awaitable[R]:
        """The result, from what :meth:`prepare` gave (None if nothing) and ``results``, which
        holds the result of every check in ``requires`` (None for one that did not run)."""


def summary_line(label: str, word: str, details: str, reason: str | None = None) -> str:
    """One ``authfilter check`` line: ``DKIM   pass      d=example.org ...  (reason)``."""
    return f"{label:<6} {word:<9} {details}" + (f"  ({reason})" if reason else "")
