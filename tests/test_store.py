"""The SQLite store: schema, WAL, guarded writes, claims under contention, query plans."""

from __future__ import annotations

import gc
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from batchjobs.models import BatchJob, Status, new_job_id, utcnow
from batchjobs.store import Store


def make_job(type: str = "t", status: Status = Status.CREATED) -> BatchJob:
    now = utcnow()
    return BatchJob(id=new_job_id(), type=type, status=status, created_at=now, updated_at=now)


def test_schema_is_migrated_once_and_in_wal_mode(db_path: Path) -> None:
    Store(db_path).close()
    store = Store(db_path)  # opening again applies nothing twice
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        applied = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = 'batchjobs'"
        ).fetchall()
    assert applied == [("m001_batch_jobs",), ("m002_batch_job_counts",)]
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()
    full = Store(db_path, durability="full")
    assert full.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    full.close()


def test_unknown_durability_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="durability must be one of normal, full"):
        Store(db_path, durability="fast")
    assert not db_path.exists()


def test_each_thread_gets_its_own_connection(db_path: Path) -> None:
    store = Store(db_path)
    conns = []
    t = threading.Thread(target=lambda: conns.append(store.db.conn))
    t.start()
    t.join()
    assert conns[0] is not store.db.conn
    store.close()


def test_guarded_transition_has_one_winner_among_threads(db_path: Path) -> None:
    store = Store(db_path)
    job = make_job(status=Status.PRE_PROCESSED)
    store.insert(job)
    barrier = threading.Barrier(8)
    wins: list[BatchJob | None] = []

    def confirm() -> None:
        barrier.wait()
        wins.append(
            store.transition(
                job.id, from_statuses=[Status.PRE_PROCESSED], to=Status.CONFIRMED, now=utcnow()
            )
        )

    threads = [threading.Thread(target=confirm) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(w is not None for w in wins) == 1
    assert store.get(job.id).status == Status.CONFIRMED  # type: ignore[union-attr]
    store.close()


def test_claims_never_hand_one_job_to_two_processes_worth_of_connections(db_path: Path) -> None:
    stores = [Store(db_path) for _ in range(4)]
    for _ in range(40):
        stores[0].insert(make_job())
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(store: Store, owner: str) -> None:
        while True:
            now = utcnow()
            claim = store.claim(owner, ["t"], now=now, lease_until=now.replace(year=2100))
            if claim is None:
                return
            with lock:
                claimed.append(claim.job.id)

    threads = [threading.Thread(target=drain, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 40 and len(set(claimed)) == 40
    for store in stores:
        store.close()


def test_claim_takes_the_oldest_runnable_job_of_a_known_type(db_path: Path) -> None:
    store = Store(db_path)
    other = make_job(type="other")
    first, second = make_job(), make_job()
    done = make_job(status=Status.COMPLETED)
    for job in (other, done, first, second):
        store.insert(job)
    now = utcnow()
    claim = store.claim("me", ["t"], now=now, lease_until=now)
    assert claim is not None and claim.job.id == first.id and claim.attempts == 0
    assert store.claim("me", ["nothing"], now=now, lease_until=now) is None
    assert store.claim("me", [], now=now, lease_until=now) is None
    store.close()


def test_claim_and_list_use_indexes(db_path: Path) -> None:
    store = Store(db_path)
    plans = {}
    for name, sql in {
        "claim": "SELECT id FROM batch_jobs INDEXED BY batch_jobs_runnable WHERE status IN "
        "('created', 'confirmed', 'processing') AND type IN ('t') AND "
        "(available_at IS NULL OR available_at <= '') ORDER BY created_at, id LIMIT 1",
        "list": "SELECT * FROM batch_jobs ORDER BY created_at DESC, id DESC LIMIT 20",
        "list_status": "SELECT * FROM batch_jobs WHERE status IN ('completed') "
        "ORDER BY created_at DESC, id DESC LIMIT 20",
    }.items():
        rows = store.db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        plans[name] = " ".join(row[3] for row in rows)
    assert "batch_jobs_runnable" in plans["claim"]
    assert "SCAN batch_jobs USING INDEX idx_batch_jobs_created_at" in plans["list"]
    assert "idx_batch_jobs_status_created_at" in plans["list_status"]
    for plan in plans.values():
        assert "SCAN batch_jobs " not in plan.replace("USING INDEX", "") or "INDEX" in plan
    store.close()


def test_save_is_guarded_by_status_and_owner(db_path: Path) -> None:
    store = Store(db_path)
    job = make_job()
    store.insert(job)
    now = utcnow()
    assert store.claim("me", ["t"], now=now, lease_until=now) is not None
    assert store.save(job.id, owner="you", expect=Status.CREATED, now=now) is None
    assert store.save(job.id, owner="me", expect=Status.PROCESSING, now=now) is None
    saved = store.save(
        job.id,
        owner="me",
        expect=Status.CREATED,
        now=now,
        status=Status.PROCESSING,
        result={"advancement_count": 5, 'odd "key"': 1},
        cursor={"last": 5},
        available_at=now,
    )
    assert saved is not None
    assert (json.loads(saved[0]), json.loads(saved[1])) == (
        {},
        {"advancement_count": 5, 'odd "key"': 1},
    )
    assert store.get(job.id).status == Status.PROCESSING  # type: ignore[union-attr]
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


def test_migrating_an_old_file_fills_the_counts(db_path: Path) -> None:
    from batchjobs.store import migrations

    db = sqlite_utils.Database(db_path)
    migrations.apply(db, stop_before="m002_batch_job_counts")
    now = utcnow().isoformat()
    for i, status in enumerate(["completed", "completed", "failed"]):
        db["batch_jobs"].insert(  # type: ignore[union-attr]
            {"id": f"batch_{i}", "type": "t", "status": status, "created_at": now}
        )
    db.close()
    store = Store(db_path)
    assert store.list_and_count(filters={"status": "completed"})[1] == 2
    assert store.list_and_count()[1] == 3
    store.close()


def test_delete_keeps_a_job_that_left_the_given_statuses(db_path: Path) -> None:
    store = Store(db_path)
    done, active = make_job(status=Status.COMPLETED), make_job(status=Status.CONFIRMED)
    for job in (done, active):
        store.insert(job)
    deleted = store.delete([done.id, active.id], statuses=[Status.COMPLETED, Status.FAILED])
    assert deleted == [done.id]
    assert store.get(done.id) is None and store.get(active.id) is not None
    assert store.delete([]) == []
    store.close()


def test_a_thread_that_ends_closes_its_connection(db_path: Path) -> None:
    store = Store(db_path)
    threads = [threading.Thread(target=store.status_of, args=["batch_x"]) for _ in range(50)]
    for t in threads:
        t.start()
        t.join()
    gc.collect()
    assert store.open_connections == 1  # only this thread's
    store.close()
    assert store.open_connections == 0
