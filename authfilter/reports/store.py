"""The report store: one interface, SQLite (default) and PostgreSQL (several nodes, one store);
:func:`~.backends.open_store` opens the one a URL names.

Both speak the same SQL (written with ``?`` placeholders; the PostgreSQL store translates
them), so the logic lives here once and the subclasses only connect, lock and translate.

Tables (schema version in ``authfilter_schema``, created and upgraded by :meth:`Store.migrate`):

* ``dmarc_rows``: one row per evaluation (:class:`~.rows.EvaluationRow`);
* ``dmarc_reports``: one row per (policy domain, period) once a ``report send`` run has looked
  at it: its state (``pending`` -> ``sent`` | ``skipped`` | ``failed``), which destinations
  already got it, and a *claim* (owner + lease).  A run may only work on a report after
  winning the claim with one conditional ``UPDATE``, so two runs on two nodes never both
  send it; a run that dies leaves a lease that expires and the report is retried.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from .rows import EvaluationRow

SCHEMA_VERSION = 1
SCHEMA_COMPONENT = "reports"

ROW_COLUMNS = EvaluationRow._fields
GROUP_COLUMNS = ("policy_domain", "source_ip", "header_from", "envelope_from", "envelope_to",
                 "spf_domain", "spf_scope", "spf_result", "dkim", "dkim_aligned",
                 "spf_aligned", "disposition", "reasons")

# Each version's statements; a store at version N runs N+1.. in order, in one transaction.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE dmarc_rows (
               received BIGINT NOT NULL,
               policy_domain TEXT NOT NULL,
               org_domain TEXT NOT NULL,
               header_from TEXT NOT NULL,
               envelope_from TEXT NOT NULL,
               envelope_to TEXT NOT NULL,
               source_ip TEXT NOT NULL,
               spf_domain TEXT NOT NULL,
               spf_scope TEXT NOT NULL,
               spf_result TEXT NOT NULL,
               dkim TEXT NOT NULL,
               dkim_aligned SMALLINT NOT NULL,
               spf_aligned SMALLINT NOT NULL,
               disposition TEXT NOT NULL,
               reasons TEXT NOT NULL,
               policy TEXT NOT NULL,
               discovery TEXT NOT NULL)""",
        "CREATE INDEX dmarc_rows_domain_time ON dmarc_rows (policy_domain, received)",
        "CREATE INDEX dmarc_rows_time ON dmarc_rows (received)",
        """CREATE TABLE dmarc_reports (
               policy_domain TEXT NOT NULL,
               period_begin BIGINT NOT NULL,
               period_end BIGINT NOT NULL,
               report_id TEXT NOT NULL,
               state TEXT NOT NULL,
               owner TEXT,
               lease_until BIGINT NOT NULL DEFAULT 0,
               attempts INTEGER NOT NULL DEFAULT 0,
               next_attempt BIGINT NOT NULL DEFAULT 0,
               delivered TEXT NOT NULL DEFAULT '',
               last_error TEXT NOT NULL DEFAULT '',
               updated BIGINT NOT NULL,
               PRIMARY KEY (policy_domain, period_begin))""",
    ],
}

PENDING, SENT, SKIPPED, FAILED = "pending", "sent", "skipped", "failed"


class StoreError(Exception):
    """The store cannot be opened or used (bad URL, unreachable, newer schema)."""


@dataclass(frozen=True, slots=True)
class GroupedRecord:
    """One report ``record``: identical rows and how many there were."""

    policy_domain: str
    source_ip: str
    header_from: str
    envelope_from: str
    envelope_to: str
    spf_domain: str
    spf_scope: str
    spf_result: str
    dkim: str
    dkim_aligned: int
    spf_aligned: int
    disposition: str
    reasons: str
    count: int


