"""What happens after a message: one typed event for every observer (report recorder, failure
reporter, an embedder's own)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .results import SessionFacts, SmtpReply, Verdict

if TYPE_CHECKING:
    from .policy import Action


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """One message, after the client had its reply.

    ``verdict`` is None when nothing was verified (a trusted client, a signed outbound message);
    ``upstream_reply`` is None when the message was not relayed (refused, or the client left);
    ``headers`` are the inbound message's header fields as checked (``Message.headers``), None
    for outbound mail.
    """

    facts: SessionFacts
    verdict: Verdict | None
    action: "Action"
    upstream_reply: SmtpReply | None
    elapsed: float
    headers: list[tuple[bytes, bytes]] | None = None


@runtime_checkable
class Observer(Protocol):
    """Called once per message; it must not block (it queues its work elsewhere)."""

    def __call__(self, event: MessageEvent) -> None: ...


@runtime_checkable
class BackgroundObserver(Protocol):
    """An observer with a background task: started after the listeners, closed after the drain."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

