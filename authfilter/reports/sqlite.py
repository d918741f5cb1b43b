"""The SQLite report store: one file, WAL journal, for a single filter host.

Writers take the database lock at the start of their transaction (``BEGIN IMMEDIATE``), so
that a report claim's read-then-update cannot interleave with another process's; waiting for
the lock is bounded by ``busy_timeout``.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .store import Store, StoreError

BUSY_TIMEOUT = 30.0


class SqliteStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url[len("sqlite://"):])
        if not self.path.is_absolute():
            raise StoreError(f"{url}: give an absolute path, e.g. sqlite:///var/lib/authfilter/"
                             f"reports.sqlite")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            # isolation_level=None: no implicit transactions; _transaction() opens them.
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{url}: cannot open the report store: {exc}") from None

    @contextmanager
    def _transaction(self, *, write: bool = True, stream: bool = False) -> Iterator[Any]:
        cur = self._conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield cur
            cur.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.url}: {exc}") from exc
            raise
        finally:
            cur.close()

    def _lock_schema(self, cur: Any) -> None:
        """BEGIN IMMEDIATE already holds the only write lock."""

    def close(self) -> None:
        self._conn.close()
