"""The PostgreSQL store: many processes on many machines, one database.

Claims are one ``UPDATE`` over rows picked with ``FOR UPDATE SKIP LOCKED``,
so concurrent workers never wait for each other's picks; every other change
is one guarded statement (results and contexts merged by jsonb's ``||``,
which is shallow, as the protocol says). A transaction that makes a job
runnable sends ``NOTIFY`` with its ``COMMIT``, and ``listen`` wakes this
process's workers on it, whichever machine made the change. psycopg errors
become ``StoreError`` subclasses here, and only here.

Plans. psycopg prepares a statement run five times, and the server then keeps
one plan for it (a generic plan) until something invalidates it: without
statistics (no autovacuum), a plan made while the table was tiny stays however
large the table grows, and on a tiny table a whole scan, or one of a status's
index, costs as little as a look-up by id. So the hot statements are written so
that no other plan exists (a checkpoint's guard is one expression no index
answers: its row is found by id alone; a claim runs with sequential scans and
sorts off), and the others are not prepared (``prepare=False``): planned at each
run, with the table as it is then.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from ..errors import InvalidDataError, StoreCorruptError, StoreError
from ..models import (
    ACTIVE_STATUSES,
    TIMESTAMP_FIELDS,
    UPDATED_EVENT,
    BatchJob,
    Event,
    Status,
    status_event,
    utcnow,
)
from ._event_rows import JOB_COLUMNS, Step
from ._postgres_connections import (
    DEFAULT_RETRY_FOR,
    Database,
    Finish,
    Listener,
    boundary,
    tables_schema,
)
from ._postgres_outbox import PostgresOutbox, with_one_event
from ._postgres_outbox import job_record as _record
from ._postgres_schedules import PostgresSchedules
from ._postgres_schema import (
    COUNTS,
    EVENTS,
    EVENTS_CHANNEL,
    RUNNABLE,
    SCHEDULES,
    TABLE,
    has_tables,
    migrate,
)
from .base import (
    ORDER_FIELDS,
    Checkpoint,
    Claim,
    ClaimRequest,
    Holder,
    Lease,
    Store,
    StoredJob,
    checkpoint_events,
    countable,
    filter_values,
)

__all__ = ["DEFAULT_POOL_SIZE", "POOL_SPARE", "PostgresStore"]

T = TypeVar("T")

#: Connections in the pool when the caller does not size it.
DEFAULT_POOL_SIZE = 5
#: Connections beyond one per worker thread: the heartbeat, the pre-processing
#: lane, the application's own calls.
POOL_SPARE = 3
#: A job's columns, in the order ``_record`` and ``_claim`` read them: the record's
#: (as an event row holds them), then the lease's and the run's.
COLUMNS = (*JOB_COLUMNS, "lease", "available_at", "attempts", "cursor")
_SELECT = ", ".join(COLUMNS)
_LEASE = len(JOB_COLUMNS)  # where the lease's columns start in COLUMNS
_SQL_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
#: Columns that may be null: ordered with nulls first, as SQLite does.
_NULLABLE_ORDER = frozenset(TIMESTAMP_FIELDS) - {"created_at"} | {"created_by"}
_ACTIVE = frozenset(ACTIVE_STATUSES)
_TOKEN = "md5(random()::text || clock_timestamp()::text)"
#: Sent after a claim in a transaction that goes on (``_claim_settings``).
_CLAIMED = "SET LOCAL enable_seqscan TO DEFAULT"
#: The first key of the transaction locks that claims hold (the second: their token's).
CLAIM_LOCK = 0x626A6362  # "bjcb"


def _job_row(job: BatchJob) -> tuple[Any, ...]:
    """``job``'s values for the first ``_LEASE`` columns."""
    return (
        job.id,
        job.type,
        job.status.value,
        job.created_by,
        job.dry_run,
        Jsonb(job.context),
        Jsonb(job.result),
        *(getattr(job, name) for name in TIMESTAMP_FIELDS),
    )


def _claim(row: Sequence[Any]) -> Claim:
    return Claim(
        job=_record(row),
        lease=Lease(row[0], row[_LEASE]),
        expires_at=row[_LEASE + 1],
        cursor=row[_LEASE + 3] or {},
        attempts=row[_LEASE + 2],
    )


