"""The report store on SQLite and on the real PostgreSQL: schema versions, claims, pruning."""
from __future__ import annotations

import threading

import pytest

from authfilter.reports.backends import default_store_url, open_store
from authfilter.reports.rows import EvaluationRow
from authfilter.reports.store import PENDING, SCHEMA_VERSION, SENT, StoreError
from tests.integration.test_report_fixtures import pg_url, sqlite_url, store_url  # noqa: F401

ROW = EvaluationRow(1000, "example.com", "example.com", "example.com", "example.com", "",
                    "192.0.2.1", "example.com", "mfrom", "pass", "", 0, 1, "none", "", "p=none",
                    "treewalk")


def test_schema_is_created_once_with_its_version(store_url):
    first = open_store(store_url)
    second = open_store(store_url)           # a second node starting: nothing to do
    try:
        assert first.schema_version() == second.schema_version() == SCHEMA_VERSION
        assert second.migrate() == SCHEMA_VERSION
        first.insert_rows([ROW, ROW._replace(received=2000)])
        assert second.count_rows(0, 1500) == 1
    finally:
        first.close()
        second.close()


def test_a_newer_schema_is_refused(store_url):
    store = open_store(store_url)
    with store._transaction() as cur:
        store._execute(cur, "UPDATE authfilter_schema SET version = ? WHERE component = ?",
                       (SCHEMA_VERSION + 1, "reports"))
    store.close()
    with pytest.raises(StoreError, match="newer than this authfilter knows"):
        open_store(store_url)


def test_only_one_of_two_racing_runs_wins_each_claim(store_url):
    stores = [open_store(store_url), open_store(store_url)]
    keys = [(f"d{i}.example", 86400 * i) for i in range(60)]
    won: list[list] = [[], []]
    barrier = threading.Barrier(2)

    def race(n):
        barrier.wait()
        for domain, begin in keys:
            claim = stores[n].claim(domain, begin, begin + 86399, "id", f"run{n}", 100, 600)
            if claim:
                won[n].append(domain)

    threads = [threading.Thread(target=race, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(won[0] + won[1]) == sorted(d for d, _ in keys)
        assert not set(won[0]) & set(won[1])
    finally:
        for s in stores:
            s.close()


def test_claim_lease_retry_and_finish(store_url):
    store = open_store(store_url)
    try:
        claim = store.claim("example.com", 0, 86399, "rid", "a", now=100, lease=600)
        assert claim and claim.attempts == 1 and claim.delivered == ()
        assert store.claim("example.com", 0, 86399, "rid", "b", now=200, lease=600) is None
        # a run that died: its lease runs out and another run takes over
        taken = store.claim("example.com", 0, 86399, "rid", "b", now=701, lease=600)
        assert taken and taken.attempts == 2
        assert not store.finish(claim, "a", state=SENT, delivered=["x@example.com"], error="",
                                next_attempt=0, now=702)          # "a" lost its claim
        assert store.finish(taken, "b", state=PENDING, delivered=["x@example.com"],
                            error="y@example.com: 450", next_attempt=5000, now=702)
        assert store.claim("example.com", 0, 86399, "rid", "c", now=4999, lease=600) is None
        again = store.claim("example.com", 0, 86399, "rid", "c", now=5000, lease=600)
        assert again.delivered == ("x@example.com",) and again.attempts == 3
        assert store.finish(again, "c", state=SENT, delivered=["x@example.com", "y@example.com"],
                            error="", next_attempt=0, now=5001)
        assert store.finished_reports(0) == {("example.com", 0)}
        assert store.claim("example.com", 0, 86399, "rid", "d", now=99999, lease=600) is None
    finally:
        store.close()


def test_prune_drops_old_rows_and_finished_states(store_url):
    store = open_store(store_url)
    try:
        store.insert_rows([ROW, ROW._replace(received=200000)])
        claim = store.claim("example.com", 0, 86399, "rid", "a", now=100, lease=600)
        store.finish(claim, "a", state=SENT, delivered=[], error="", next_attempt=0, now=100)
        assert store.prune(100000) == 1
        assert store.count_rows(0, 10 ** 9) == 1
        assert store.finished_reports(0) == set()
    finally:
        store.close()


def test_unreachable_or_unknown_stores_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="cannot connect"):
        open_store("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(StoreError, match="sqlite:///PATH or postgresql"):
        open_store("mysql://x")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open the report store"):
        open_store(f"sqlite://{blocker}/reports.sqlite")


def test_default_store_location(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert default_store_url() == f"sqlite://{tmp_path / 'state' / 'reports.sqlite'}"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    url = default_store_url()
    assert url in ("sqlite:///var/lib/authfilter/reports.sqlite",
                   f"sqlite://{tmp_path / 'xdg' / 'authfilter' / 'reports.sqlite'}")
