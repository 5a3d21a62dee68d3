"""The SQLite store: schema, migrations, guarded transitions, claims, queries.

Every write is either a single statement (its own transaction, which takes
the write lock before it reads) or a transaction taken up front (``BEGIN
IMMEDIATE``), so two writers never both win a guarded ``UPDATE``. The store
returns records, never rows. One connection per thread, WAL, a busy timeout.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from .errors import InvalidDataError
from .models import ACTIVE_STATUSES, TIMESTAMP_FIELDS, BatchJob, Status, iso_format

__all__ = ["DEFAULT_BUSY_TIMEOUT", "DURABILITY_LEVELS", "Claim", "Store"]

TABLE = "batch_jobs"
#: Seconds a writer waits for the write lock before SQLite gives up.
DEFAULT_BUSY_TIMEOUT = 60.0
#: ``durability`` → ``PRAGMA synchronous``; both run in WAL mode.
DURABILITY_LEVELS = {"normal": "NORMAL", "full": "FULL"}
#: Columns ``list_and_count`` may order by.
ORDER_FIELDS = ("id", "type", "status", "created_by", *TIMESTAMP_FIELDS)
DATE_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_ACTIVE_SQL = "(" + ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES) + ")"

migrations = Migrations("batchjobs")


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
            **{name: str for name in TIMESTAMP_FIELDS},
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
        f"CREATE INDEX batch_jobs_runnable ON {TABLE} (created_at, id) "
        f"WHERE status IN {_ACTIVE_SQL}"
    )
    for columns in (
        ["created_at"],
        ["status", "created_at"],
        ["type", "created_at"],
        ["created_by", "created_at"],
    ):
        db[TABLE].create_index(columns)  # type: ignore[union-attr]


COUNTS = "batch_job_counts"
#: Filters whose count the counts table answers without reading the jobs.
COUNTED_FILTERS = frozenset({"status", "type", "created_by"})


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


class _ThreadConnection:
    """One thread's connection, closed when the thread ends (its thread-local goes)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def close(self) -> None:
        with suppress(sqlite3.ProgrammingError):
            self.db.conn.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105 - may run at interpreter exit, when contextlib is gone
            self.db.conn.close()
        except Exception:
            pass


@dataclass(frozen=True)
class Claim:
    """A job this owner holds a lease on, with the state needed to resume it."""

    job: BatchJob
    cursor: dict[str, Any]
    attempts: int
    #: ``job.context`` as stored (JSON text): the runner parses it again only if it changes.
    context_json: str | None = None


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _ts(value: datetime | None) -> str | None:
    return None if value is None else iso_format(value)


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _plain_keys(patch: Mapping[str, Any]) -> bool:
    # json_set paths cannot express a key with a double quote in it.
    return all(isinstance(k, str) and '"' not in k for k in patch)


@lru_cache(maxsize=256)
def _save_sql(
    status: bool,
    timestamps: tuple[str, ...],
    result_keys: tuple[str, ...],
    context_keys: tuple[str, ...],
    cursor: bool,
    release: bool,
) -> str:
    """The checkpoint's UPDATE for one shape of change (cached: it runs every chunk)."""
    sets = ["updated_at = ?"]
    if status:
        sets.append("status = ?")
    sets.extend(f"{name} = ?" for name in timestamps)
    for column, keys in (("result", result_keys), ("context", context_keys)):
        if keys:
            args = ", ".join("?, json(?)" for _ in keys)
            sets.append(f"{column} = json_set({column}, {args})")
    if cursor:
        sets.append("cursor = ?")
    if release:
        sets.append("owner = NULL")
    sets.append("available_at = ?")
    return (
        f"UPDATE {TABLE} SET {', '.join(sets)} WHERE id = ? AND status = ? AND owner = ? "
        "RETURNING context, result"
    )


