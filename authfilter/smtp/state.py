"""Where an SMTP session stands, as a table, without I/O: every rule here is a plain call in a test.

A session is in one of four phases (RFC 5321 s. 3.3, s. 4.1.4):

* ``BEFORE_GREETING``: connected, or TLS just started (RFC 3207 s. 4.2), no HELO/EHLO yet;
* ``GREETED``: HELO or EHLO done, no mail transaction;
* ``IN_MAIL``: MAIL accepted, no recipient accepted yet;
* ``HAS_RECIPIENTS``: at least one RCPT accepted, so DATA may follow.

:data:`OUT_OF_ORDER` gives, for each verb the proxy implements, the reply it gets in each phase
where it may not come, or ``ALLOWED``, in Postfix's smtpd's words.  The table is only about
order: a verb's own checks (its syntax, whether the peer may XFORWARD, whether TLS is offered)
stay with the verb.  The transitions are the methods of :class:`SessionState`: HELO/EHLO and
RSET end the transaction (RFC 5321 s. 4.1.4, s. 4.1.1.5), STARTTLS forgets the greeting
(RFC 3207 s. 4.2), the end of a transaction returns to ``GREETED``.  XFORWARD attributes apply
to the next transaction only: they are forgotten at its end, at RSET and at HELO/EHLO
(Postfix XFORWARD_README), and at STARTTLS with the rest of the greeting.
"""
from __future__ import annotations

import enum
import ipaddress

from . import protocol as p


class Phase(enum.IntEnum):
    BEFORE_GREETING = 0
    GREETED = 1
    IN_MAIL = 2
    HAS_RECIPIENTS = 3


BEFORE_GREETING, GREETED, IN_MAIL, HAS_RECIPIENTS = Phase

ALLOWED = None

OUT_OF_ORDER: dict[str, tuple[bytes | None, bytes | None, bytes | None, bytes | None]] = {
    #            BEFORE_GREETING  GREETED      IN_MAIL                    HAS_RECIPIENTS
    "EHLO":     (ALLOWED,         ALLOWED,     ALLOWED,                   ALLOWED),
    "HELO":     (ALLOWED,         ALLOWED,     ALLOWED,                   ALLOWED),
    "MAIL":     (p.NEED_HELO,     ALLOWED,     p.NESTED_MAIL,             p.NESTED_MAIL),
    "RCPT":     (p.NEED_MAIL,     p.NEED_MAIL, ALLOWED,                   ALLOWED),
    "DATA":     (p.NEED_HELO,     p.NEED_MAIL, p.NO_VALID_RCPT,           ALLOWED),
    "RSET":     (ALLOWED,         ALLOWED,     ALLOWED,                   ALLOWED),
    "NOOP":     (ALLOWED,         ALLOWED,     ALLOWED,                   ALLOWED),
    "QUIT":     (ALLOWED,         ALLOWED,     ALLOWED,                   ALLOWED),
    "VRFY":     (ALLOWED,         ALLOWED,     ALLOWED,                   ALLOWED),
    "HELP":     (ALLOWED,         ALLOWED,     ALLOWED,                   ALLOWED),
    "XFORWARD": (ALLOWED,         ALLOWED,     p.XFORWARD_IN_TRANSACTION, p.XFORWARD_IN_TRANSACTION),
    "STARTTLS": (ALLOWED,         ALLOWED,     p.XFORWARD_IN_TRANSACTION, p.XFORWARD_IN_TRANSACTION),
}
"""verb -> the reply to it in each phase (indexed by :class:`Phase`); ``ALLOWED`` (None): go on."""

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SessionState:
    """One session's phase and the facts its replies depend on: the greeting, TLS, the
    recipients accepted in the transaction, the XFORWARD attributes given for the next one."""

    __slots__ = ("phase", "esmtp", "helo_name", "tls", "recipients", "xforward", "xforward_ip")

    def __init__(self) -> None:
        self.phase: Phase = BEFORE_GREETING
        self.esmtp = False
        self.helo_name: str | None = None
        self.tls = False
        self.recipients = 0
        self.xforward: dict[str, str | None] | None = None   # None: no XFORWARD yet
        self.xforward_ip: IpAddress | None = None

    def refusal(self, verb: str) -> bytes | None:
        """The reply to ``verb`` when it comes out of order now, else None (``verb`` must be a
        key of :data:`OUT_OF_ORDER`)."""
        return OUT_OF_ORDER[verb][self.phase]

    @property
    def in_transaction(self) -> bool:
        return self.phase >= IN_MAIL

    # -- transitions -------------------------------------------------------------------------
    def greeted(self, name: str, *, esmtp: bool) -> None:
        """HELO or EHLO: a new greeting, and a reset as by RSET (RFC 5321 s. 4.1.4)."""
        self.reset()
        self.phase, self.esmtp, self.helo_name = GREETED, esmtp, name

    def reset(self) -> None:
        """RSET (RFC 5321 s. 4.1.1.5): the transaction, if any, ends; the greeting stays."""
        if self.phase > GREETED:
            self.transaction_ended()
        else:
            self.forget_xforward()

    def mail_accepted(self) -> None:
        """The upstream accepted MAIL: a transaction begins."""
        self.phase = IN_MAIL

    def recipient_accepted(self) -> None:
        self.recipients += 1
        self.phase = HAS_RECIPIENTS

    def transaction_ended(self) -> None:
        """After end of data, a refusal of it, RSET or HELO/EHLO: greeted again, and the
        XFORWARD attributes were for this transaction only."""
        self.phase, self.recipients = GREETED, 0
        self.forget_xforward()

    def tls_started(self) -> None:
        """RFC 3207 s. 4.2: after the handshake the client greets again; what it said before
        (the greeting, XFORWARD) no longer counts."""
        self.tls = True
        self.phase, self.esmtp, self.helo_name = BEFORE_GREETING, False, None
        self.forget_xforward()

    def forwarded(self, attributes: dict[str, str | None]) -> None:
        """An XFORWARD command's attributes; the first XFORWARD makes every other attribute
        unavailable (None), later ones add to it."""
        if self.xforward is None:
            self.xforward = dict.fromkeys(p.XFORWARD_ATTRIBUTES)
        self.xforward.update(attributes)
        self.xforward_ip = p.xforward_client_ip(self.xforward)

    def forget_xforward(self) -> None:
        self.xforward, self.xforward_ip = None, None
