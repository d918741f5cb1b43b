"""Where log lines go and what they look like: every line, start-up to drain, in one format.

* ``logging.format = "kv"``: ``authfilter[PID]: LEVEL logger: text``.  Under systemd (stderr
  connected to the journal, ``$JOURNAL_STREAM``) the prefix is left to journald, which adds
  the identifier and PID itself; the line starts with the syslog priority instead (``<6>``,
  sd-daemon(3)), so ``journalctl -p warning`` selects by level.
* ``logging.format = "json"``: one JSON object per line with ``time`` (UTC, ISO 8601),
  ``level``, ``logger``, ``pid`` and either ``message`` or, for the per-message line, its
  fields (``action``, ``dmarc``, ``queue_id`` ...) at the top level; a traceback is one
  ``exception`` string.  Each line parses with ``json.loads``.

The per-message line is logged with its fields attached (``extra={"fields": record}``) and its
key=value text as the message, so each format renders it without parsing the other.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys

from .config import Config
from .logline import format_json

PREFIXED = "authfilter[%(process)d]: %(levelname)s %(name)s: %(message)s"
JOURNALD = "%(levelname)s %(name)s: %(message)s"
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Plain text with the sd-daemon(3) priority prefix journald turns into the entry's level."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                    .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return format_json(line)


def stderr_is_the_journal(environ: dict = os.environ) -> bool:
    """systemd sets ``JOURNAL_STREAM=dev:inode`` of the stream it connected (systemd.exec(5));
    a child whose stderr was redirected elsewhere must not be taken for journald."""
    try:
        device, inode = (int(n) for n in environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def formatter_for(config: Config) -> logging.Formatter:
    if config.logging.format == "json":
        return JsonFormatter()
    if stderr_is_the_journal():
        return JournalFormatter(JOURNALD)
    return logging.Formatter(PREFIXED)


def configure(config: Config) -> None:
    """The root logger's one handler (stderr) and level, for ``serve``."""
    # What no format of ours shows is not gathered for each record (the logging HOWTO,
    # "Optimization"): the caller's file and line (a walk up the stack), the thread's and
    # the multiprocessing process's names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(config))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.logging.level.upper())