@functools.lru_cache(maxsize=256)
def _save_statement(
    sets: tuple[str, ...], result: bool, context: bool, olds: tuple[str, ...]
) -> str:
    """The guarded ``UPDATE`` of a checkpoint of this shape (the text alone: a
    checkpoint's shapes are few, and a progress checkpoint is the hot path)."""
    assignments = [f"{name} = %s" for name in sets]
    if result:
        assignments.append("result = result || %s")
    if context:
        assignments.append("context = context || %s")
    # Its token written, and not written yet: run again after its connection was lost,
    # a checkpoint that the lost run committed meanwhile changes nothing (and is found).
    # The status and lease compared as one row: no index answers that, so the job is
    # found by its id alone whatever plan is kept (see the module's docstring).
    assignments.append("written = %s")
    guard = (
        "id = %s AND (status, lease) IS NOT DISTINCT FROM (%s, %s) AND written IS DISTINCT FROM %s"
    )
    if not olds:
        return f"UPDATE {TABLE} SET {', '.join(assignments)} WHERE {guard} RETURNING {_SELECT}"
    # The steps' timestamps as they were, returned too: the events of the steps
    # before the last carry the job as at each step (checkpoint_events).
    old = ", ".join(f"{name} AS old_{name}" for name in olds)
    return (
        f"UPDATE {TABLE} SET {', '.join(assignments)} "
        f"FROM (SELECT {old} FROM {TABLE} WHERE id = %s FOR UPDATE) AS old WHERE {guard} "
        f"RETURNING {_SELECT}, {', '.join(f'old_{name}' for name in olds)}"
    )


