"""The PostgreSQL store's schema: its tables, indexes and triggers, as numbered migrations.

``migrate`` brings a database to the newest version, each step in one
transaction, under an advisory lock: two processes starting at once on a new
database wait for each other, and the second finds nothing left to do. The
version lives in ``batchjobs_schema``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..errors import StoreCorruptError
from ..models import ACTIVE_STATUSES

TABLE = "batch_jobs"
COUNTS = "batch_job_counts"
SCHEDULES = "batch_job_schedules"
#: The outbox: a row per job and commit; its seq counter (and pruning horizon); readers' cursors.
EVENTS = "batch_job_events"
EVENT_SEQ = "batch_job_event_seq"
CURSORS = "batch_job_event_cursors"
#: The channel a commit that wrote events notifies (``follow`` wakes on it).
EVENTS_CHANNEL = "batchjobs_events"
VERSIONS = "batchjobs_schema"
ACTIVE_SQL = "(" + ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES) + ")"
#: The runnable index's condition, written exactly so in claims: the planner uses a
#: partial index when the query states its condition.
RUNNABLE = f"(status IN {ACTIVE_SQL} OR cleanup)"
#: Rows per (type, status, creator) in the counts table: a job's status change
#: touches the row of its connection's slot, so workers do not queue on one row.
COUNT_SLOTS = 16
#: The key of the advisory lock that migrations hold ("batchjobs" in ASCII).
MIGRATION_LOCK = 0x62617463686A6F62

#: The timestamp columns migration 1 makes (frozen: later ones come with migrations of their own).
_M1_TIMESTAMPS = (
    "created_at",
    "updated_at",
    "pre_processed_at",
    "confirmed_at",
    "processing_at",
    "completed_at",
    "canceled_at",
    "failed_at",
    "deleted_at",
    "paused_at",
)
_TIMESTAMPS = ",\n    ".join(
    f"{name} timestamptz{' NOT NULL' if name == 'created_at' else ''}" for name in _M1_TIMESTAMPS
)

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, their claims, the index of runnable jobs, of leased ones (by
    # owner) and of idempotency keys (unique per creator: the guard of one of
    # two creates with a key). A checkpoint writes no indexed column (no index
    # on available_at, room left in each page), so PostgreSQL updates the row
    # in place (HOT) instead of adding to every index.
    f"""
CREATE TABLE {TABLE} (
    id text PRIMARY KEY,
    type text NOT NULL,
    status text NOT NULL,
    created_by text,
    dry_run boolean NOT NULL DEFAULT false,
    context jsonb NOT NULL DEFAULT '{{}}',
    result jsonb NOT NULL DEFAULT '{{}}',
    {_TIMESTAMPS},
    owner text,
    lease text,
    available_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    cursor jsonb,
    cleanup boolean NOT NULL DEFAULT false,
    key text
) WITH (fillfactor = 80);
CREATE INDEX batch_jobs_runnable ON {TABLE} (created_at, id) WHERE {RUNNABLE};
CREATE INDEX batch_jobs_leased ON {TABLE} (owner) WHERE owner IS NOT NULL;
CREATE UNIQUE INDEX batch_jobs_key ON {TABLE} ((coalesce(created_by, '')), key)
    WHERE key IS NOT NULL;
CREATE INDEX batch_jobs_created_at ON {TABLE} (created_at, id);
CREATE INDEX batch_jobs_status ON {TABLE} (status, created_at);
CREATE INDEX batch_jobs_type ON {TABLE} (type, created_at);
CREATE INDEX batch_jobs_created_by ON {TABLE} (created_by, created_at);
""",
    # 2: jobs per (type, status, creator), kept by triggers, so that counting a
    # page's matches costs the same with a thousand or a million jobs.
    f"""
CREATE TABLE {COUNTS} (
    type text NOT NULL,
    status text NOT NULL,
    created_by text NOT NULL,
    slot integer NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (type, status, created_by, slot)
);
INSERT INTO {COUNTS}
    SELECT type, status, coalesce(created_by, ''), 0, count(*) FROM {TABLE} GROUP BY 1, 2, 3;
CREATE FUNCTION {COUNTS}_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s integer := pg_backend_pid() % {COUNT_SLOTS};
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO {COUNTS} VALUES (OLD.type, OLD.status, coalesce(OLD.created_by, ''), s, -1)
            ON CONFLICT (type, status, created_by, slot) DO UPDATE SET n = {COUNTS}.n - 1;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO {COUNTS} VALUES (NEW.type, NEW.status, coalesce(NEW.created_by, ''), s, 1)
            ON CONFLICT (type, status, created_by, slot) DO UPDATE SET n = {COUNTS}.n + 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER {COUNTS}_insert_delete AFTER INSERT OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION {COUNTS}_track();
CREATE TRIGGER {COUNTS}_update AFTER UPDATE OF status, type, created_by ON {TABLE}
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.type IS DISTINCT FROM NEW.type
        OR OLD.created_by IS DISTINCT FROM NEW.created_by)
    EXECUTE FUNCTION {COUNTS}_track();
