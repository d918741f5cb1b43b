"""The SMTP front-end: a pre-queue proxy between Postfix (or the internet) and the next MTA.

* :mod:`.protocol`       SMTP grammar and replies, no I/O (commands, paths, ESMTP parameters,
                         xtext, XFORWARD, reply parsing).
* :mod:`.proxy_protocol` HAProxy PROXY protocol v1/v2 headers, no I/O.
* :mod:`.receiver`       bulk receive buffer: command lines and whole DATA blocks.
* :mod:`.upstream`       the SMTP client towards the next MTA, with connection reuse.
* :mod:`.state`          the session state as a table, no I/O (which verb may come when, and
                         what it changes: RFC 5321 s. 4.1.4, STARTTLS, XFORWARD).
* :mod:`.session`        one client connection: the asyncio driver (reading, replies, timeouts,
                         TLS) that asks the state table.
* :mod:`.relay`          the relay hooks: MAIL, RCPT and DATA mirrored onto the upstream.
* :mod:`.message_flow`   end of DATA: the pipeline's disposition applied to the bytes, relayed.
* :mod:`.generation`     the proxy's side of one config generation (pools, TLS, trusted peers).
* :mod:`.server`         listeners, limits, reload and drain inside one worker process.
* :mod:`.client_limits`  sessions per client address and network.

The worker processes, signals and reload of both front-ends: :mod:`authfilter.service`.
"""
