"""The SQLite store's own ways: schema and migrations, WAL, connections, indexes, its errors."""

from __future__ import annotations

import gc
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from batchjobs.errors import (
    StoreCorruptError,
    StoreError,
    StoreReadOnlyError,
    StoreUnreachableError,
)
from batchjobs.models import BatchJob, Status, new_job_id, utcnow
from batchjobs.store import ClaimRequest, SQLiteStore, open_store
from batchjobs.store.sqlite import migrations
from tests.event_rows import check_old_event_rows


def make_job(type: str = "t", status: Status = Status.CREATED) -> BatchJob:
    now = utcnow()
    return BatchJob(id=new_job_id(), type=type, status=status, created_at=now, updated_at=now)


def test_schema_is_migrated_once_and_in_wal_mode(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    store = SQLiteStore(db_path)  # opening again applies nothing twice
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        applied = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = 'batchjobs'"
        ).fetchall()
    assert applied == [
        ("m001_batch_jobs",),
        ("m002_batch_job_counts",),
        ("m003_lease_tokens_and_cleanups",),
        ("m004_batch_job_schedules",),
        ("m005_paused_at",),
        ("m006_job_keys",),
        ("m007_batch_job_events",),
        ("m008_event_rows",),
    ]
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()
    full = SQLiteStore(db_path, durability="full")
    assert full.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    full.close()


def test_unknown_durability_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="durability must be one of normal, full"):
        SQLiteStore(db_path, durability="fast")
    assert not db_path.exists()


@pytest.mark.parametrize("spelling", ["path", "url"])
def test_open_store_takes_a_path_or_a_sqlite_url(db_path: Path, spelling: str) -> None:
    store = open_store(db_path if spelling == "path" else f"sqlite:///{db_path}")
    assert isinstance(store, SQLiteStore) and store.location == str(db_path)
    store.close()
    assert db_path.exists()


def test_open_store_refuses_a_database_it_cannot_open(db_path: Path) -> None:
    with pytest.raises(ValueError, match="mysql:// databases are not supported"):
        open_store("mysql://localhost/jobs")
    assert not db_path.exists()


@pytest.mark.parametrize(
    "conninfo",
    [
        "host=db dbname=jobs password=s3cret",
        " dbname = jobs",
        "client_encoding=UTF8 host=db password=s3cret",
        "keepalives=1 sslrootcert=file://ca.pem password=s3cret",
        "USER=a password=s3cret",
        "oauth_client_secret=s3cret host=db",
    ],
)
def test_open_store_refuses_a_libpq_key_value_string_and_makes_no_file_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conninfo: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="libpq key=value connection string") as refused:
        open_store(conninfo)
    assert "postgresql://USER@HOST:PORT/DBNAME" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_url_shows_its_scheme_only_if_it_is_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^Databases of this kind are not supported") as refused:
        open_store("a password=s3cret x=file://ca.pem")
    assert "s3cret" not in str(refused.value)
    with pytest.raises(ValueError, match="^mysql:// databases are not supported"):
        open_store("mysql://app:s3cret@localhost/jobs")
    with pytest.raises(ValueError, match="^is empty: name a SQLite file or a postgresql:// URL"):
        open_store(" ")


def test_a_file_named_like_a_libpq_string_opens_through_a_sqlite_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///dbname=jobs.db")
    store.close()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".db"] == ["dbname=jobs.db"]


