"""The milter front-end: authfilter in Postfix's ``smtpd_milters`` / ``non_smtpd_milters``.

* :mod:`.codec`  the milter wire protocol without I/O: packets in, typed events out, replies
                 to bytes (libmilter ``mfdef.h``, Postfix ``milter8.c``).
* :mod:`.state`  the session as a table (legal events, negotiation, macros, replies due) and
                 the translation of a pipeline ``Disposition`` into end-of-message packets.
* :mod:`.session`  one MTA connection: the asyncio driver between the codec and the pipeline.
* :mod:`.listener` unix and TCP listeners, limits, reload and drain in one worker
                 (:mod:`authfilter.service` runs it beside the proxy).

The protocol as Postfix speaks it, measured, is ``../shared/docs/milter.md``.
"""
