"""One structured log line per message: who, which identities, every result, what we did.

``message_record`` gathers the fields as plain data; ``format_kv`` writes them as
``key=value`` pairs (values with spaces or quotes JSON-quoted), ``format_json`` as one JSON
object, so the line can be grepped or shipped to a log pipeline alike.

``action`` is what the policy decided; ``outcome`` is what became of the message, which for
a message we let through is up to the next hop (:func:`outcome_of`, :data:`OUTCOMES`)::

    ... action=accept reason=... outcome=refused upstream="451 4.3.0 Error: queue file write error" ...
"""
from __future__ import annotations

import json
import re
from typing import Any

from .policy import ACCEPT, QUARANTINE, Action
from .results import SessionFacts, SmtpReply, Verdict

MAX_LOGGED_RECIPIENTS = 10
_QUEUE_ID = re.compile(r"\bqueued as ([0-9A-Za-z]+)")


OUTCOMES = {
    "delivered": "let through, and the next hop took it (2xx): queued there",
    "refused": "let through, and the next hop answered the message 4xx or 5xx, which the client "
               "got (upstream= has it)",
    "failed": "let through, and the next hop could not take it (the connection broke or timed "
              "out, or it was closing with 421): the client got 451 and retries",
    "rejected": "refused by us with 5xx (action=reject)",
    "deferred": "refused by us with 4xx (action=tempfail): the client retries",
    "gone": "the client left before its reply: nothing was let through",
}
"""The words of the ``outcome`` field, and what each means."""


def outcome_of(action: str, upstream_reply: SmtpReply | None, reply: SmtpReply | None) -> str:
    """What became of a message the policy gave ``action`` (see :data:`OUTCOMES`)."""
    if reply is None:
        return "gone"
    if action not in (ACCEPT, QUARANTINE):
        return "rejected" if reply.code >= 500 else "deferred"
    if upstream_reply is None or upstream_reply.code == 421:
        return "failed"
    return "delivered" if upstream_reply.code < 400 else "refused"


def queue_id_of(reply: SmtpReply) -> str | None:
    """Postfix (and most MTAs) name the queue file in the 250 reply to end of data."""
    m = _QUEUE_ID.search(reply.text)
    return m.group(1) if m else None
_BARE = re.compile(r"^[A-Za-z0-9_.:@+\-/,=<>\[\]]*$")


def message_record(*, role: str, facts: SessionFacts, peer: str, size: int,
                   verdict: Verdict | None, action: Action, upstream_reply: SmtpReply | None,
                   reply: SmtpReply | None, elapsed: float, session: str = "") -> dict[str, Any]:
    """``reply`` is what the client was told (None: it had gone)."""
    rcpts = list(facts.recipients)
    record: dict[str, Any] = {
        "session": session,
        "role": role,
        "client": facts.client_text,
        "peer": peer,
        "helo": facts.helo,
        "mail_from": f"<{facts.mail_from}>" if facts.mail_from is not None else None,
        "rcpt": ",".join(rcpts[:MAX_LOGGED_RECIPIENTS])
                + (f",+{len(rcpts) - MAX_LOGGED_RECIPIENTS}" if len(rcpts) > MAX_LOGGED_RECIPIENTS else ""),
        "size": size,
    }
    if verdict is not None:
        for check, result in verdict.reported():
            record.update(check.log_fields(result))
    elif facts.trusted:
        record["checks"] = "skipped (trusted)"
    record["action"] = action.kind
    record["reason"] = action.reason
    if action.would_be:
        record["would_be"] = action.would_be
    if action.override:
        record["override"] = action.override
    record["outcome"] = outcome_of(action.kind, upstream_reply, reply)
    if upstream_reply is not None:
        record["upstream"] = f"{upstream_reply.code} {upstream_reply.text}"
        record["queue_id"] = queue_id_of(upstream_reply)
    record["reply"] = f"{reply.code} {reply.text}" if reply is not None else "(client gone)"
    record["ms"] = round(elapsed * 1000, 1)
    return record


def format_kv(record: dict[str, Any]) -> str:
    parts = []
    for key, value in record.items():
        if value is None or value == "":
            continue
        text = str(value)
        parts.append(f"{key}={text if _BARE.match(text) else json.dumps(text)}")
    return " ".join(parts)


def format_json(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if v is not None}, separators=(",", ":"))
