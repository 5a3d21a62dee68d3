"""The PostgreSQL store's outbox: event rows written in each change's transaction, read by seq.

Seqs come from one counter row, updated at the end of each transaction that
writes events: its row lock is held until that transaction commits, so the
next writer takes the following seqs and commits after it. Seq order is
commit order: a reader that saw seq ``n`` never later finds an event below
it. The same statement sends a ``NOTIFY`` (delivered with the commit) that
wakes ``follow`` in every process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import EventsPrunedError, InvalidDataError
from ..models import TIMESTAMP_FIELDS, BatchJob, Event, Status
from ._event_rows import EVENT_COLUMNS as ROW_COLUMNS
from ._event_rows import JOB_COLUMNS, Step, expand, page, prunable
from ._event_rows import rows as rows_of
from ._postgres_connections import Database, Listener, boundary
from ._postgres_schema import CURSORS, EVENT_SEQ, EVENTS, EVENTS_CHANNEL
from .base import Store

log = logging.getLogger("batchjobs.store")

#: An event row's columns: its seq, the event, then the job as of the event, its steps.
EVENT_COLUMNS = ("seq", *ROW_COLUMNS)
_SELECT_EVENT = ", ".join(EVENT_COLUMNS)
_JOB = EVENT_COLUMNS.index("id")  # where the job's columns start
_JOB_TS = JOB_COLUMNS.index("created_at")  # where a job's timestamps start among them
_STEPS = EVENT_COLUMNS.index("steps")
#: An event row; its seq given as how far below the counter's new value it is (the
#: counter row was updated earlier in the same transaction, and its lock is ours).
_INSERT = (
    f"INSERT INTO {EVENTS} ({_SELECT_EVENT}) VALUES ((SELECT last FROM {EVENT_SEQ}) - %s, "
    f"{', '.join('%s' for _ in EVENT_COLUMNS[1:])})"
)
#: A row of one event: the columns it writes (``steps`` and ``earlier`` keep their defaults).
_ONE_EVENT = ("seq", "event", "at", "origin", *JOB_COLUMNS)


@functools.lru_cache(maxsize=256)
def with_one_event(update: str, channel: str) -> str:
    """``update`` (an ``UPDATE`` of one job ``RETURNING`` its columns) and the event it
    makes, in one statement: the counter and the event row are written only if the
    update wrote its row, the event carrying the job as updated, and ``channel``
    notified. Its parameters are ``update``'s, then the event's name, time and origin;
    it returns the job's columns, then the event's seq (no row: the update wrote
    nothing)."""
    return (
        f"WITH j AS ({update}), "
        f"s AS (UPDATE {EVENT_SEQ} SET last = last + 1 WHERE EXISTS (SELECT FROM j) "
        f"RETURNING last, pg_notify({_literal(channel)}, '')), "
        f"e AS (INSERT INTO {EVENTS} ({', '.join(_ONE_EVENT)}) SELECT s.last, %s, %s, %s, "
        f"{', '.join(f'j.{c}' for c in JOB_COLUMNS)} FROM j, s) "
        "SELECT j.*, s.last FROM j, s"
    )


def _literal(text: str) -> str:
    """``text`` as an SQL string literal (a channel's name: written into statements that
    are prepared once per text)."""
    return "'" + text.replace("'", "''") + "'"


def _check_seq(name: str, value: Any, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidDataError(f"{name} must be a non-negative integer (a seq), not {value!r}")


def job_record(row: Sequence[Any], start: int = 0) -> BatchJob:
    """The job whose ``JOB_COLUMNS`` are ``row``'s from ``start`` on (a job row's from 0,
    an event row's after its seq, event, time and origin)."""
    ts = start + _JOB_TS
    return BatchJob(
        id=row[start],
        type=row[start + 1],
        status=Status(row[start + 2]),
        created_by=row[start + 3],
        dry_run=row[start + 4],
        context=row[start + 5],
        result=row[start + 6],
        **dict(zip(TIMESTAMP_FIELDS, row[ts : ts + len(TIMESTAMP_FIELDS)], strict=True)),
    )


def _events(row: Sequence[Any], after: int) -> list[Event]:
    """The events of ``row`` (its columns as ``EVENT_COLUMNS``) with a seq above ``after``."""
    job = job_record(row, _JOB)
    return expand(row[0], row[_STEPS], row[_STEPS + 1], row[1], job, row[2], row[3], after=after)