@dataclass(frozen=True, slots=True)
class PublishedPolicy:
    """The last policy seen for a domain in a period (RFC 9990 "Aggregate Reports": "the final
    configuration observed during the period")."""

    policy: str
    discovery: str
    org_domain: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A report this run may work on: its id and the destinations that already have it."""

    policy_domain: str
    period_begin: int
    period_end: int
    report_id: str
    attempts: int
    delivered: tuple[str, ...]


class Store:
    """Shared SQL over a DB-API connection; subclasses provide :meth:`_transaction`,
    :meth:`_lock_schema` and, when needed, :meth:`_sql`."""

    url: str = ""

    def _sql(self, statement: str) -> str:
        return statement

    @contextmanager
    def _transaction(self, *, write: bool = True, stream: bool = False
                     ) -> Iterator[Any]:  # pragma: no cover - provided by subclasses
        """A cursor inside one transaction, committed on exit and rolled back on error.
        ``write=False`` may skip write locks; ``stream=True`` asks for a cursor that fetches
        results as they are read rather than all at once."""
        raise NotImplementedError
        yield

    def _lock_schema(self, cur: Any) -> None:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def _execute(self, cur: Any, statement: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._sql(statement), tuple(params))
        return cur

    # -- schema ---------------------------------------------------------------------------
    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in the store."""
        with self._transaction() as cur:
            self._lock_schema(cur)
            self._execute(cur, "CREATE TABLE IF NOT EXISTS authfilter_schema ("
                               "component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            found = self._execute(cur, "SELECT version FROM authfilter_schema WHERE component = ?",
                                  (SCHEMA_COMPONENT,)).fetchone()
            current = found[0] if found else 0
            if current > SCHEMA_VERSION:
                raise StoreError(f"{self.url}: report store schema version {current} is newer "
                                 f"than this authfilter knows ({SCHEMA_VERSION}); "
                                 f"upgrade authfilter")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    self._execute(cur, statement)
            if current == 0:
                self._execute(cur, "INSERT INTO authfilter_schema (component, version) "
                                   "VALUES (?, ?)", (SCHEMA_COMPONENT, SCHEMA_VERSION))
            elif current < SCHEMA_VERSION:
                self._execute(cur, "UPDATE authfilter_schema SET version = ? WHERE component = ?",
                              (SCHEMA_VERSION, SCHEMA_COMPONENT))
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        with self._transaction(write=False) as cur:
            found = self._execute(cur, "SELECT version FROM authfilter_schema WHERE component = ?",
                                  (SCHEMA_COMPONENT,)).fetchone()
        return found[0] if found else 0

    # -- rows -----------------------------------------------------------------------------
    def insert_rows(self, rows: Sequence[EvaluationRow]) -> None:
        """Write a batch in one transaction (all or nothing)."""
        if not rows:
            return
        statement = self._sql(f"INSERT INTO dmarc_rows ({', '.join(ROW_COLUMNS)}) "
                              f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})")
        with self._transaction() as cur:
            cur.executemany(statement, rows)

    def count_rows(self, since: int, until: int) -> int:
        with self._transaction(write=False) as cur:
            return self._execute(cur, "SELECT COUNT(*) FROM dmarc_rows WHERE received >= ? "
                                      "AND received < ?", (since, until)).fetchone()[0]

    def report_keys(self, since: int, until: int, period: int,
                    domain: str | None = None) -> list[tuple[str, int]]:
        """(policy domain, period start) of every report with rows in [since, until)."""
        where, params = self._range(since, until, domain)
        with self._transaction(write=False) as cur:
            found = self._execute(cur, f"SELECT policy_domain, received - received % ? "
                                       f"FROM dmarc_rows WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2",
                                  (period, *params)).fetchall()
        return [(d, int(b)) for d, b in found]

    def grouped_records(self, since: int, until: int,
                        domain: str | None = None) -> Iterator[GroupedRecord]:
        """Identical rows counted, ordered by policy domain then source (RFC 9990 "Aggregate
        Reports")."""
        where, params = self._range(since, until, domain)
        columns = ", ".join(GROUP_COLUMNS)
        with self._transaction(write=False, stream=True) as cur:
            self._execute(cur, f"SELECT {columns}, COUNT(*) FROM dmarc_rows WHERE {where} "
                               f"GROUP BY {columns} ORDER BY {columns}", params)
            while batch := cur.fetchmany(5000):
                for found in batch:
                    yield GroupedRecord(*found)

    def published_policies(self, since: int, until: int,
                           domain: str | None = None) -> dict[str, PublishedPolicy]:
        """The last policy seen for each domain in [since, until)."""
        where, params = self._range(since, until, domain)
        with self._transaction(write=False) as cur:
            found = self._execute(cur, f"SELECT policy_domain, policy, discovery, org_domain, "
                                       f"MAX(received) FROM dmarc_rows WHERE {where} GROUP BY "
                                       f"policy_domain, policy, discovery, org_domain", params
                                  ).fetchall()
        latest: dict[str, tuple[int, PublishedPolicy]] = {}
        for name, policy, discovery, org, seen in found:
            if name not in latest or seen > latest[name][0]:
                latest[name] = (seen, PublishedPolicy(policy, discovery, org))
        return {name: value for name, (_, value) in latest.items()}

    def source_counts(self, since: int, until: int,
                      domain: str | None = None) -> list[tuple[str, str, int, str, int]]:
        """(policy domain, source IP, DMARC pass 0/1, disposition, messages) for ``report show``."""
        where, params = self._range(since, until, domain)
        with self._transaction(write=False) as cur:
            return [tuple(r) for r in self._execute(
                cur, f"SELECT policy_domain, source_ip, CASE WHEN dkim_aligned = 1 OR "
                     f"spf_aligned = 1 THEN 1 ELSE 0 END, disposition, COUNT(*) FROM dmarc_rows "
                     f"WHERE {where} GROUP BY 1, 2, 3, 4", params).fetchall()]

    def prune(self, before: int) -> int:
        """Delete rows older than ``before`` and the report states of periods before it."""
        with self._transaction() as cur:
            deleted = self._execute(cur, "DELETE FROM dmarc_rows WHERE received < ?",
                                    (before,)).rowcount
            self._execute(cur, "DELETE FROM dmarc_reports WHERE period_end < ? AND state <> ?",
                          (before, PENDING))
        return deleted

    @staticmethod
    def _range(since: int, until: int, domain: str | None) -> tuple[str, tuple]:
        if domain:
            return ("policy_domain = ? AND received >= ? AND received < ?",
                    (domain.lower(), since, until))
        return "received >= ? AND received < ?", (since, until)

    # -- sending: claims --------------------------------------------------------------------
    def finished_reports(self, since: int) -> set[tuple[str, int]]:
        """Reports from ``since`` on that need no more work (sent, skipped or given up)."""
        with self._transaction(write=False) as cur:
            found = self._execute(cur, "SELECT policy_domain, period_begin FROM dmarc_reports "
                                       "WHERE period_begin >= ? AND state <> ?",
                                  (since, PENDING)).fetchall()
        return {(d, int(b)) for d, b in found}

    def claim(self, domain: str, begin: int, end: int, report_id: str, owner: str, now: int,
              lease: int) -> Claim | None:
        """Take the report for ``lease`` seconds, or None when it is finished, not due for a
        retry yet, or held by another live run.  The conditional UPDATE is atomic in both
        stores: of two runs racing, exactly one sees its row count as 1."""
        with self._transaction() as cur:
            self._execute(cur, "INSERT INTO dmarc_reports (policy_domain, period_begin, "
                               "period_end, report_id, state, updated) VALUES (?, ?, ?, ?, ?, ?) "
                               "ON CONFLICT (policy_domain, period_begin) DO NOTHING",
                          (domain, begin, end, report_id, PENDING, now))
            won = self._execute(cur, "UPDATE dmarc_reports SET owner = ?, lease_until = ?, "
                                     "attempts = attempts + 1, updated = ? WHERE policy_domain = ? "
                                     "AND period_begin = ? AND state = ? AND next_attempt <= ? "
                                     "AND lease_until <= ?",
                                (owner, now + lease, now, domain, begin, PENDING, now, now)
                                ).rowcount
            if won != 1:
                return None
            found = self._execute(cur, "SELECT report_id, attempts, delivered FROM dmarc_reports "
                                       "WHERE policy_domain = ? AND period_begin = ?",
                                  (domain, begin)).fetchone()
        delivered = tuple(a for a in found[2].split("\n") if a)
        return Claim(domain, begin, end, found[0], int(found[1]), delivered)

    def finish(self, claim: Claim, owner: str, *, state: str, delivered: Iterable[str],
               error: str, next_attempt: int, now: int) -> bool:
        """Record the outcome and release the claim; False if the lease was lost meanwhile
        (another run took over, and its outcome stands)."""
        with self._transaction() as cur:
            return self._execute(cur, "UPDATE dmarc_reports SET state = ?, owner = NULL, "
                                      "lease_until = 0, delivered = ?, last_error = ?, "
                                      "next_attempt = ?, updated = ? WHERE policy_domain = ? AND "
                                      "period_begin = ? AND owner = ?",
                                 (state, "\n".join(sorted(set(delivered))), error[:1000],
                                  next_attempt, now, claim.policy_domain, claim.period_begin,
                                  owner)).rowcount == 1

    def report_states(self, since: int) -> list[tuple]:
        """(domain, begin, state, attempts, delivered, last_error) for ``report show``."""
        with self._transaction(write=False) as cur:
            return [tuple(r) for r in self._execute(
                cur, "SELECT policy_domain, period_begin, state, attempts, delivered, last_error "
                     "FROM dmarc_reports WHERE period_begin >= ? ORDER BY 1, 2",
                (since,)).fetchall()]

