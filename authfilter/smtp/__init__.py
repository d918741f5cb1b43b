"""The SMTP front-end: a pre-queue proxy between Postfix (or the internet) and the next MTA.

* :mod:`.protocol`       SMTP grammar and replies, no I/O (commands, paths, ESMTP parameters,
                         xtext, XFORWARD, reply parsing).
* :mod:`.proxy_protocol` HAProxy PROXY protocol v1/v2 headers, no I/O.
* :mod:`.receiver`       bulk receive buffer: command lines and whole DATA blocks.
* :mod:`.upstream`       the SMTP client towards the next MTA, with connection reuse.
* :mod:`.session`        one client connection: the SMTP server state machine.
* :mod:`.message_flow`   end of DATA: engine, policy, headers, relay, log line, observers.
* :mod:`.server`         listeners, limits, reload and drain inside one worker process.
* :mod:`.supervisor`     several worker processes on the same ports; signals.
"""