class PostgresStore(PostgresOutbox, PostgresSchedules, Store):
    """Batch jobs (and schedules) in a PostgreSQL database, shared by any number of
    processes on any number of machines.

    ``url`` is any libpq URL (``postgresql://user:password@host:5432/db``,
    ``postgres://`` too; ``?options=-csearch_path%3Dmyschema`` for a schema of
    its own, which must exist). Its tables are created, or migrated, on first use;
    without ``create``, a database without them is refused (``StoreCorruptError``).
    ``pool_size`` connections at most are open (one per worker thread, plus room for
    the heartbeat and the application's calls), and ``listen`` opens one more. A
    lost connection is retried, with backoff, for ``retry_for`` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        retry_for: float = DEFAULT_RETRY_FOR,
        create: bool = True,
    ) -> None:
        self._database = Database(url, pool_size=pool_size, retry_for=retry_for)
        self.location = self._database.location
        self._open(create)

    def __repr__(self) -> str:
        return f"<PostgresStore {self.location!r}>"

    @boundary
    def _open(self, create: bool) -> None:
        try:
            with self._database.connect() as conn:
                if not create and not has_tables(conn):
                    raise StoreCorruptError.not_ours(self.location, f"has no {TABLE} table")
                migrate(conn, self.location)
                self._database.schema = tables_schema(conn)
        except psycopg.OperationalError as error:
            raise self._database.error(error) from None
        self._database.open()

    def close(self) -> None:
        self._database.close()

    def provision(self, threads: int) -> None:
        """Size the pool for ``threads`` worker threads (plus the heartbeat, the
        pre-processing lane and the application's own calls)."""
        self._database.pool.resize(min_size=1, max_size=threads + POOL_SPARE)

    # -- wake-ups --------------------------------------------------------------

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` whenever a job of any type may have become runnable, whoever
        made it so (``NOTIFY`` from every process on the database)."""
        listener = Listener(self._database, wake)
        listener.start()
        return listener.stop

    # -- fault injection (batchjobs.testing) --------------------------------

    def set_read_only(self, read_only: bool) -> None:
        """Run every write transaction ``READ ONLY`` (the server refuses its writes)."""
        self._database.read_only = read_only

    def lock_held(self, timeout: float = 0.05) -> AbstractContextManager[None]:
        """Lock the tables against writes from another connection; ours wait ``timeout``."""
        return self._database.lock_held(timeout, [TABLE, SCHEDULES])

    def fail_commits(self, times: int) -> None:
        """Roll back the next ``times`` write transactions instead of committing them."""
        self._database.failing_commits = times

    # -- writes --------------------------------------------------------------

    def _insert(
        self, conn: psycopg.Connection[Any], jobs: Sequence[BatchJob], wake: set[str]
    ) -> Sequence[Event]:
        """Insert ``jobs`` and their ``batch.created`` events; the events, numbered."""
        names = COLUMNS[:_LEASE]
        rows = [_job_row(job) for job in jobs]
        marks = ", ".join("%s" for _ in names)
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({marks})", rows)
        wake.update(job.type for job in jobs if job.status in _ACTIVE)
        return self._write_events(
            conn, [[("batch.created", job, job.created_at or utcnow(), {})] for job in jobs]
        )

    @boundary
    def insert(self, job: BatchJob, *, key: str | None = None) -> BatchJob:
        if key is None:
            self._committed(
                self._database.write(lambda conn, wake: self._insert(conn, [job], wake))
            )
            return job
        names = (*COLUMNS[:_LEASE], "key")
        values = [*_job_row(job), key]
        # The unique index decides: of two inserts with one key, one writes; the
        # other waits for it to commit, writes nothing and reads its job.
        query = (
            f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join('%s' for _ in names)}) "
            "ON CONFLICT ((coalesce(created_by, '')), key) WHERE key IS NOT NULL DO NOTHING "
            "RETURNING id"
        )

        def work(conn: psycopg.Connection[Any], wake: set[str]) -> tuple[BatchJob, Sequence[Event]]:
            if conn.execute(query, values).fetchone() is not None:
                if job.status in _ACTIVE:
                    wake.add(job.type)
                at = job.created_at or utcnow()
                return job, self._write_events(conn, [[("batch.created", job, at, {})]])
            found = self._by_key(conn, key, job.created_by)
            if found is None:  # pragma: no cover - the key's holder was deleted meanwhile
                raise StoreError(f"The job with key {key!r} vanished while it was read")
            return found, []

        stored, events = self._database.write(work)
        self._committed(events)
        return stored

    @staticmethod
    def _by_key(conn: psycopg.Connection[Any], key: str, created_by: str | None) -> BatchJob | None:
        row = conn.execute(
            f"SELECT {_SELECT} FROM {TABLE} WHERE coalesce(created_by, '') = %s AND key = %s",
            [created_by or "", key],
        ).fetchone()
        return None if row is None else _record(row)

    @boundary
    def get_by_key(self, key: str, *, created_by: str | None) -> BatchJob | None:
        return self._database.read(lambda conn: self._by_key(conn, key, created_by))

    @boundary
    def transition(
        self,
        id: str,
        *,
        from_statuses: Iterable[Status],
        to: Status,
        now: datetime,
        clear: Iterable[str] = (),
        reset_claim: bool = False,
    ) -> BatchJob | None:
        sets: dict[str, str] = {"status": "%(to)s", to.timestamp_field: "%(now)s"}
        sets["updated_at"] = "%(now)s"
        for name in clear:
            if name not in TIMESTAMP_FIELDS:
                raise ValueError(f"{name!r} is not a timestamp field")
            sets[name] = "NULL"
        if reset_claim:
            sets.update(owner="NULL", lease="NULL", available_at="NULL", attempts="0")
        if to == Status.CANCELED:
            sets["cleanup"] = "(processing_at IS NOT NULL)"
        query = (
            f"UPDATE {TABLE} SET {', '.join(f'{k} = {v}' for k, v in sets.items())} "
            f"WHERE id = %(id)s AND status = ANY(%(froms)s) RETURNING {_SELECT}"
        )
        params = {
            "to": to.value,
            "now": now,
            "id": id,
            "froms": [Status(s).value for s in from_statuses],
        }

        def work(
            conn: psycopg.Connection[Any], wake: set[str]
        ) -> tuple[BatchJob | None, Sequence[Event]]:
            row = conn.execute(query, params).fetchone()
            if row is None:
                return None, []
            job = _record(row)
            if to in _ACTIVE:
                wake.add(job.type)
            return job, self._write_events(conn, [[(status_event(to), job, now, {})]])

        return self._write(work)

    @boundary
    def merge(
        self,
        id: str,
        *,
        now: datetime,
        context: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> BatchJob | None:
        query = (
            f"UPDATE {TABLE} SET context = context || %s, result = result || %s, "
            f"updated_at = %s WHERE id = %s RETURNING {_SELECT}"
        )
        params = [Jsonb(dict(context or {})), Jsonb(dict(result or {})), now, id]

        def work(
            conn: psycopg.Connection[Any], wake: set[str]
        ) -> tuple[BatchJob | None, Sequence[Event]]:
            row = conn.execute(query, params).fetchone()
            if row is None:
                return None, []
            job = _record(row)
            return job, self._write_events(conn, [[(UPDATED_EVENT, job, now, {})]])

        return self._write(work)

    @boundary
    def delete(
        self,
        ids: Iterable[str],
        *,
        statuses: Iterable[Status] | None = None,
        updated_before: datetime | None = None,
    ) -> list[str]:
        ids = list(ids)
        if not ids:
            return []
        query = f"DELETE FROM {TABLE} WHERE id = ANY(%s)"
        params: list[Any] = [ids]
        if statuses is not None:
            query += " AND status = ANY(%s)"
            params.append([Status(s).value for s in statuses])
        if updated_before is not None:
            query += " AND updated_at < %s"
            params.append(updated_before)

        def work(conn: psycopg.Connection[Any], wake: set[str]) -> list[str]:
            deleted = [
                row[0] for row in conn.execute(f"{query} RETURNING id", params, prepare=False)
            ]
            self._delete_events(conn, deleted)  # the jobs' events go with them
            return deleted

        return self._database.write(work)

    @boundary
    def dump(self, *, after: str | None = None, limit: int = 1000) -> list[StoredJob]:
        rows = self._database.read(
            lambda conn: conn.execute(
                f"SELECT {_SELECT}, cleanup, owner IS NOT NULL, key FROM {TABLE} "
                "WHERE id > %s ORDER BY id LIMIT %s",
                [after or "", limit],
            ).fetchall()
        )
        return [
            StoredJob(
                job=_record(row),
                cursor=row[_LEASE + 3] or {},
                cleanup=row[_LEASE + 4],
                attempts=row[_LEASE + 2],
                leased_until=row[_LEASE + 1] if row[_LEASE + 5] else None,
                key=row[_LEASE + 6],
            )
            for row in rows
        ]

    @boundary
    def load(self, jobs: Sequence[StoredJob]) -> int:
        names = (*COLUMNS[:_LEASE], "cursor", "cleanup", "attempts", "key")
        rows = [
            (
                *_job_row(stored.job),
                Jsonb(stored.cursor) if stored.cursor else None,
                stored.cleanup,
                stored.attempts,
                stored.key,
            )
            for stored in jobs
        ]
        marks = ", ".join("%s" for _ in names)
        query = (
            f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({marks}) "
            "ON CONFLICT DO NOTHING RETURNING type, status"
        )

        def work(conn: psycopg.Connection[Any], wake: set[str]) -> int:
            written = 0
            with conn.cursor() as cur:
                cur.executemany(query, rows, returning=True)
                while True:
                    for kind, status in cur.fetchall():
                        written += 1
                        if Status(status) in _ACTIVE:
                            wake.add(kind)
                    if not cur.nextset():
                        break
            return written

        return self._database.write(work) if rows else 0

    # -- claims, checkpoints, leases -------------------------------------------

    @boundary
    def claim(self, request: ClaimRequest) -> list[Claim]:
        # One statement (a claim never wakes anyone): its own transaction, which holds
        # a lock named by the claim's token. Lost in flight, the claim is waited for
        # (the server may still be running it), then found by its owner and token.
        token = secrets.token_hex(8)
        lock = [CLAIM_LOCK, int(token[:8], 16) - 2**31]

        def recover(conn: psycopg.Connection[Any]) -> list[Claim] | None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock)
                rows = conn.execute(
                    f"SELECT {_SELECT} FROM {TABLE} WHERE owner = %s AND written = %s",
                    [request.owner, token],
                ).fetchall()
            if not rows:
                return None
            return sorted(
                (_claim(row) for row in rows),
                key=lambda c: (c.job.created_at or datetime.min, c.job.id),
            )

        return self._database.statement(
            lambda conn: self._claim(conn, request, token, lock), recover
        )

    @staticmethod
    def _claim_query(request: ClaimRequest, token: str) -> tuple[str, dict[str, Any]] | None:
        """The claim's statement and its parameters; ``token`` names this claim."""
        if not request.types or request.limit < 1 or (request.ids is not None and not request.ids):
            return None
        wanted = ", ".join(f"'{Status(s).value}'" for s in request.statuses) or "NULL"
        status_sql = f"status IN ({wanted})"
        # The same statuses, as the expired leases are read: the runnable ones among the
        # claim's, named by the statuses they are not (a status is always one of
        # Status), so that the planner reads the leased jobs' index, not every runnable
        # job (the runnable index's condition cannot be inferred from these terms).
        claimable = {Status(s) for s in request.statuses} & _ACTIVE
        others = ", ".join(f"'{s.value}'" for s in Status if s not in claimable)
        leased_sql = f"status <> ALL(ARRAY[{others}])"
        if request.cleanups:
            status_sql = f"({status_sql} OR cleanup)"
            leased_sql = f"({leased_sql} OR cleanup)"
        where = " AND type = ANY(%(types)s)"
        if request.ids is not None:
            where += " AND id = ANY(%(ids)s)"
        # An expired lease first, and alone: its worker died, and jobs waiting
        # in a batch must not be charged an attempt if this one kills us too.
        query = (
            f"WITH expired AS (SELECT id FROM {TABLE} WHERE owner IS NOT NULL "
            f"AND (available_at <= %(now)s OR owner = ANY(%(gone)s)) AND {leased_sql}{where} "
            "ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED), "
            f"free AS (SELECT id FROM {TABLE} WHERE {RUNNABLE} AND {status_sql}{where} "
            "AND owner IS NULL AND (available_at IS NULL OR available_at <= %(now)s) "
            "AND NOT EXISTS (SELECT FROM expired) "
            "ORDER BY created_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            f"UPDATE {TABLE} j SET owner = %(owner)s, lease = {_TOKEN}, "
            "available_at = %(until)s, attempts = j.attempts + (j.owner IS NOT NULL)::int, "
            "written = %(token)s "
            # An array of the ids, not IN (subquery): the rows are found by their
            # primary key whatever the planner thinks of the table's size.
            "WHERE j.id = ANY(ARRAY(SELECT id FROM expired UNION ALL SELECT id FROM free)) "
            f"RETURNING {', '.join(f'j.{c}' for c in COLUMNS)}"
        )
        params = {
            "types": list(request.types),
            "ids": list(request.ids or ()),
            "now": request.now,
            "limit": request.limit,
            "owner": request.owner,
            "until": request.lease_until,
            "gone": list(request.gone),
            "token": token,
        }
        return query, params

    @staticmethod
    def _claim_settings(request: ClaimRequest, *, flush: bool) -> str:
        """The statement that sets, for the rest of its transaction, how a claim is planned
        and committed (sent just before the claim, in the same round trip).

        The planner reads the indexes in their order and stops after ``limit`` jobs,
        instead of sorting every runnable job (no sort: the runnable jobs' index for the
        free ones, the leased jobs' for the expired), whatever it guesses of the table:
        statistics may be missing or old, since a queue fills and empties faster than
        ``ANALYZE`` runs. A claim of given ids finds them by primary key and sorts them.
        No sequential scan either: a plan kept from when the table was tiny would read
        the whole table at every claim once it is large (the jobs are updated by id).
        A statement after the claim in its transaction must not run so (``_CLAIMED``):
        one that can only scan (the events' counter) would be planned at a cost that
        makes the server compile it (JIT), a tenth of a second at every commit.

        Without ``flush`` the ``COMMIT`` does not wait for its WAL flush: for a
        transaction that claims and writes nothing else (a checkpoint committed with a
        claim is flushed as ever). A claim lost with a crash of the server leaves its job
        unleased, as it was; the worker's next write, guarded by the lease, fails and it
        lets the job go. A later flushed commit flushes the claim with it: no write can
        outlive the claim it rests on.
        """
        settings = ["set_config('enable_seqscan', 'off', true)"]
        if request.ids is None:
            settings.append("set_config('enable_sort', 'off', true)")
        if not flush:
            settings.append("set_config('synchronous_commit', 'off', true)")
        return f"SELECT {', '.join(settings)}"

    @staticmethod
    def _claim_prepared(request: ClaimRequest) -> bool | None:
        """Whether a claim's statement may be prepared: not one of given ids, whose
        plan (kept) would read the jobs of its types, not those ids, by their index."""
        return None if request.ids is None else False

    def _claim(
        self, conn: psycopg.Connection[Any], request: ClaimRequest, token: str, lock: list[int]
    ) -> list[Claim]:
        built = self._claim_query(request, token)
        if built is None:
            return []
        # One round trip, one transaction: the two statements are pipelined (without
        # a BEGIN, what is sent before a pipeline's sync is one transaction). The
        # first takes the claim's lock, before the claim may wait for anything.
        with conn.pipeline():
            settings = self._claim_settings(request, flush=False)
            conn.execute(f"{settings}, pg_advisory_xact_lock(%s, %s)", lock)
            cur = conn.execute(*built, prepare=self._claim_prepared(request))
        claims = [_claim(row) for row in cur.fetchall()]
        claims.sort(key=lambda c: (c.job.created_at or datetime.min, c.job.id))
        return claims

    @staticmethod
    def _save_query(cp: Checkpoint, token: str) -> tuple[str, list[Any]]:
        """A checkpoint's statement and its parameters; ``token`` names this write of it."""
        sets: dict[str, Any] = {}
        for status, at in cp.steps:
            sets["status"] = status.value
            sets[status.timestamp_field] = at
        sets["updated_at"] = cp.now
        if cp.cursor is not None:
            sets["cursor"] = Jsonb(dict(cp.cursor))
        if cp.release:
            sets["owner"] = sets["lease"] = None
            sets["available_at"] = cp.until  # None: claimable at once
        elif cp.until is not None:
            sets["available_at"] = cp.until  # else the lease stays as it is
        params = list(sets.values())
        if cp.result:
            params.append(Jsonb(dict(cp.result)))
        if cp.context:
            params.append(Jsonb(dict(cp.context)))
        olds = tuple(dict.fromkeys(status.timestamp_field for status, _ in cp.steps))
        query = _save_statement(tuple(sets), bool(cp.result), bool(cp.context), olds)
        guard = [cp.lease.id, cp.expect.value, cp.lease.token, token]
        if olds:
            return query, [*params, token, cp.lease.id, *guard]
        return query, [*params, token, *guard]

    @staticmethod
    def _saved(row: Sequence[Any] | None, cp: Checkpoint) -> tuple[BatchJob | None, list[Step]]:
        """The job a checkpoint's statement returned, and the events it makes."""
        if row is None:
            return None, []
        job = _record(row)
        olds = list(dict.fromkeys(status.timestamp_field for status, _ in cp.steps))
        earlier = dict(zip(olds, row[len(COLUMNS) :], strict=True))
        return job, checkpoint_events(job, cp, earlier)

    @boundary
    def save(self, checkpoint: Checkpoint) -> BatchJob | None:
        token = secrets.token_hex(8)
        query, params = self._save_query(checkpoint, token)
        cp = checkpoint
        makes_events = bool(cp.steps or cp.result or cp.context or cp.cursor is not None)
        if not checkpoint.release and not makes_events:
            # One statement: its own transaction. Lost in flight, it is found
            # again by its token.
            def recover(conn: psycopg.Connection[Any]) -> BatchJob | None:
                row = conn.execute(
                    f"SELECT {_SELECT} FROM {TABLE} WHERE id = %s AND written = %s",
                    [checkpoint.lease.id, token],
                ).fetchone()
                return None if row is None else _record(row)

            return self._database.statement(
                lambda conn: (
                    None
                    if (row := conn.execute(query, params).fetchone()) is None
                    else _record(row)
                ),
                recover,
            )

        if not checkpoint.release and not cp.steps:
            return self._save_progress(checkpoint, query, params, token)

        def work(
            conn: psycopg.Connection[Any], wake: set[str]
        ) -> tuple[BatchJob | None, Sequence[Event]]:
            job, steps = self._saved(conn.execute(query, params).fetchone(), checkpoint)
            if job is None:
                return None, []
            if checkpoint.release and checkpoint.until is None and job.status in _ACTIVE:
                wake.add(job.type)  # handed over: another worker may take it now
            return job, self._write_events(conn, [steps] if steps else [])

        return self._write(work)

    def _save_progress(
        self, cp: Checkpoint, query: str, params: list[Any], token: str
    ) -> BatchJob | None:
        """A checkpoint that changes the run's progress and nothing else: its one
        ``batch.updated`` event written by the same statement, its own transaction
        (one round trip, as a bare ``UPDATE``). Lost in flight, it is found again by
        its token, and its event by its time."""
        statement = with_one_event(query, self._database.channel(EVENTS_CHANNEL))
        values = [*params, UPDATED_EVENT, cp.now, self.origin]

        def run(conn: psycopg.Connection[Any]) -> tuple[BatchJob, int] | None:
            row = conn.execute(statement, values).fetchone()
            return None if row is None else (_record(row), row[-1])

        def recover(conn: psycopg.Connection[Any]) -> tuple[BatchJob, int] | None:
            row = conn.execute(
                f"SELECT {_SELECT}, (SELECT max(seq) FROM {EVENTS} e WHERE e.id = j.id "
                "AND e.event = %s AND e.at = %s) "
                f"FROM {TABLE} j WHERE id = %s AND written = %s",
                [UPDATED_EVENT, cp.now, cp.lease.id, token],
            ).fetchone()
            return None if row is None else (_record(row), row[-1])

        saved = self._database.statement(run, recover)
        if saved is None:
            return None
        job, seq = saved
        if seq is not None:
            self._committed([Event(seq, UPDATED_EVENT, job, cp.now, self.origin)])
        return job

    @boundary
    def commit(
        self,
        checkpoints: Sequence[Checkpoint],
        *,
        release: Iterable[Lease] = (),
        claim: ClaimRequest | None = None,
    ) -> tuple[list[BatchJob | None], list[Claim]]:
        saves = [self._save_query(cp, secrets.token_hex(8)) for cp in checkpoints]
        leases = list(release)
        claim_query = None if claim is None else self._claim_query(claim, secrets.token_hex(8))

        def work(
            conn: psycopg.Connection[Any], wake: set[str]
        ) -> Finish[tuple[tuple[list[BatchJob | None], list[Claim]], Sequence[Event]]]:
            # Two round trips for the lot (the connection is in pipeline mode): the
            # BEGIN, the saves, the releases and the claim; then the events (the
            # counter, whose lock the commit holds, and the rows) and the COMMIT.
            saved = [conn.execute(*query) for query in saves]
            released = self._release_cursor(conn, leases)
            claimed = None
            if claim is not None and claim_query is not None:
                conn.execute(self._claim_settings(claim, flush=bool(saves)))
                claimed = conn.execute(*claim_query, prepare=self._claim_prepared(claim))
                conn.execute(_CLAIMED, prepare=False)
            jobs: list[BatchJob | None] = []
            writes: list[list[Step]] = []
            for cur, cp in zip(saved, checkpoints, strict=True):
                job, steps = self._saved(cur.fetchone(), cp)
                jobs.append(job)
                if steps:
                    writes.append(steps)
            if released is not None:
                wake.update(row[0] for row in released.fetchall() if Status(row[1]) in _ACTIVE)
            claims = [] if claimed is None else [_claim(row) for row in claimed.fetchall()]
            claims.sort(key=lambda c: (c.job.created_at or datetime.min, c.job.id))
            result = (jobs, claims)
            events, recover = self._send_events(conn, writes)
            return (lambda: (result, events())), (lambda conn, xid: (result, recover(conn, xid)))

        result, events = self._database.write_pipelined(work)
        self._committed(events)
        return result

    def _write(
        self, work: Callable[[psycopg.Connection[Any], set[str]], tuple[T, Sequence[Event]]]
    ) -> T:
        """Run ``work`` in one transaction (``Database.write``); then hand the events it
        wrote to ``on_events``, once committed."""
        result, events = self._database.write(work)
        self._committed(events)
        return result

    @boundary
    def renew(self, leases: Iterable[Lease], until: datetime) -> list[str]:
        leases = list(leases)
        if not leases:
            return []
        query = (
            f"UPDATE {TABLE} SET available_at = %s WHERE id = ANY(%s) AND lease = ANY(%s) "
            "RETURNING id"
        )
        params = [until, [lease.id for lease in leases], [lease.token for lease in leases]]
        return self._database.write(
            lambda conn, wake: [row[0] for row in conn.execute(query, params, prepare=False)]
        )

    @staticmethod
    def _release_cursor(
        conn: psycopg.Connection[Any], leases: list[Lease]
    ) -> psycopg.Cursor[Any] | None:
        if not leases:
            return None
        return conn.execute(
            f"UPDATE {TABLE} SET owner = NULL, lease = NULL, available_at = NULL "
            "WHERE id = ANY(%s) AND lease = ANY(%s) RETURNING type, status",
            [[lease.id for lease in leases], [lease.token for lease in leases]],
            prepare=False,
        )

    @staticmethod
    def _released(cur: psycopg.Cursor[Any] | None, wake: set[str]) -> int:
        if cur is None:
            return 0
        rows = cur.fetchall()
        wake.update(row[0] for row in rows if Status(row[1]) in _ACTIVE)
        return len(rows)

    @boundary
    def release(self, leases: Iterable[Lease]) -> int:
        leases = list(leases)
        return self._database.write(
            lambda conn, wake: self._released(self._release_cursor(conn, leases), wake)
        )

    @boundary
    def release_all(self, owner: str) -> int:
        query = (
            f"UPDATE {TABLE} SET owner = NULL, lease = NULL, available_at = NULL "
            "WHERE owner = %s RETURNING type, status"
        )
        return self._database.write(
            lambda conn, wake: self._released(conn.execute(query, [owner], prepare=False), wake)
        )

    @boundary
    def holds(self, lease: Lease) -> Status | None:
        # Found by its key alone, as a checkpoint's row: prepared, unlike ``holding``'s.
        row = self._database.read(
            lambda conn: conn.execute(
                f"SELECT status FROM {TABLE} WHERE id = %s AND lease = %s",
                [lease.id, lease.token],
            ).fetchone()
        )
        return None if row is None else Status(row[0])

    @boundary
    def holding(self, leases: Sequence[Lease]) -> list[Status | None]:
        if len(leases) < 2:
            return [self.holds(lease) for lease in leases]
        rows = self._database.read(
            lambda conn: conn.execute(
                f"SELECT id, lease, status FROM {TABLE} WHERE id = ANY(%s) AND lease = ANY(%s)",
                [[lease.id for lease in leases], [lease.token for lease in leases]],
                prepare=False,
            ).fetchall()
        )
        found = {(id, token): Status(status) for id, token, status in rows}
        return [found.get((lease.id, lease.token)) for lease in leases]

    @boundary
    def lease_owners(self, now: datetime) -> list[str]:
        rows = self._database.read(
            lambda conn: conn.execute(
                f"SELECT DISTINCT owner FROM {TABLE} WHERE owner IS NOT NULL AND available_at > %s",
                [now],
                prepare=False,
            ).fetchall()
        )
        return [row[0] for row in rows]

    @boundary
    def holder(self, id: str) -> Holder | None:
        row = self._database.read(
            lambda conn: conn.execute(
                f"SELECT owner, lease, available_at FROM {TABLE} WHERE id = %s", [id]
            ).fetchone()
        )
        if row is None or row[0] is None:
            return None
        return Holder(row[0], row[1], row[2])

    @boundary
    def claim_cleanup(
        self,
        id: str,
        *,
        owner: str,
        now: datetime,
        lease_until: datetime,
        lease: Lease | None = None,
        began: bool = False,
        gone: tuple[str, ...] = (),
    ) -> Claim | None:
        canceled = Status.CANCELED.value
        if lease is not None:
            query = (
                f"UPDATE {TABLE} SET cleanup = true, available_at = %s "
                "WHERE id = %s AND status = %s AND lease = %s "
                f"AND (processing_at IS NOT NULL OR %s) RETURNING {_SELECT}"
            )
            params: list[Any] = [lease_until, id, canceled, lease.token, began]
        else:
            query = (
                f"UPDATE {TABLE} SET owner = %s, lease = {_TOKEN}, available_at = %s "
                "WHERE id = %s AND status = %s AND cleanup "
                "AND (owner IS NULL OR available_at <= %s OR owner = ANY(%s)) "
                f"RETURNING {_SELECT}"
            )
            params = [owner, lease_until, id, canceled, now, list(gone)]
        row = self._database.write(
            lambda conn, wake: conn.execute(query, params, prepare=False).fetchone()
        )
        return None if row is None else _claim(row)

    @boundary
    def finish_cleanup(self, lease: Lease) -> bool:
        query = (
            f"UPDATE {TABLE} SET cleanup = false, owner = NULL, lease = NULL, "
            "available_at = NULL WHERE id = %s AND lease = %s RETURNING id"
        )
        params = [lease.id, lease.token]
        # Rows, not rowcount: statements are pipelined, and only a fetch waits for them.
        return self._database.write(
            lambda conn, wake: conn.execute(query, params).fetchone() is not None
        )

    # -- reads ---------------------------------------------------------------

    @boundary
    def get(self, id: str) -> BatchJob | None:
        row = self._database.read(
            lambda conn: conn.execute(
                f"SELECT {_SELECT} FROM {TABLE} WHERE id = %s", [id]
            ).fetchone()
        )
        return None if row is None else _record(row)

    @boundary
    def status_of(self, id: str) -> Status | None:
        row = self._database.read(
            lambda conn: conn.execute(f"SELECT status FROM {TABLE} WHERE id = %s", [id]).fetchone()
        )
        return None if row is None else Status(row[0])

    @boundary
    def pending(self, types: Sequence[str]) -> tuple[int, datetime | None]:
        if not types:
            return 0, None
        row = self._database.read(
            lambda conn: conn.execute(
                f"SELECT count(*), bool_or(available_at IS NULL), min(available_at) FROM {TABLE} "
                f"WHERE {RUNNABLE} AND type = ANY(%s)",
                [list(types)],
                prepare=False,
            ).fetchone()
        )
        assert row is not None
        count, any_free, earliest = row
        return count, (None if any_free or not count else earliest)

    @boundary
    def list_and_count(
        self,
        *,
        filters: Mapping[str, Any] | None = None,
        limit: int = 20,
        offset: int = 0,
        order: str = "-created_at",
    ) -> tuple[list[BatchJob], int]:
        filters = filters or {}
        descending = order.startswith("-")
        column = order.lstrip("-+")
        if column not in ORDER_FIELDS:
            raise InvalidDataError(
                f"order must be one of {', '.join(ORDER_FIELDS)} (with - for descending), "
                f"not {order!r}"
            )
        direction = "DESC" if descending else "ASC"
        nulls = ""
        if column in _NULLABLE_ORDER:  # as SQLite: nulls sort before every value
            nulls = " NULLS LAST" if descending else " NULLS FIRST"
        where, params = self._where(filters)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        # One statement, so one snapshot for the page and the count.
        query = (
            f"SELECT ({self._count_sql(filters, clause)}), page.* FROM (SELECT) one "
            f"LEFT JOIN LATERAL (SELECT {_SELECT} FROM {TABLE}{clause} "
            f"ORDER BY {column} {direction}{nulls}, id {direction} LIMIT %s OFFSET %s) page ON true"
        )
        rows = self._database.read(
            lambda conn: conn.execute(
                query, [*params, *params, limit, offset], prepare=False
            ).fetchall()
        )
        count = int(rows[0][0]) if rows else 0
        return [_record(row[1:]) for row in rows if row[1] is not None], count

    @boundary
    def count(self, *, filters: Mapping[str, Any] | None = None) -> int:
        filters = filters or {}
        where, params = self._where(filters)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        row = self._database.read(
            lambda conn: conn.execute(
                self._count_sql(filters, clause), params, prepare=False
            ).fetchone()
        )
        return int(row[0]) if row else 0

    @staticmethod
    def _count_sql(filters: Mapping[str, Any], clause: str) -> str:
        if countable(filters):
            return f"SELECT coalesce(sum(n), 0) FROM {COUNTS}{clause}"
        return f"SELECT count(*) FROM {TABLE}{clause}"

    @staticmethod
    def _where(filters: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for name, value in filters.items():
            if name in ("id", "status", "type", "created_by"):
                named, with_null = filter_values(value)
                terms = [f"{name} = ANY(%s)"] if named else []
                if with_null:
                    terms.append(f"{name} IS NULL")
                where.append(f"({' OR '.join(terms)})" if terms else "false")
                if named:
                    params.append(named)
            elif name in TIMESTAMP_FIELDS:
                if value is None:
                    where.append(f"{name} IS NULL")
                    continue
                for op, bound in value.items():
                    where.append(f"{name} {_SQL_OPERATORS[op]} %s")
                    params.append(bound)
            else:
                raise InvalidDataError(f"cannot filter on {name!r}")
        return where, params
