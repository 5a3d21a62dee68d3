"""The SQLite store: one file, WAL, one connection per thread, sqlite-utils migrations.

Every write runs in a transaction that takes the write lock up front
(``BEGIN IMMEDIATE``), so two writers never both pass a guard. A guarded
write reads its row and writes it back inside that one transaction; results
and contexts are merged in Python (shallowly, as the protocol says).
``sqlite3`` errors become ``StoreError`` subclasses here, and only here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from ..errors import InvalidDataError, StoreCorruptError
from ..models import TIMESTAMP_FIELDS, UPDATED_EVENT, BatchJob, Status, status_event, utcnow
from ._event_rows import Step
from ._sqlite_connections import Connections, boundary
from ._sqlite_outbox import SQLiteOutbox
from ._sqlite_rows import job_fields as _fields
from ._sqlite_rows import job_record as _record
from ._sqlite_rows import parse_ts as _parse_ts
from ._sqlite_rows import ts as _ts
from ._sqlite_schedules import SQLiteSchedules
from ._sqlite_schema import COUNTS, RUNNABLE, TABLE, migrations
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

__all__ = ["DEFAULT_BUSY_TIMEOUT", "DURABILITY_LEVELS", "SQLITE_VERSION", "SQLiteStore"]

#: Seconds a writer waits for the write lock before the store gives up.
DEFAULT_BUSY_TIMEOUT = 60.0
#: ``durability`` → ``PRAGMA synchronous``; both run in WAL mode.
DURABILITY_LEVELS = {"normal": "NORMAL", "full": "FULL"}
#: The SQLite library's version (``batchjobs version`` prints it).
SQLITE_VERSION = sqlite3.sqlite_version
_SQL_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _claim(row: sqlite3.Row) -> Claim:
    return Claim(
        job=_record(row),
        lease=Lease(row["id"], row["lease"]),
        expires_at=datetime.fromisoformat(row["available_at"]),
        cursor=json.loads(row["cursor"] or "{}"),
        attempts=row["attempts"],
    )


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


class SQLiteStore(SQLiteOutbox, SQLiteSchedules, Store):
    """Batch jobs (and schedules) in one SQLite file, safe across threads and processes.

    With ``read_only`` (or a ``file:…?mode=ro`` URI for ``path``) the file is
    opened read-only: reads work, and every write raises ``StoreReadOnlyError``.
    Without ``create``, a file that is not there is not made (``StoreUnreachableError``)
    and one that holds no batch jobs table is refused (``StoreCorruptError``) before
    anything is written to it; so, always, is a file whose ``batch_jobs`` table another
    program made.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        durability: str = "normal",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        read_only: bool = False,
        create: bool = True,
    ) -> None:
        if durability not in DURABILITY_LEVELS:
            raise ValueError(
                f"durability must be one of {', '.join(DURABILITY_LEVELS)}, not {durability!r}"
            )
        self.path = str(path)
        if read_only or not create:  # mode=rw: a file that is not there is not made
            where = f"file:{quote(self.path)}?mode={'ro' if read_only else 'rw'}"
        else:
            where = self.path
        self._connections = Connections(
            where, synchronous=DURABILITY_LEVELS[durability], busy_timeout=busy_timeout
        )
        self.location = self._connections.location
        self._start_outbox()
        try:
            self._open(create)
        except BaseException:
            self._connections.close()
            raise

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.location!r}>"

    @boundary
    def _open(self, create: bool) -> None:
        db = self.db
        # Read first: nothing is written (not even WAL mode) to a file that is not ours.
        ours = db[TABLE].exists()
        if ours and not migrations.applied(db):
            raise StoreCorruptError.not_ours(
                self.location, f"has a {TABLE} table that batchjobs did not create"
            )
        if not create and not ours:
            raise StoreCorruptError.not_ours(self.location, f"has no {TABLE} table")
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")
        if migrations.pending(db):
            with self.write():
                migrations.apply(db)

    # -- connections and transactions ------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection, opened on first use."""
        return self._connections.db

    def write(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction, its lock taken up front; inside one, it joins it."""
        return self._connections.write()

    def close(self) -> None:
        self._connections.close()

    @property
    def open_connections(self) -> int:
        """How many connections are open: one per live thread that used the store."""
        return self._connections.count

    # -- fault injection (batchjobs.testing) --------------------------------

    def set_read_only(self, read_only: bool) -> None:
        """Make every connection refuse writes (``PRAGMA query_only``), or allow them again."""
        self._connections.read_only = read_only

    def lock_held(self, timeout: float = 0.05) -> AbstractContextManager[None]:
        """Hold the file's write lock from another connection; this store waits ``timeout``."""
        return self._connections.lock_held(timeout)

    def fail_commits(self, times: int) -> None:
        """Make the next ``times`` write transactions fail at their commit (rolled back)."""
        self._connections.failing_commits = times

    # -- writes --------------------------------------------------------------

    @boundary
    def insert(self, job: BatchJob, *, key: str | None = None) -> BatchJob:
        context = json.dumps(job.context, allow_nan=False)
        result = json.dumps(job.result, allow_nan=False)
        row: dict[str, Any] = {
            "id": job.id,
            "type": job.type,
            "status": job.status.value,
            "created_by": job.created_by,
            "dry_run": int(job.dry_run),
            "context": context,
            "result": result,
            **{name: _ts(getattr(job, name)) for name in TIMESTAMP_FIELDS},
        }
        if key is not None:
            row["key"] = key
        insert = f"INSERT INTO {TABLE} ({', '.join(row)}) VALUES ({_marks(list(row))})"
        with self.write() as conn:
            # The write lock is taken up front: no insert can come between the
            # look and the insert (and the unique index would refuse it).
            if key is not None:
                found = self._by_key(key, job.created_by)
                if found is not None:
                    return found
            conn.execute(insert, list(row.values()))
            stamps = [row[name] for name in TIMESTAMP_FIELDS]
            at = job.created_at or utcnow()
            texts = {at: row["created_at"]} if job.created_at else {}
            self._note([("batch.created", job, at, {})], context, result, stamps, texts)
        return job

    def _by_key(self, key: str, created_by: str | None) -> BatchJob | None:
        row = self.db.conn.execute(
            f"SELECT * FROM {TABLE} INDEXED BY batch_jobs_key "
            "WHERE ifnull(created_by, '') = ? AND key = ?",
            [created_by or "", key],
        ).fetchone()
        return None if row is None else _record(row)

    @boundary
    def get_by_key(self, key: str, *, created_by: str | None) -> BatchJob | None:
        return self._by_key(key, created_by)

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
        sets = ["status = ?", f"{to.timestamp_field} = ?", "updated_at = ?"]
        params: list[Any] = [to.value, _ts(now), _ts(now)]
        for name in clear:
            if name not in TIMESTAMP_FIELDS:
                raise ValueError(f"{name!r} is not a timestamp field")
            sets.append(f"{name} = NULL")
        if reset_claim:
            sets.append("owner = NULL, lease = NULL, available_at = NULL, attempts = 0")
        if to == Status.CANCELED:
            sets.append("cleanup = (processing_at IS NOT NULL)")
        froms = [Status(s).value for s in from_statuses]
        sql = (
            f"UPDATE {TABLE} SET {', '.join(sets)} WHERE id = ? "
            f"AND status IN ({_marks(froms)}) RETURNING *"
        )
        with self.write() as conn:  # the change and its event: one transaction
            row = conn.execute(sql, [*params, id, *froms]).fetchone()
            if row is None:
                return None
            job = _record(row)
            stamps = [row[name] for name in TIMESTAMP_FIELDS]
            event: list[Step] = [(status_event(to), job, now, {})]
            texts = {now: row["updated_at"]}
            self._note(event, row["context"], row["result"], stamps, texts)
        return job

    @boundary
    def merge(
        self,
        id: str,
        *,
        now: datetime,
        context: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> BatchJob | None:
        with self.write() as conn:
            row = conn.execute(f"SELECT * FROM {TABLE} WHERE id = ?", [id]).fetchone()
            if row is None:
                return None
            job = _record(row)
            new_context = {**job.context, **(context or {})}
            new_result = {**job.result, **(result or {})}
            context_text = json.dumps(new_context, allow_nan=False)
            result_text = json.dumps(new_result, allow_nan=False)
            now_text = _ts(now)
            conn.execute(
                f"UPDATE {TABLE} SET context = ?, result = ?, updated_at = ? WHERE id = ?",
                [context_text, result_text, now_text, id],
            )
            job = job.replace(context=new_context, result=new_result, updated_at=now)
            stamps = [now_text if name == "updated_at" else row[name] for name in TIMESTAMP_FIELDS]
            event: list[Step] = [(UPDATED_EVENT, job, now, {})]
            self._note(event, context_text, result_text, stamps, {now: now_text})
        return job

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
        sql = f"DELETE FROM {TABLE} WHERE id IN ({_marks(ids)})"
        params: list[Any] = list(ids)
        if statuses is not None:
            values = [Status(s).value for s in statuses]
            sql += f" AND status IN ({_marks(values)})"
            params.extend(values)
        if updated_before is not None:
            sql += " AND updated_at < ?"
            params.append(_ts(updated_before))
        with self.write() as conn:  # the jobs and their events
            deleted = [row[0] for row in conn.execute(f"{sql} RETURNING id", params).fetchall()]
            self._delete_events(conn, deleted)
        return deleted

    @boundary
    def dump(self, *, after: str | None = None, limit: int = 1000) -> list[StoredJob]:
        rows = self.db.conn.execute(
            f"SELECT * FROM {TABLE} WHERE id > ? ORDER BY id LIMIT ?", [after or "", limit]
        ).fetchall()
        return [
            StoredJob(
                job=_record(row),
                cursor=json.loads(row["cursor"] or "{}"),
                cleanup=bool(row["cleanup"]),
                attempts=row["attempts"],
                leased_until=_parse_ts(row["available_at"]) if row["owner"] else None,
                key=row["key"],
            )
            for row in rows
        ]

    @boundary
    def load(self, jobs: Sequence[StoredJob]) -> int:
        written = 0
        with self.write() as conn:
            for stored in jobs:
                job = stored.job
                row = {
                    "id": job.id,
                    "type": job.type,
                    "status": job.status.value,
                    "created_by": job.created_by,
                    "dry_run": int(job.dry_run),
                    "context": json.dumps(job.context),
                    "result": json.dumps(job.result),
                    **{name: _ts(getattr(job, name)) for name in TIMESTAMP_FIELDS},
                    "cursor": json.dumps(stored.cursor) if stored.cursor else None,
                    "cleanup": int(stored.cleanup),
                    "attempts": stored.attempts,
                    "key": stored.key,
                }
                written += conn.execute(
                    f"INSERT INTO {TABLE} ({', '.join(row)}) VALUES ({_marks(list(row))}) "
                    "ON CONFLICT DO NOTHING",
                    list(row.values()),
                ).rowcount
        return written

    # -- claims, checkpoints, leases -------------------------------------------

    @boundary
    def claim(self, request: ClaimRequest) -> list[Claim]:
        return self._claim(request)

    def _claim(self, request: ClaimRequest) -> list[Claim]:
        if not request.types or request.limit < 1 or (request.ids is not None and not request.ids):
            return []
        wanted = ", ".join(f"'{Status(s).value}'" for s in request.statuses) or "NULL"
        status_sql = f"status IN ({wanted})"
        if request.cleanups:
            status_sql = f"({status_sql} OR cleanup = 1)"
        types, ids = list(request.types), list(request.ids or ())
        id_sql = "" if request.ids is None else f" AND id IN ({_marks(ids)})"
        where = f"{status_sql} AND type IN ({_marks(types)}){id_sql}"
        now = _ts(request.now)
        gone = list(request.gone)
        # A lease of a dead owner is expired now, whatever its time; decided
        # here, in this guarded write: once one claim takes it, it is that
        # claimer's lease and no other claim's condition matches it any more.
        lapsed = "available_at <= ?"
        if gone:
            lapsed = f"({lapsed} OR owner IN ({_marks(gone)}))"
        # An expired lease first, and alone: its worker died, and jobs waiting
        # in a batch must not be charged an attempt if this one kills us too.
        expired = (
            f"SELECT id FROM {TABLE} INDEXED BY batch_jobs_leased WHERE owner IS NOT NULL "
            f"AND {lapsed} AND {RUNNABLE} AND {where} ORDER BY created_at, id LIMIT 1"
        )
        free = (
            f"SELECT id FROM {TABLE} INDEXED BY batch_jobs_runnable WHERE {RUNNABLE} "
            f"AND {where} AND owner IS NULL AND (available_at IS NULL OR available_at <= ?) "
            "ORDER BY created_at, id LIMIT ?"
        )
        sql = (
            f"UPDATE {TABLE} SET owner = ?, lease = lower(hex(randomblob(12))), "
            "available_at = ?, attempts = attempts + (owner IS NOT NULL) "
            f"WHERE id IN ({expired}) OR (id IN ({free}) AND NOT EXISTS ({expired})) RETURNING *"
        )
        expired_params = [now, *gone, *types, *ids]
        params = [
            request.owner,
            _ts(request.lease_until),
            *expired_params,
            *types,
            *ids,
            now,
            request.limit,
            *expired_params,
        ]
        rows, _ = self._connections.statement(sql, params)
        claims = [_claim(row) for row in rows]
        claims.sort(key=lambda c: (c.job.created_at or datetime.min, c.job.id))
        return claims

    @boundary
    def save(self, checkpoint: Checkpoint) -> BatchJob | None:
        with self.write():
            return self._save(checkpoint)

    def _save(self, cp: Checkpoint) -> BatchJob | None:
        conn = self.db.conn
        row = conn.execute(
            f"SELECT * FROM {TABLE} WHERE id = ? AND status = ? AND lease = ?",
            [cp.lease.id, cp.expect.value, cp.lease.token],
        ).fetchone()
        if row is None:
            return None
        fields = _fields(row)
        earlier = {status.timestamp_field: fields[status.timestamp_field] for status, _ in cp.steps}
        now = _ts(cp.now)
        sets: dict[str, Any] = {"updated_at": now}
        texts = {cp.now: now}  # the event row writes these timestamps too
        for status, at in cp.steps:
            fields["status"], fields[status.timestamp_field] = status, at
            text = texts[at] = _ts(at)
            sets["status"], sets[status.timestamp_field] = status.value, text
        if cp.result:
            fields["result"] = {**fields["result"], **cp.result}
            sets["result"] = json.dumps(fields["result"], allow_nan=False)
        if cp.context:
            fields["context"] = {**fields["context"], **cp.context}
            sets["context"] = json.dumps(fields["context"], allow_nan=False)
        if cp.cursor is not None:
            sets["cursor"] = json.dumps(cp.cursor, allow_nan=False)
        if cp.release:
            sets.update(owner=None, lease=None, available_at=_ts(cp.until))
        elif cp.until is not None:
            sets["available_at"] = _ts(cp.until)
        fields["updated_at"] = cp.now
        conn.execute(
            f"UPDATE {TABLE} SET {', '.join(f'{name} = ?' for name in sets)} WHERE id = ?",
            [*sets.values(), cp.lease.id],
        )
        job = BatchJob(**fields)
        events = checkpoint_events(job, cp, earlier)
        if events:
            self._note(
                events,
                sets.get("context", row["context"]),
                sets.get("result", row["result"]),
                [sets.get(name, row[name]) for name in TIMESTAMP_FIELDS],
                texts,
            )
        return job

    @boundary
    def commit(
        self,
        checkpoints: Sequence[Checkpoint],
        *,
        release: Iterable[Lease] = (),
        claim: ClaimRequest | None = None,
    ) -> tuple[list[BatchJob | None], list[Claim]]:
        with self.write():
            saved = [self._save(cp) for cp in checkpoints]
            self._release(list(release))
            return saved, ([] if claim is None else self._claim(claim))

    @boundary
    def renew(self, leases: Iterable[Lease], until: datetime) -> list[str]:
        leases = list(leases)
        if not leases:
            return []
        rows, _ = self._connections.statement(
            f"UPDATE {TABLE} SET available_at = ? WHERE id IN ({_marks(leases)}) "
            f"AND lease IN ({_marks(leases)}) RETURNING id",
            [_ts(until), *(lease.id for lease in leases), *(lease.token for lease in leases)],
        )
        return [row[0] for row in rows]

    @boundary
    def release(self, leases: Iterable[Lease]) -> int:
        return self._release(list(leases))

    def _release(self, leases: list[Lease]) -> int:
        if not leases:
            return 0
        _, count = self._connections.statement(
            f"UPDATE {TABLE} SET owner = NULL, lease = NULL, available_at = NULL "
            f"WHERE id IN ({_marks(leases)}) AND lease IN ({_marks(leases)})",
            [*(lease.id for lease in leases), *(lease.token for lease in leases)],
        )
        return count

    @boundary
    def release_all(self, owner: str) -> int:
        _, count = self._connections.statement(
            f"UPDATE {TABLE} SET owner = NULL, lease = NULL, available_at = NULL WHERE owner = ?",
            [owner],
        )
        return count

    @boundary
    def holds(self, lease: Lease) -> Status | None:
        row = self.db.conn.execute(
            f"SELECT status FROM {TABLE} WHERE id = ? AND lease = ?", [lease.id, lease.token]
        ).fetchone()
        return None if row is None else Status(row[0])

    @boundary
    def lease_owners(self, now: datetime) -> list[str]:
        rows = self.db.conn.execute(
            f"SELECT DISTINCT owner FROM {TABLE} INDEXED BY batch_jobs_leased "
            "WHERE owner IS NOT NULL AND available_at > ?",
            [_ts(now)],
        ).fetchall()
        return [row[0] for row in rows]

    @boundary
    def holder(self, id: str) -> Holder | None:
        row = self.db.conn.execute(
            f"SELECT owner, lease, available_at FROM {TABLE} WHERE id = ?", [id]
        ).fetchone()
        if row is None or row["owner"] is None:
            return None
        return Holder(row["owner"], row["lease"], _parse_ts(row["available_at"]))

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
            sql = (
                f"UPDATE {TABLE} SET cleanup = 1, available_at = ? "
                "WHERE id = ? AND status = ? AND lease = ? "
                "AND (processing_at IS NOT NULL OR ?) RETURNING *"
            )
            params: list[Any] = [_ts(lease_until), id, canceled, lease.token, int(began)]
        else:
            sql = (
                f"UPDATE {TABLE} SET owner = ?, lease = lower(hex(randomblob(12))), "
                "available_at = ? WHERE id = ? AND status = ? AND cleanup = 1 "
                f"AND (owner IS NULL OR available_at <= ? OR owner IN ({_marks(gone)})) "
                "RETURNING *"
            )
            params = [owner, _ts(lease_until), id, canceled, _ts(now), *gone]
        rows, _ = self._connections.statement(sql, params)
        return _claim(rows[0]) if rows else None

    @boundary
    def finish_cleanup(self, lease: Lease) -> bool:
        _, count = self._connections.statement(
            f"UPDATE {TABLE} SET cleanup = 0, owner = NULL, lease = NULL, available_at = NULL "
            "WHERE id = ? AND lease = ?",
            [lease.id, lease.token],
        )
        return count == 1

    # -- reads ---------------------------------------------------------------

    @boundary
    def get(self, id: str) -> BatchJob | None:
        row = self.db.conn.execute(f"SELECT * FROM {TABLE} WHERE id = ?", [id]).fetchone()
        return None if row is None else _record(row)

    @boundary
    def status_of(self, id: str) -> Status | None:
        row = self.db.conn.execute(f"SELECT status FROM {TABLE} WHERE id = ?", [id]).fetchone()
        return None if row is None else Status(row[0])

    @boundary
    def pending(self, types: Sequence[str]) -> tuple[int, datetime | None]:
        if not types:
            return 0, None
        count, earliest = self.db.conn.execute(
            f"SELECT count(*), min(coalesce(available_at, '')) FROM {TABLE} "
            f"WHERE {RUNNABLE} AND type IN ({_marks(types)})",
            list(types),
        ).fetchone()
        return count, (_parse_ts(earliest) if earliest else None)

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
        where, params = self._where(filters)
        descending = order.startswith("-")
        column = order.lstrip("-+")
        if column not in ORDER_FIELDS:
            raise InvalidDataError(
                f"order must be one of {', '.join(ORDER_FIELDS)} (with - for descending), "
                f"not {order!r}"
            )
        direction = "DESC" if descending else "ASC"
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        conn = self.db.conn
        conn.execute("BEGIN")  # one snapshot for the page and the count
        try:
            rows = conn.execute(
                f"SELECT * FROM {TABLE}{clause} ORDER BY {column} {direction}, id {direction} "
                "LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            (count,) = conn.execute(self._count_sql(filters, clause), params).fetchone()
        finally:
            conn.execute("COMMIT")
        return [_record(row) for row in rows], count

    @boundary
    def count(self, *, filters: Mapping[str, Any] | None = None) -> int:
        filters = filters or {}
        where, params = self._where(filters)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        (count,) = self.db.conn.execute(self._count_sql(filters, clause), params).fetchone()
        return int(count)

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
                terms = [f"{name} IN ({_marks(named)})"] if named else []
                if with_null:
                    terms.append(f"{name} IS NULL")
                where.append(f"({' OR '.join(terms)})" if terms else "0")
                params.extend(named)
            elif name in TIMESTAMP_FIELDS:
                if value is None:
                    where.append(f"{name} IS NULL")
                    continue
                for op, bound in value.items():
                    where.append(f"{name} {_SQL_OPERATORS[op]} ?")
                    params.append(_ts(bound))
            else:
                raise InvalidDataError(f"cannot filter on {name!r}")
        return where, params
