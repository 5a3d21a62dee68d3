"""The SQLite store's schema: its tables, indexes and triggers, as sqlite-utils migrations."""

from __future__ import annotations

import sqlite_utils
from sqlite_utils import Migrations

from ..models import ACTIVE_STATUSES

TABLE = "batch_jobs"
ACTIVE_SQL = "(" + ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES) + ")"
#: The runnable index's condition, written exactly so in claims: SQLite uses a
#: partial index only for a query that states its condition.
RUNNABLE = f"(status IN {ACTIVE_SQL} OR cleanup = 1)"

migrations = Migrations("batchjobs")

#: The timestamp columns m001 made; later ones come with migrations of their own.
_M001_TIMESTAMPS = (
    "created_at",
    "updated_at",
    "pre_processed_at",
    "confirmed_at",
    "processing_at",
    "completed_at",
    "canceled_at",
    "failed_at",
    "deleted_at",
)


@migrations()
def m001_batch_jobs(db: sqlite_utils.Database) -> None:
    db[TABLE].create(  # type: ignore[union-attr]
        {
            "id": str,
            "type": str,
            "status": str,
            "created_by": str,
            "dry_run": int,
            "context": str,
            "result": str,
            **{name: str for name in _M001_TIMESTAMPS},
            # Claim state: who runs the job and until when nobody else may.
            "owner": str,
            "available_at": str,
            "attempts": int,
            "cursor": str,
        },
        pk="id",
        not_null={"type", "status", "dry_run", "context", "result", "created_at", "attempts"},
        defaults={"attempts": 0, "dry_run": 0, "context": "{}", "result": "{}"},
    )
    db.execute(
        f"CREATE INDEX batch_jobs_runnable ON {TABLE} (created_at, id) WHERE status IN {ACTIVE_SQL}"
    )
    for columns in (
        ["created_at"],
        ["status", "created_at"],
        ["type", "created_at"],
        ["created_by", "created_at"],
    ):
        db[TABLE].create_index(columns)  # type: ignore[union-attr]


COUNTS = "batch_job_counts"


@migrations()
def m002_batch_job_counts(db: sqlite_utils.Database) -> None:
    # Jobs per (type, status, creator), kept by triggers, so that counting a
    # page's matches costs the same with 100 or 100,000 jobs in the file.
    db.execute(
        f"CREATE TABLE {COUNTS} (type TEXT NOT NULL, status TEXT NOT NULL, "
        "created_by TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (type, status, created_by))"
    )
    db.execute(
        f"INSERT INTO {COUNTS} SELECT type, status, ifnull(created_by, ''), count(*) "
        f"FROM {TABLE} GROUP BY 1, 2, 3"
    )
    add = (
        f"INSERT INTO {COUNTS} VALUES (new.type, new.status, ifnull(new.created_by, ''), 1) "
        "ON CONFLICT DO UPDATE SET n = n + 1;"
    )
    remove = (
        f"UPDATE {COUNTS} SET n = n - 1 WHERE type = old.type AND status = old.status "
        "AND created_by = ifnull(old.created_by, '');"
    )
    db.execute(f"CREATE TRIGGER {COUNTS}_insert AFTER INSERT ON {TABLE} BEGIN {add} END")
    db.execute(f"CREATE TRIGGER {COUNTS}_delete AFTER DELETE ON {TABLE} BEGIN {remove} END")
    db.execute(
        f"CREATE TRIGGER {COUNTS}_update AFTER UPDATE OF status ON {TABLE} "
        f"WHEN old.status != new.status BEGIN {remove} {add} END"
    )


@migrations()
def m003_lease_tokens_and_cleanups(db: sqlite_utils.Database) -> None:
    # A token per claim guards a running job's writes; ``cleanup`` marks a
    # canceled job whose on_cancel has not run yet (claimable like a runnable job).
    db.execute(f"ALTER TABLE {TABLE} ADD COLUMN lease TEXT")
    db.execute(f"ALTER TABLE {TABLE} ADD COLUMN cleanup INTEGER NOT NULL DEFAULT 0")
    db.execute("DROP INDEX batch_jobs_runnable")
    db.execute(f"CREATE INDEX batch_jobs_runnable ON {TABLE} (created_at, id) WHERE {RUNNABLE}")
    # Leased rows only (a handful): finds an expired lease before any free job.
    db.execute(f"CREATE INDEX batch_jobs_leased ON {TABLE} (available_at) WHERE owner IS NOT NULL")


