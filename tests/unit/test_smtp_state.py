"""The SMTP session state without I/O: every (phase, verb) pair and every transition, by plain
calls (tests/integration/test_proxy_smtp.py checks a few of them again over a socket)."""
from __future__ import annotations

import ipaddress

import pytest

from authfilter.smtp import protocol as p
from authfilter.smtp.session import HANDLERS
from authfilter.smtp.state import (BEFORE_GREETING, GREETED, HAS_RECIPIENTS, IN_MAIL,
                                   OUT_OF_ORDER, Phase, SessionState)

# The replies a verb out of order gets, as Postfix gives them; every pair not named is allowed.
IN_TRANSACTION = (IN_MAIL, HAS_RECIPIENTS)
REFUSED = {
    "MAIL": {BEFORE_GREETING: p.NEED_HELO, IN_MAIL: p.NESTED_MAIL, HAS_RECIPIENTS: p.NESTED_MAIL},
    "RCPT": {BEFORE_GREETING: p.NEED_MAIL, GREETED: p.NEED_MAIL},
    "DATA": {BEFORE_GREETING: p.NEED_HELO, GREETED: p.NEED_MAIL, IN_MAIL: p.NO_VALID_RCPT},
    "XFORWARD": dict.fromkeys(IN_TRANSACTION, p.XFORWARD_IN_TRANSACTION),
    "STARTTLS": dict.fromkeys(IN_TRANSACTION, p.XFORWARD_IN_TRANSACTION),
}
VERBS = ("EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "HELP",
         "XFORWARD", "STARTTLS")
FORWARDED = {"ADDR": "192.0.2.7", "HELO": "client.example"}


def reached(phase: Phase, *, forwarded: bool = False) -> SessionState:
    """A state brought to ``phase`` by the transitions a session makes."""
    state = SessionState()
    if phase >= GREETED:
        state.greeted("client.example", esmtp=True)
    if forwarded:
        state.forwarded(FORWARDED)
    if phase >= IN_MAIL:
        state.mail_accepted()
    if phase >= HAS_RECIPIENTS:
        state.recipient_accepted()
    return state


@pytest.mark.parametrize("phase", list(Phase), ids=lambda phase: phase.name)
@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_in_every_phase(verb, phase):
    assert reached(phase).phase == phase
    assert reached(phase).refusal(verb) == REFUSED.get(verb, {}).get(phase)


def test_the_table_is_every_verb_the_session_answers_and_only_those():
    assert set(OUT_OF_ORDER) == set(VERBS)
    assert all(len(row) == len(Phase) for row in OUT_OF_ORDER.values())
    assert set(HANDLERS) == set(VERBS)


def test_a_session_starts_before_the_greeting_without_tls_or_xforward():
    state = SessionState()
    assert (state.phase, state.esmtp, state.helo_name, state.tls) == (BEFORE_GREETING, False, None, False)
    assert state.xforward is None and not state.in_transaction


@pytest.mark.parametrize("esmtp", [True, False])
def test_helo_and_ehlo_greet_and_end_the_transaction(esmtp):
    state = reached(HAS_RECIPIENTS, forwarded=True)
    state.greeted("other.example", esmtp=esmtp)           # RFC 5321 s. 4.1.4: like RSET
    assert (state.phase, state.recipients) == (GREETED, 0)
    assert (state.esmtp, state.helo_name) == (esmtp, "other.example")
    assert state.xforward is None and state.xforward_ip is None


def test_a_transaction_counts_its_recipients():
    state = reached(IN_MAIL)
    assert state.in_transaction and state.recipients == 0
    state.recipient_accepted()
    state.recipient_accepted()
    assert (state.phase, state.recipients) == (HAS_RECIPIENTS, 2)


@pytest.mark.parametrize("phase", [IN_MAIL, HAS_RECIPIENTS])
def test_the_end_of_a_transaction_returns_to_greeted(phase):
    state = reached(phase, forwarded=True)
    state.transaction_ended()
    assert (state.phase, state.recipients, state.helo_name) == (GREETED, 0, "client.example")
    assert state.xforward is None                 # XFORWARD_README: reset after end of data
    assert state.refusal("MAIL") is None


@pytest.mark.parametrize("phase", list(Phase), ids=lambda phase: phase.name)
def test_rset_ends_the_transaction_and_keeps_the_greeting(phase):
    state = reached(phase, forwarded=True)
    state.reset()
    assert state.phase == min(phase, GREETED) and state.recipients == 0
    assert state.xforward is None
    assert state.helo_name == ("client.example" if phase >= GREETED else None)


def test_starttls_forgets_the_greeting_and_xforward():
    state = reached(GREETED, forwarded=True)
    state.tls_started()                                  # RFC 3207 s. 4.2
    assert (state.phase, state.tls, state.esmtp, state.helo_name) == (BEFORE_GREETING, True, False, None)
    assert state.xforward is None
    assert state.refusal("MAIL") == p.NEED_HELO
    state.greeted("client.example", esmtp=True)
    assert state.tls and state.phase == GREETED          # TLS stays for the session


def test_xforward_attributes_add_up_and_hold_through_the_transaction():
    state = reached(GREETED)
    state.forwarded({"NAME": "mx.client.example", "ADDR": None})
    assert state.xforward == {"NAME": "mx.client.example", "ADDR": None, "PORT": None,
                              "PROTO": None, "HELO": None, "IDENT": None, "SOURCE": None}
    assert state.xforward_ip is None
    state.forwarded(FORWARDED)
    assert state.xforward["NAME"] == "mx.client.example" and state.xforward["HELO"] == "client.example"
    assert state.xforward_ip == ipaddress.ip_address("192.0.2.7")
    state.mail_accepted()
    state.recipient_accepted()
    assert state.xforward_ip == ipaddress.ip_address("192.0.2.7")   # for this transaction
    state.transaction_ended()
    assert state.xforward is None and state.xforward_ip is None     # and this one only
