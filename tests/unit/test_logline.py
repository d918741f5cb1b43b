"""The one log line per message: the policy's action and, beside it, what became of the message."""
from __future__ import annotations

import pytest

from authfilter.logline import OUTCOMES, format_kv, message_record, outcome_of
from authfilter.policy import Action
from authfilter.results import SessionFacts, SmtpReply

QUEUED = SmtpReply(250, "2.0.0 Ok: queued as 4XYZ")
WRITE_ERROR = SmtpReply(451, "4.3.0 Error: queue file write error")
UNAVAILABLE = SmtpReply(451, "4.3.0 Service temporarily unavailable, try again later")


@pytest.mark.parametrize("action, upstream, reply, outcome", [
    ("accept", QUEUED, QUEUED, "delivered"),
    ("quarantine", QUEUED, QUEUED, "delivered"),
    ("accept", WRITE_ERROR, WRITE_ERROR, "refused"),
    ("quarantine", SmtpReply(554, "5.7.1 content rejected"), SmtpReply(554, "5.7.1 content rejected"),
     "refused"),
    ("accept", SmtpReply(421, "4.3.2 shutting down"), UNAVAILABLE, "failed"),
    ("accept", None, UNAVAILABLE, "failed"),          # its connection broke or timed out
    ("reject", None, SmtpReply(550, "5.7.26 DMARC"), "rejected"),
    ("tempfail", None, SmtpReply(451, "4.3.0 Temporary failure"), "deferred"),
    ("accept", None, None, "gone"),
    ("reject", None, None, "gone"),
])
def test_the_outcome_is_what_became_of_the_message(action, upstream, reply, outcome):
    assert outcome_of(action, upstream, reply) == outcome
    assert outcome in OUTCOMES


def test_an_upstream_refusal_after_an_accept_keeps_the_action_and_says_so():
    record = message_record(role="inbound", facts=SessionFacts("192.0.2.1", mail_from="a@example.org"),
                            peer="127.0.0.1", size=10, verdict=None,
                            action=Action("accept", "trusted network"), upstream_reply=WRITE_ERROR,
                            reply=WRITE_ERROR, elapsed=0.01)
    line = format_kv(record)
    assert ('action=accept reason="trusted network" outcome=refused '
            'upstream="451 4.3.0 Error: queue file write error"') in line
    assert record["queue_id"] is None