SCHEDULES = "batch_job_schedules"


@migrations()
def m004_batch_job_schedules(db: sqlite_utils.Database) -> None:
    # Recurring jobs: a schedule's definition, its next fire time and the
    # revision that guards every change to it (a fire included).
    db[SCHEDULES].create(  # type: ignore[union-attr]
        {
            "name": str,
            "type": str,
            "context": str,
            "cron": str,
            "every": float,  # seconds
            "timezone": str,
            "dry_run": int,
            "created_by": str,
            "misfire": str,
            "next_fire_at": str,
            "last_fired_at": str,
            "last_job_id": str,
            "last_error": str,
            "paused_at": str,
            "created_at": str,
            "updated_at": str,
            "revision": int,
        },
        pk="name",
        not_null={"type", "context", "timezone", "dry_run", "misfire", "created_at", "revision"},
        defaults={"context": "{}", "dry_run": 0, "revision": 0},
    )
    db.execute(
        f"CREATE INDEX {SCHEDULES}_due ON {SCHEDULES} (next_fire_at) WHERE paused_at IS NULL"
    )


@migrations()
def m005_paused_at(db: sqlite_utils.Database) -> None:
    # The paused status (an extension of Medusa's lifecycle) and its timestamp.
    db.execute(f"ALTER TABLE {TABLE} ADD COLUMN paused_at TEXT")


@migrations()
def m006_job_keys(db: sqlite_utils.Database) -> None:
    # A job's idempotency key, unique per creator: the index is the guard that
    # makes one of two creates with one key insert, whatever else happens.
    db.execute(f"ALTER TABLE {TABLE} ADD COLUMN key TEXT")
    db.execute(
        f"CREATE UNIQUE INDEX batch_jobs_key ON {TABLE} (ifnull(created_by, ''), key) "
        "WHERE key IS NOT NULL"
    )


EVENTS = "batch_job_events"
#: One row: the highest seq that ``prune_events`` deleted (reads below it are refused).
EVENTS_HORIZON = "batch_job_events_horizon"
CURSORS = "batch_job_event_cursors"


@migrations()
def m007_batch_job_events(db: sqlite_utils.Database) -> None:
    # The outbox. AUTOINCREMENT: a seq is never reused, even once the newest
    # events are deleted; writers take the write lock up front, so seqs grow
    # in commit order.
    timestamps = ", ".join(f"{name} TEXT" for name in (*_M001_TIMESTAMPS, "paused_at"))
    db.execute(
        f"CREATE TABLE {EVENTS} (seq INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL, "
        "at TEXT NOT NULL, origin TEXT, id TEXT NOT NULL, type TEXT NOT NULL, "
        "status TEXT NOT NULL, created_by TEXT, dry_run INTEGER NOT NULL, "
        f"context TEXT NOT NULL, result TEXT NOT NULL, {timestamps})"
    )
    # A rowid index ends with the seq: one job's or one user's events, in order.
    db.execute(f"CREATE INDEX {EVENTS}_job ON {EVENTS} (id)")
    db.execute(f"CREATE INDEX {EVENTS}_creator ON {EVENTS} (created_by)")
    db.execute(
        f"CREATE TABLE {EVENTS_HORIZON} (one INTEGER PRIMARY KEY CHECK (one = 1), "
        "pruned_through INTEGER NOT NULL)"
    )
    db.execute(f"INSERT INTO {EVENTS_HORIZON} VALUES (1, 0)")
    db.execute(
        f"CREATE TABLE {CURSORS} (name TEXT PRIMARY KEY, seq INTEGER NOT NULL, owner TEXT, "
        "expires_at TEXT)"
    )


@migrations()
def m008_event_rows(db: sqlite_utils.Database) -> None:
    # A row holds the events of one job in one commit (``_event_rows``): how many,
    # and the earlier ones. Rows written before hold one event each, as the default says.
    db.execute(f"ALTER TABLE {EVENTS} ADD COLUMN steps INTEGER NOT NULL DEFAULT 1")
    db.execute(f"ALTER TABLE {EVENTS} ADD COLUMN earlier TEXT")
    # Only events of jobs with a creator are read by creator: the others (an
    # application's own jobs) no longer write to that index.
    db.execute(f"DROP INDEX {EVENTS}_creator")
    db.execute(
        f"CREATE INDEX {EVENTS}_creator ON {EVENTS} (created_by) WHERE created_by IS NOT NULL"
    )