def test_each_thread_gets_its_own_connection(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    conns = []
    t = threading.Thread(target=lambda: conns.append(store.db.conn))
    t.start()
    t.join()
    assert conns[0] is not store.db.conn
    store.close()


def test_claim_and_list_use_indexes(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    store.claim(ClaimRequest("me", ("t",), utcnow(), utcnow(), limit=3))
    (claim,) = (sql for sql in statements if sql.startswith("UPDATE"))
    plans = {}
    for name, sql in {
        "claim": claim.split(" RETURNING")[0],
        "list": "SELECT * FROM batch_jobs ORDER BY created_at DESC, id DESC LIMIT 20",
        "list_status": "SELECT * FROM batch_jobs WHERE status IN ('completed') "
        "ORDER BY created_at DESC, id DESC LIMIT 20",
    }.items():
        rows = store.db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        plans[name] = " ".join(row[3] for row in rows)
    assert "batch_jobs_runnable" in plans["claim"] and "batch_jobs_leased" in plans["claim"]
    assert "SCAN batch_jobs USING INDEX idx_batch_jobs_created_at" in plans["list"]
    assert "idx_batch_jobs_status_created_at" in plans["list_status"]
    assert "SCAN batch_jobs\n" not in plans["claim"] + "\n"
    store.close()


def test_counts_table_agrees_with_counting_rows(make_jobs: Any) -> None:
    jobs = make_jobs()
    for i in range(12):
        jobs.create("words", {"words": ["a"]}, created_by=f"usr_{i % 3}", dry_run=i % 4 == 0)
    jobs.create("broken")
    jobs.run_until_idle(timeout=10)
    first, _ = jobs.list_and_count(status="pre_processed", limit=1)
    jobs.cancel(first[0].id)
    jobs.store.delete([jobs.list_and_count(status="completed", limit=1)[0][0].id])
    for filters in (
        {},
        {"status": "completed"},
        {"status": ["completed", "canceled"], "created_by": "usr_1"},
        {"type": "broken"},
        {"created_by": ["usr_0", "usr_2"], "type": "words"},
    ):
        _, counted = jobs.list_and_count(**filters)
        where, params = jobs.store._where(filters)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        (rows,) = jobs.store.db.execute(
            f"SELECT count(*) FROM batch_jobs{clause}", params
        ).fetchone()
        assert counted == rows, filters
    assert jobs.list_and_count()[1] == 12


def test_migrating_an_old_file_fills_the_counts_and_keeps_its_jobs(db_path: Path) -> None:
    db = sqlite_utils.Database(db_path)
    migrations.apply(db, stop_before="m002_batch_job_counts")
    now = utcnow().isoformat()
    for i, status in enumerate(["completed", "completed", "processing"]):
        db["batch_jobs"].insert(  # type: ignore[union-attr]
            {
                "id": f"batch_{i}",
                "type": "t",
                "status": status,
                "created_at": now,
                "owner": "old",
                "available_at": now,
            }
        )
    db.close()
    store = SQLiteStore(db_path)
    assert store.list_and_count(filters={"status": "completed"})[1] == 2
    assert store.list_and_count()[1] == 3
    # A lease from before tokens never matches a checkpoint; it is taken over once expired.
    (claim,) = store.claim(ClaimRequest("me", ("t",), utcnow(), utcnow()))
    assert claim.job.id == "batch_2" and claim.attempts == 1
    store.close()


def test_a_thread_that_ends_closes_its_connection(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    threads = [threading.Thread(target=store.status_of, args=["batch_x"]) for _ in range(50)]
    for t in threads:
        t.start()
        t.join()
    gc.collect()
    assert store.open_connections == 1  # only this thread's
    store.close()
    assert store.open_connections == 0


def test_a_file_that_is_not_a_database_is_a_corrupt_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(StoreCorruptError, match=f"The database {path} is damaged or is not a"):
        SQLiteStore(path)
    assert path.read_text().startswith("these are my notes")


def test_a_missing_folder_is_an_unreachable_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "jobs.db"
    with pytest.raises(StoreUnreachableError, match=f"Cannot open the database {path}"):
        SQLiteStore(path)
    assert not path.parent.exists()


def test_a_file_opened_read_only_reads_and_refuses_writes(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    job = make_job()
    store.insert(job)
    store.close()
    read_only = SQLiteStore(f"file:{db_path}?mode=ro")
    assert read_only.get(job.id) == job
    with pytest.raises(
        StoreReadOnlyError, match=f"Cannot write to the database {db_path}: it is read-only"
    ):
        read_only.insert(make_job())
    read_only.close()


def test_a_sqlite_url_with_mode_ro_opens_the_file_read_only(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    store = open_store(f"sqlite:///{db_path}?mode=ro")
    assert store.location == str(db_path) and store.list_and_count()[1] == 0
    with pytest.raises(StoreReadOnlyError, match=f"Cannot write to the database {db_path}"):
        store.insert(make_job())
    store.close()
    with pytest.raises(ValueError, match="the only option of a SQLite URL is mode=ro"):
        open_store(f"sqlite:///{db_path}?cache=shared")


def test_events_written_a_row_each_read_back_after_the_migration(db_path: Path) -> None:
    # A file as the outbox's first version left it: a row per event.
    db = sqlite_utils.Database(db_path)
    migrations.apply(db, stop_before="m008_event_rows")
    at = utcnow()
    for event, status in [("batch.created", "created"), ("batch.canceled", "canceled")]:
        db.execute(
            "INSERT INTO batch_job_events (event, at, origin, id, type, status, created_by, "
            "dry_run, context, result, created_at, updated_at, canceled_at) "
            "VALUES (?, ?, 'old', 'batch_1', 't', ?, 'usr_1', 0, '{}', '{\"n\": 1}', ?, ?, ?)",
            [
                event,
                at.isoformat(),
                status,
                at.isoformat(),
                at.isoformat(),
                at.isoformat() if status == "canceled" else None,
            ],
        )
    db.conn.commit()
    db.close()
    store = SQLiteStore(db_path)
    check_old_event_rows(store, at)
    store.close()


def test_a_commit_that_fails_is_rolled_back_and_later_writes_commit(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    refused = make_job()

    def no_commit(action: int, *args: Any) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and args[0] == "COMMIT":
            return sqlite3.SQLITE_DENY  # SQLite refuses the COMMIT: the transaction stays open
        return sqlite3.SQLITE_OK

    conn = store.db.conn
    conn.set_authorizer(no_commit)
    with pytest.raises(StoreError):
        store.insert(refused)
    conn.set_authorizer(None)
    assert store.get(refused.id) is None  # nothing of it happened
    written = store.insert(make_job())  # its own transaction, committed
    other = SQLiteStore(db_path, busy_timeout=1)  # another connection sees it, and may write
    try:
        assert other.get(written.id) == written
        other.insert(make_job())
    finally:
        other.close()
        store.close()