class PostgresOutbox(Store):
    """The outbox half of ``PostgresStore``: writing, reading and pruning events; cursors."""

    _database: Database

    def _write_events(
        self, conn: psycopg.Connection[Any], writes: Sequence[Sequence[Step]]
    ) -> Sequence[Event]:
        """Number the events of ``writes`` (each one job's, oldest first) and write them,
        a row per job, last in their transaction (the counter's lock is held until the
        commit): one round trip."""
        with conn.pipeline():
            events, _ = self._send_events(conn, writes)
        return events()

    def _send_events(
        self, conn: psycopg.Connection[Any], writes: Sequence[Sequence[Step]]
    ) -> tuple[
        Callable[[], Sequence[Event]], Callable[[psycopg.Connection[Any], str], Sequence[Event]]
    ]:
        """Send (in pipeline mode: nothing waits for them) the statements that number the
        events of ``writes`` and write them, a row per job: the counter first (its row
        lock is held until the commit, so they should be the transaction's last), then
        the rows, numbered on the server from it.

        Returns the events, numbered, once the statements' answers are in; and the same
        read again on another connection, for a commit whose answer was lost (the rows
        found by the transaction that wrote them)."""
        if not writes:
            return list, lambda conn, xid: []
        origin = self.origin
        noted: list[Step] = []  # numbered once the counter answers
        rows = []
        texts: dict[Any, str | None] = {}
        offset = 0  # the events up to each row's last, counted from the commit's first
        for _, steps, earlier in rows_of(writes, texts):
            noted += steps
            offset += len(steps)
            name, job, at, _ = steps[-1]
            rows.append(
                [
                    offset,
                    name,
                    at,
                    origin,
                    job.id,
                    job.type,
                    job.status.value,
                    job.created_by,
                    job.dry_run,
                    Jsonb(job.context),
                    Jsonb(job.result),
                    *(getattr(job, field) for field in TIMESTAMP_FIELDS),
                    len(steps),
                    earlier,
                ]
            )
        total = offset
        for row in rows:
            row[0] = total - row[0]  # how far below the counter's new value
        counter = conn.execute(
            f"UPDATE {EVENT_SEQ} SET last = last + %s "
            f"RETURNING last, pg_notify({_literal(self._database.channel(EVENTS_CHANNEL))}, '')",
            [total],
        )
        with conn.cursor() as cur:
            cur.executemany(_INSERT, rows)
        last_id = rows[-1][4]

        def numbered(last: int) -> Sequence[Event]:
            before = last - total  # the seq of the last event committed before these
            return [
                Event(before + i, name, job, at, origin)
                for i, (name, job, at, _) in enumerate(noted, start=1)
            ]

        def answered() -> Sequence[Event]:
            found = counter.fetchone()
            assert found is not None
            return numbered(int(found[0]))

        def recover(conn: psycopg.Connection[Any], xid: str) -> Sequence[Event]:
            # The last row holds the commit's last seq; the transaction wrote it (xmin:
            # the low 32 bits of its id). Gone since (pruned, its job deleted): none.
            found = conn.execute(
                f"SELECT max(seq) FROM {EVENTS} WHERE id = %s AND xmin = %s::text::xid",
                [last_id, str(int(xid) & 0xFFFFFFFF)],
            ).fetchone()
            return [] if found is None or found[0] is None else numbered(int(found[0]))

        return answered, recover

    def _committed(self, events: Sequence[Event]) -> None:
        listener = self.on_events
        if not events or listener is None:
            return
        try:
            listener(events)
        except Exception:
            log.exception("the listener of committed events failed (the events are committed)")

    def watch(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` after every commit that wrote events, in any process (``NOTIFY``)."""
        listener = Listener(self._database, wake, channel=EVENTS_CHANNEL)
        listener.start()
        return listener.stop

    # -- reads ---------------------------------------------------------------

    @boundary
    def events(
        self,
        *,
        after: int | None = None,
        limit: int = 1000,
        job_id: str | None = None,
        created_by: str | None = None,
    ) -> list[Event]:
        _check_seq("after", after, optional=True)
        _check_seq("limit", limit, optional=False)
        where, params = ["seq > %s"], []
        if job_id is not None:
            where.append("id = %s")
            params.append(job_id)
        if created_by is not None:
            where.append("created_by = %s")
            params.append(created_by)

        def read(conn: psycopg.Connection[Any]) -> tuple[list[Any], int, int, int | None]:
            # One snapshot: the horizon, the last seq and the rows agree. Refusals
            # are raised by the caller: the transaction's retries wrap what it raises.
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                row = conn.execute(f"SELECT last, pruned_through FROM {EVENT_SEQ}").fetchone()
                assert row is not None
                last, horizon = int(row[0]), int(row[1])
                if after is not None and after < horizon:
                    found = conn.execute(
                        f"SELECT seq - steps + 1 FROM {EVENTS} WHERE seq > %s ORDER BY seq LIMIT 1",
                        [horizon],
                    ).fetchone()
                    oldest = found[0] if found and found[0] is not None else horizon + 1
                    return [], last, horizon, int(oldest)
                if after is not None and after > last:
                    return [], last, horizon, None
                # A row holds one event or more: ``limit`` rows hold at least ``limit``
                # events after ``after`` (a row is read when its last event is).
                rows = conn.execute(
                    f"SELECT {_SELECT_EVENT} FROM {EVENTS} WHERE {' AND '.join(where)} "
                    "ORDER BY seq LIMIT %s",
                    [horizon if after is None else after, *params, limit],
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            return rows, last, horizon, None

        rows, last, horizon, oldest = self._database.read(read)
        if oldest is not None:
            raise EventsPrunedError(after or 0, oldest)
        if after is not None and after > last:
            raise InvalidDataError(
                f"after={after} is beyond the last event of this database (seq {last}): "
                "a position read from another database?"
            )
        start = horizon if after is None else after
        return page((_events(row, start) for row in rows), limit)

    @boundary
    def last_seq(self) -> int:
        row = self._database.read(
            lambda conn: conn.execute(f"SELECT last FROM {EVENT_SEQ}").fetchone()
        )
        return 0 if row is None else int(row[0])

    # -- writes --------------------------------------------------------------

    @boundary
    def prune_events(self, *, before: datetime, limit: int) -> int:
        def work(conn: psycopg.Connection[Any], wake: set[str]) -> int:
            oldest = conn.execute(
                f"SELECT seq, at, steps FROM {EVENTS} ORDER BY seq LIMIT %s", [limit]
            ).fetchall()
            through, deleted = prunable(oldest, before=before, limit=limit)
            if through is None:
                return 0
            conn.execute(f"DELETE FROM {EVENTS} WHERE seq <= %s", [through])
            conn.execute(
                f"UPDATE {EVENT_SEQ} SET pruned_through = greatest(pruned_through, %s)",
                [through],
            )
            return deleted

        return self._database.write(work)

    @staticmethod
    def _delete_events(conn: psycopg.Connection[Any], ids: list[str]) -> None:
        """Delete the events of jobs ``ids`` (in the transaction deleting the jobs)."""
        if ids:
            conn.execute(f"DELETE FROM {EVENTS} WHERE id = ANY(%s)", [ids], prepare=False)

    @boundary
    def take_cursor(
        self, name: str, *, owner: str, now: datetime, until: datetime, start: int
    ) -> tuple[int, bool]:
        def work(conn: psycopg.Connection[Any], wake: set[str]) -> tuple[int, bool]:
            conn.execute(
                f"INSERT INTO {CURSORS} (name, seq) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                [name, start],
            )
            row = conn.execute(
                f"UPDATE {CURSORS} SET owner = %s, expires_at = %s WHERE name = %s "
                "AND (owner IS NULL OR owner = %s OR expires_at <= %s) RETURNING seq",
                [owner, until, name, owner, now],
            ).fetchone()
            if row is not None:
                return int(row[0]), True
            found = conn.execute(f"SELECT seq FROM {CURSORS} WHERE name = %s", [name]).fetchone()
            assert found is not None
            return int(found[0]), False

        return self._database.write(work)

    @boundary
    def move_cursor(
        self, name: str, *, owner: str, seq: int, until: datetime | None = None
    ) -> bool:
        keep = until is not None

        def work(conn: psycopg.Connection[Any], wake: set[str]) -> bool:
            moved = conn.execute(
                f"UPDATE {CURSORS} SET seq = %s, owner = %s, expires_at = %s "
                "WHERE name = %s AND owner = %s",
                [seq, owner if keep else None, until, name, owner],
            ).rowcount
            return moved == 1

        return self._database.write(work)