""",
    # 3: recurring jobs: a schedule's definition, its next fire time and the
    # revision that guards every change to it (a fire included).
    f"""
CREATE TABLE {SCHEDULES} (
    name text PRIMARY KEY,
    type text NOT NULL,
    context jsonb NOT NULL DEFAULT '{{}}',
    cron text,
    every interval,
    timezone text NOT NULL,
    dry_run boolean NOT NULL DEFAULT false,
    created_by text,
    misfire text NOT NULL,
    next_fire_at timestamptz,
    last_fired_at timestamptz,
    last_job_id text,
    last_error text,
    paused_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz,
    revision integer NOT NULL DEFAULT 0
);
CREATE INDEX {SCHEDULES}_due ON {SCHEDULES} (next_fire_at) WHERE paused_at IS NULL;
""",
    # 4: the outbox. Seqs come from one counter row, updated last in each
    # transaction that writes events: its lock is held until the commit, so
    # seqs follow commit order (a sequence would not: a later seq could commit
    # first). pruned_through is the highest seq retention deleted.
    f"""
CREATE TABLE {EVENTS} (
    seq bigint PRIMARY KEY,
    event text NOT NULL,
    at timestamptz NOT NULL,
    origin text,
    id text NOT NULL,
    type text NOT NULL,
    status text NOT NULL,
    created_by text,
    dry_run boolean NOT NULL,
    context jsonb NOT NULL,
    result jsonb NOT NULL,
    {_TIMESTAMPS}
);
CREATE INDEX {EVENTS}_job ON {EVENTS} (id, seq);
CREATE INDEX {EVENTS}_creator ON {EVENTS} (created_by, seq);
CREATE TABLE {EVENT_SEQ} (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    last bigint NOT NULL,
    pruned_through bigint NOT NULL
);
INSERT INTO {EVENT_SEQ} VALUES (true, 0, 0);
CREATE TABLE {CURSORS} (
    name text PRIMARY KEY,
    seq bigint NOT NULL,
    owner text,
    expires_at timestamptz
);
""",
    # 5: a row holds the events of one job in one commit (``_event_rows``): how
    # many, and the earlier ones as JSON text. Rows written before hold one event.
    # Only events of jobs with a creator are read by creator: the others (an
    # application's own jobs) no longer write to that index.
    f"""
ALTER TABLE {EVENTS} ADD COLUMN steps integer NOT NULL DEFAULT 1, ADD COLUMN earlier text;
DROP INDEX {EVENTS}_creator;
CREATE INDEX {EVENTS}_creator ON {EVENTS} (created_by, seq) WHERE created_by IS NOT NULL;
""",
    # 6: the leased jobs by age, as a claim looks for an expired lease (the oldest
    # first): it reads the leased jobs alone, in order, not every runnable job. Who
    # holds leases, and a holder's own, are read from the same (few) entries.
    f"""
DROP INDEX batch_jobs_leased;
CREATE INDEX batch_jobs_leased ON {TABLE} (created_at, id) WHERE owner IS NOT NULL;
""",
    # 7: the token of the claim or checkpoint that last wrote the job (a random one per
    # write): one whose connection was lost is found by it, and a checkpoint run again
    # after it committed writes nothing twice.
    f"ALTER TABLE {TABLE} ADD COLUMN written text;",
)
#: The schema version this code writes.
VERSION = len(MIGRATIONS)


def version(conn: psycopg.Connection[Any]) -> int | None:
    """The database's schema version; ``None`` for a database batchjobs never used."""
    found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [VERSIONS]).fetchone()
    if not found or not found[0]:
        return None
    row = conn.execute(f"SELECT version FROM {VERSIONS}").fetchone()
    return None if row is None else int(row[0])


def has_tables(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn``'s search_path finds a jobs' table (of this version or another)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [TABLE]).fetchone()
    return bool(row and row[0])


def migrate(conn: psycopg.Connection[Any], location: str) -> int:
    """Bring the database to ``VERSION``; returns how many migrations ran.

    ``conn`` is in autocommit mode. ``StoreCorruptError`` when the database
    is newer than this code, or holds a ``batch_jobs`` table that is not ours.
    """
    if version(conn) == VERSION:
        return 0  # the common case: no lock taken
    conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
    try:
        with conn.transaction():
            current = version(conn)
            if current is None:
                if has_tables(conn):  # refused in the transaction: nothing is written
                    raise StoreCorruptError.not_ours(
                        location, f"has a {TABLE} table that batchjobs did not create"
                    )
                conn.execute(f"CREATE TABLE {VERSIONS} (version integer NOT NULL)")
                conn.execute(f"INSERT INTO {VERSIONS} VALUES (0)")
                current = 0
            if current > VERSION:
                raise StoreCorruptError(
                    f"The database {location} has schema version {current}, newer than this "
                    f"batchjobs knows ({VERSION}): upgrade batchjobs",
                    location=location,
                )
            for step in MIGRATIONS[current:]:
                conn.execute(step)  # type: ignore[arg-type]
            conn.execute(f"UPDATE {VERSIONS} SET version = %s", [VERSION])
        return VERSION - current
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])