class Store:
    """Batch job rows in one SQLite file, safe across threads and processes."""

    def __init__(
        self,
        path: str | Path,
        *,
        durability: str = "normal",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        if durability not in DURABILITY_LEVELS:
            raise ValueError(
                f"durability must be one of {', '.join(DURABILITY_LEVELS)}, not {durability!r}"
            )
        self.path = str(path)
        self.synchronous = DURABILITY_LEVELS[durability]
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        db = self.db
        db.execute("PRAGMA journal_mode=WAL")
        with self.write():
            migrations.apply(db)

    # -- connections and transactions ------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection, opened on first use."""
        held = getattr(self._local, "held", None)
        if held is None:
            if self._closed:
                raise RuntimeError("the store is closed")
            # isolation_level=None: we open every transaction ourselves.
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            held = _ThreadConnection(sqlite_utils.Database(conn, execute_plugins=False))
            with self._lock:
                self._connections.add(held)
            self._local.held = held
        return held.db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, its lock taken up front (``BEGIN IMMEDIATE``).

        Inside an open transaction it joins that one.
        """
        conn = self.db.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            self._closed = True
            connections = list(self._connections)
            self._connections = weakref.WeakSet()
        for held in connections:
            held.close()
        self._local = threading.local()

    @property
    def open_connections(self) -> int:
        """How many connections are open: one per live thread that used the store."""
        with self._lock:
            return len(self._connections)

    # -- rows and records --------------------------------------------------

    @staticmethod
    def _record(row: sqlite3.Row | Sequence[Any], names: Sequence[str]) -> BatchJob:
        data = dict(zip(names, row, strict=True))
        return BatchJob(
            id=data["id"],
            type=data["type"],
            status=Status(data["status"]),
            created_by=data["created_by"],
            dry_run=bool(data["dry_run"]),
            context=json.loads(data["context"]),
            result=json.loads(data["result"]),
            **{name: _parse_ts(data[name]) for name in TIMESTAMP_FIELDS},
        )

    def _one(self, cursor: sqlite3.Cursor) -> tuple[BatchJob, dict[str, Any]] | None:
        row = cursor.fetchone()
        if row is None:
            return None
        names = [d[0] for d in cursor.description]
        return self._record(row, names), dict(zip(names, row, strict=True))

    # -- writes --------------------------------------------------------------

    def insert(self, job: BatchJob) -> None:
        """Write a new job."""
        row = {
            "id": job.id,
            "type": job.type,
            "status": job.status.value,
            "created_by": job.created_by,
            "dry_run": int(job.dry_run),
            "context": _dumps(job.context),
            "result": _dumps(job.result),
            **{name: _ts(getattr(job, name)) for name in TIMESTAMP_FIELDS},
        }
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        # A single statement is its own write transaction.
        self.db.conn.execute(
            f"INSERT INTO {TABLE} ({columns}) VALUES ({marks})", list(row.values())
        )

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
        """Move job ``id`` to ``to`` if its status is one of ``from_statuses``.

        Returns the new record, or ``None`` when the guard did not match.
        ``clear`` names timestamp fields to set back to null; ``reset_claim``
        drops any lease, backoff and attempt count.
        """
        sets = ["status = ?", f"{to.timestamp_field} = ?", "updated_at = ?"]
        params: list[Any] = [to.value, _ts(now), _ts(now)]
        sets.extend(f"{name} = NULL" for name in clear)
        if reset_claim:
            sets.append("owner = NULL, available_at = NULL, attempts = 0")
        froms = [s.value for s in from_statuses]
        params.extend([id, *froms])
        sql = (
            f"UPDATE {TABLE} SET {', '.join(sets)} WHERE id = ? "
            f"AND status IN ({', '.join('?' for _ in froms)}) RETURNING *"
        )
        with self.write() as conn:
            found = self._one(conn.execute(sql, params))
        return None if found is None else found[0]

    def merge(
        self,
        id: str,
        *,
        now: datetime,
        context: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> BatchJob | None:
        """Shallowly merge ``context`` and ``result`` into job ``id``."""
        with self.write() as conn:
            found = self._one(conn.execute(f"SELECT * FROM {TABLE} WHERE id = ?", [id]))
            if found is None:
                return None
            job = found[0]
            new_context = {**job.context, **(context or {})}
            new_result = {**job.result, **(result or {})}
            conn.execute(
                f"UPDATE {TABLE} SET context = ?, result = ?, updated_at = ? WHERE id = ?",
                [_dumps(new_context), _dumps(new_result), _ts(now), id],
            )
        return job.replace(context=new_context, result=new_result, updated_at=now)

    def claim(
        self,
        owner: str,
        types: Sequence[str],
        *,
        now: datetime,
        lease_until: datetime,
        statuses: Sequence[Status] = ACTIVE_STATUSES,
        ids: Sequence[str] | None = None,
    ) -> Claim | None:
        """Lease the oldest runnable job of one of ``types`` to ``owner``, or ``None``.

        A job is runnable when its status is in ``statuses`` (active ones only)
        and it has no live lease or pending backoff. Taking over a lease that
        expired without being released counts one more attempt. ``ids``, when
        given, limits the claim to those jobs (``batchjobs run`` runs only its own).
        """
        claims = self.claim_batch(
            owner, types, now=now, lease_until=lease_until, statuses=statuses, ids=ids, limit=1
        )
        return claims[0] if claims else None

    def claim_batch(
        self,
        owner: str,
        types: Sequence[str],
        *,
        now: datetime,
        lease_until: datetime,
        statuses: Sequence[Status] = ACTIVE_STATUSES,
        ids: Sequence[str] | None = None,
        limit: int = 1,
    ) -> list[Claim]:
        """Lease up to ``limit`` of the oldest runnable jobs at once, oldest first (as claim)."""
        if not types or (ids is not None and not ids):
            return []
        status_sql = ", ".join(f"'{Status(s).value}'" for s in statuses)
        indexed = ""
        if set(statuses) == set(ACTIVE_STATUSES):
            # The partial index keeps claims fast however many jobs have ended.
            status_sql = _ACTIVE_SQL[1:-1]
            indexed = " INDEXED BY batch_jobs_runnable"
        type_marks = ", ".join("?" for _ in types)
        id_sql = "" if ids is None else f"AND id IN ({', '.join('?' for _ in ids)}) "
        # A job taken over from a dead worker is claimed alone and run at once:
        # jobs waiting in a batch must not be charged an attempt for its crash.
        free_sql = "owner IS NULL AND " if limit > 1 else ""
        sql = (
            f"UPDATE {TABLE} SET owner = ?, available_at = ?, "
            "attempts = attempts + (owner IS NOT NULL) "
            f"WHERE id IN (SELECT id FROM {TABLE}{indexed} WHERE status IN ({status_sql}) "
            f"AND type IN ({type_marks}) AND {free_sql}(available_at IS NULL OR available_at <= ?) "
            f"{id_sql}ORDER BY created_at, id LIMIT ?) RETURNING *"
        )
        params = [owner, _ts(lease_until), *types, _ts(now), *(ids or ()), limit]
        # One statement: its write lock is taken before its sub-select reads.
        cur = self.db.conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        claims = []
        for row in cur.fetchall():
            data = dict(zip(names, row, strict=True))
            claims.append(
                Claim(
                    job=self._record(row, names),
                    cursor=json.loads(data["cursor"] or "{}"),
                    attempts=data["attempts"],
                    context_json=data["context"],
                )
            )
        claims.sort(key=lambda c: (c.job.created_at or datetime.min, c.job.id))
        if not claims and limit > 1:  # none free: take over one, if any lease expired
            return self.claim_batch(
                owner, types, now=now, lease_until=lease_until, statuses=statuses, ids=ids
            )
        return claims

    def save(
        self,
        id: str,
        *,
        owner: str,
        expect: Status,
        now: datetime,
        status: Status | None = None,
        timestamps: Mapping[str, datetime] | None = None,
        result: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        cursor: Mapping[str, Any] | None = None,
        available_at: datetime | None = None,
        release: bool = False,
    ) -> tuple[str, str] | None:
        """The checkpoint: one guarded write of a running job's progress.

        Applies only while the job is still ``expect`` and leased to ``owner``;
        returns the stored ``(context, result)`` as JSON text after the write
        (parse it only if you need it), or ``None`` when the guard failed
        (canceled, or the lease was lost). ``result`` and ``context`` are
        merged shallowly; ``available_at`` renews the lease (or sets a backoff
        with ``release``); ``release`` gives the lease up.
        """
        timestamps = timestamps or {}
        result, context = result or {}, context or {}
        if not (_plain_keys(result) and _plain_keys(context)):
            return self._save_merging(
                id,
                owner=owner,
                expect=expect,
                now=now,
                status=status,
                timestamps=timestamps,
                result=result,
                context=context,
                cursor=cursor,
                available_at=available_at,
                release=release,
            )
        sql = _save_sql(
            status is not None,
            tuple(timestamps),
            tuple(result),
            tuple(context),
            cursor is not None,
            release,
        )
        params: list[Any] = [_ts(now)]
        if status is not None:
            params.append(status.value)
        params.extend(_ts(value) for value in timestamps.values())
        for patch in (result, context):
            for key, value in patch.items():
                params.extend((f'$."{key}"', _dumps(value)))
        if cursor is not None:
            params.append(_dumps(cursor))
        params.extend((_ts(available_at), id, expect.value, owner))
        # One statement is one transaction, and a writing statement takes the
        # write lock before it reads: as guarded as BEGIN IMMEDIATE, one round trip.
        row = self.db.conn.execute(sql, params).fetchone()
        return None if row is None else (row[0], row[1])

    def commit_batch(
        self,
        owner: str,
        saves: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        release: Sequence[str] = (),
        claim: Mapping[str, Any] | None = None,
    ) -> tuple[list[tuple[str, str] | None], list[Claim]]:
        """In one commit: ``save(id, **kwargs)`` each of ``saves``, give back ``owner``'s
        leases on ``release``, then ``claim_batch(**claim)``.

        A worker that finishes short jobs and takes the next ones pays for one
        commit for all of them. Returns each save's result and the new claims.
        """
        with self.write():
            stored = [self.save(id, **kwargs) for id, kwargs in saves]
            if release:
                self.release(owner, release)
            return stored, ([] if claim is None else self.claim_batch(**claim))

    def _save_merging(
        self, id: str, *, result: Mapping[str, Any], context: Mapping[str, Any], **kwargs: Any
    ) -> tuple[str, str] | None:
        # Keys json_set cannot address: merge in Python inside one write transaction.
        with self.write() as conn:
            row = conn.execute(
                f"SELECT context, result FROM {TABLE} WHERE id = ? AND status = ? AND owner = ?",
                [id, kwargs["expect"].value, kwargs["owner"]],
            ).fetchone()
            if row is None:
                return None
            merged_context = {**json.loads(row[0]), **context}
            merged_result = {**json.loads(row[1]), **result}
            conn.execute(
                f"UPDATE {TABLE} SET context = ?, result = ? WHERE id = ?",
                [_dumps(merged_context), _dumps(merged_result), id],
            )
            return self.save(id, **kwargs)

    def renew(self, owner: str, ids: Iterable[str], until: datetime) -> int:
        """Extend ``owner``'s leases on ``ids``; returns how many it still holds."""
        ids = list(ids)
        if not ids:
            return 0
        marks = ", ".join("?" for _ in ids)
        with self.write() as conn:
            cur = conn.execute(
                f"UPDATE {TABLE} SET available_at = ? WHERE owner = ? AND id IN ({marks})",
                [_ts(until), owner, *ids],
            )
        return cur.rowcount

    def release(self, owner: str, ids: Iterable[str]) -> int:
        """Give up ``owner``'s leases on ``ids`` (expired at once)."""
        ids = list(ids)
        marks = ", ".join("?" for _ in ids)
        cur = self.db.conn.execute(
            f"UPDATE {TABLE} SET owner = NULL, available_at = NULL "
            f"WHERE owner = ? AND id IN ({marks})",
            [owner, *ids],
        )
        return cur.rowcount

    def release_all(self, owner: str) -> int:
        """Give up every lease ``owner`` holds (expired at once)."""
        with self.write() as conn:
            cur = conn.execute(
                f"UPDATE {TABLE} SET owner = NULL, available_at = NULL WHERE owner = ?", [owner]
            )
        return cur.rowcount

    def delete(self, ids: Iterable[str], *, statuses: Iterable[Status] | None = None) -> list[str]:
        """Delete the rows of ``ids`` (only those still in ``statuses``, if given).

        Returns the ids actually deleted: a job retried or confirmed meanwhile stays.
        """
        ids = list(ids)
        if not ids:
            return []
        sql = f"DELETE FROM {TABLE} WHERE id IN ({', '.join('?' for _ in ids)})"
        params: list[Any] = list(ids)
        if statuses is not None:
            values = [Status(s).value for s in statuses]
            sql += f" AND status IN ({', '.join('?' for _ in values)})"
            params.extend(values)
        rows = self.db.conn.execute(f"{sql} RETURNING id", params).fetchall()
        return [row[0] for row in rows]

    # -- reads ---------------------------------------------------------------

    def get(self, id: str) -> BatchJob | None:
        """The job ``id``, or ``None``."""
        found = self._one(self.db.execute(f"SELECT * FROM {TABLE} WHERE id = ?", [id]))
        return None if found is None else found[0]

    def holder(self, id: str) -> tuple[str | None, datetime | None, dict[str, Any]]:
        """Who holds job ``id``'s lease, until when, and its saved cursor."""
        row = self.db.execute(
            f"SELECT owner, available_at, cursor FROM {TABLE} WHERE id = ?", [id]
        ).fetchone()
        if row is None:
            return None, None, {}
        return row[0], _parse_ts(row[1]), json.loads(row[2] or "{}")

    def owner_and_status(self, id: str) -> tuple[str | None, Status | None]:
        """Who holds job ``id``'s lease and its status, in one cheap read."""
        row = self.db.execute(f"SELECT owner, status FROM {TABLE} WHERE id = ?", [id]).fetchone()
        return (None, None) if row is None else (row[0], Status(row[1]))

    def status_of(self, id: str) -> Status | None:
        """Just the status of job ``id`` (cheap), or ``None``."""
        row = self.db.execute(f"SELECT status FROM {TABLE} WHERE id = ?", [id]).fetchone()
        return None if row is None else Status(row[0])

    def pending(self, types: Sequence[str]) -> tuple[int, datetime | None]:
        """How many jobs of ``types`` are active, and the earliest time one is free."""
        if not types:
            return 0, None
        marks = ", ".join("?" for _ in types)
        count, earliest = self.db.execute(
            f"SELECT count(*), min(coalesce(available_at, '')) FROM {TABLE} "
            f"WHERE status IN {_ACTIVE_SQL} AND type IN ({marks})",
            list(types),
        ).fetchone()
        return count, (_parse_ts(earliest) if earliest else None)

    def list_and_count(
        self,
        *,
        filters: Mapping[str, Any] | None = None,
        limit: int = 20,
        offset: int = 0,
        order: str = "-created_at",
    ) -> tuple[list[BatchJob], int]:
        """A page of jobs matching ``filters``, and how many match in all.

        ``filters``: ``status``/``type``/``created_by``/``id`` → a value or a
        list; a timestamp field → ``None`` (is null) or ``{"gt"|"gte"|"lt"|"lte":
        datetime}``.
        """
        where, params = self._where(filters or {})
        descending = order.startswith("-")
        column = order.lstrip("-+")
        if column not in ORDER_FIELDS:
            raise InvalidDataError(
                f"order must be one of {', '.join(ORDER_FIELDS)} (with - for descending), "
                f"not {order!r}"
            )
        direction = "DESC" if descending else "ASC"
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        db = self.db
        db.conn.execute("BEGIN")  # one snapshot for the page and the count
        try:
            cur = db.execute(
                f"SELECT * FROM {TABLE}{clause} ORDER BY {column} {direction}, id {direction} "
                "LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
            names = [d[0] for d in cur.description]
            jobs = [self._record(row, names) for row in cur.fetchall()]
            (count,) = db.execute(self._count_sql(filters or {}, clause), params).fetchone()
        finally:
            db.conn.execute("COMMIT")
        return jobs, count

    @staticmethod
    def _count_sql(filters: Mapping[str, Any], clause: str) -> str:
        created_by = filters.get("created_by")
        unnamed = created_by == "" or (isinstance(created_by, list) and "" in created_by)
        if filters.keys() <= COUNTED_FILTERS and not unnamed:
            return f"SELECT coalesce(sum(n), 0) FROM {COUNTS}{clause}"
        return f"SELECT count(*) FROM {TABLE}{clause}"

    @staticmethod
    def _where(filters: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for name, value in filters.items():
            if name in ("id", "status", "type", "created_by"):
                values = [value] if isinstance(value, (str, Status)) or value is None else value
                values = [v.value if isinstance(v, Status) else v for v in values]
                if not values:
                    where.append("0")
                    continue
                where.append(f"{name} IN ({', '.join('?' for _ in values)})")
                params.extend(values)
            elif name in TIMESTAMP_FIELDS:
                if value is None:
                    where.append(f"{name} IS NULL")
                    continue
                for op, bound in value.items():
                    where.append(f"{name} {DATE_OPERATORS[op]} ?")
                    params.append(_ts(bound))
            else:  # pragma: no cover - the service validates filter names
                raise InvalidDataError(f"cannot filter on {name!r}")
        return where, params
