"""The PostgreSQL report store (psycopg 3): one store shared by the filter nodes of several MX.

The DSN is a libpq URI; a schema other than ``public`` is chosen the libpq way, e.g.
``postgresql://authfilter@db/mail?options=-csearch_path%3Dauthfilter``.  Schema changes run
under a transaction-level advisory lock so that nodes starting together upgrade it once.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from .rows import EvaluationRow
from .store import ROW_COLUMNS, Store, StoreError

CONNECT_TIMEOUT = 10
# pg_advisory_xact_lock key for schema changes: "authfilter" spelled in ASCII, truncated.
SCHEMA_LOCK_KEY = 0x61757468666C74


def _one_line(exc: Exception) -> str:
    """psycopg's message on one line (its texts hold newlines and tabs: one warning, one line)."""
    return " ".join(str(exc).split())


class PostgresStore(Store):
    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError("the PostgreSQL report store needs psycopg: "
                             "pip install 'authfilter[postgres]'") from None
        self._psycopg = psycopg
        self.url = _without_password(url)
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise StoreError(f"{self.url}: cannot connect: {_one_line(exc)}") from None
        self._streams = 0

    def _sql(self, statement: str) -> str:
        """``?`` placeholders to psycopg's ``%s`` (and a literal ``%`` to ``%%``)."""
        return statement.replace("%", "%%").replace("?", "%s")

    @contextmanager
    def _transaction(self, *, write: bool = True, stream: bool = False) -> Iterator[Any]:
        try:
            with self._conn.transaction():
                if stream:
                    # A named (server-side) cursor: rows arrive as fetchmany() asks for them.
                    self._streams += 1
                    cur = self._conn.cursor(name=f"authfilter_stream_{self._streams}")
                else:
                    cur = self._conn.cursor()
                with cur:
                    yield cur
        except self._psycopg.Error as exc:
            raise StoreError(f"{self.url}: {_one_line(exc)}") from exc

    def insert_rows(self, rows: Sequence[EvaluationRow]) -> None:
        """COPY rather than INSERT: several times faster for the recorder's batches."""
        if not rows:
            return
        with self._transaction() as cur:
            with cur.copy(f"COPY dmarc_rows ({', '.join(ROW_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def _lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))

    def close(self) -> None:
        self._conn.close()


def _without_password(url: str) -> str:
    """The URL for messages: ``user:secret@`` shown as ``user@``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}@{host}"
