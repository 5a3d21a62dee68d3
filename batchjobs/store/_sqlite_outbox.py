"""The SQLite store's outbox: event rows written in each change's transaction, read by seq.

A write notes its events (``_note``) while its transaction is open; just
before the commit, ``_write_events`` numbers them from the last seq given
and inserts them in one statement, a row per job (``_event_rows``); once
committed, ``_committed`` hands them to ``on_events``. A transaction that
rolls back writes and hands over nothing.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ..errors import EventsPrunedError, InvalidDataError
from ..models import Event
from ._event_rows import EVENT_COLUMNS, Step, earlier, expand, page, prunable
from ._event_rows import rows as rows_of
from ._sqlite_connections import Connections, boundary
from ._sqlite_rows import job_record, marks, ts
from ._sqlite_schema import CURSORS, EVENTS, EVENTS_HORIZON
from .base import Store

log = logging.getLogger("batchjobs.store")

#: Rows inserted by one statement at most (SQLite caps a statement's parameters).
_ROWS_PER_INSERT = 500
_INSERT_COLUMNS = f"seq, {', '.join(EVENT_COLUMNS)}"
_INSERT_ONE = f"(?, {marks(EVENT_COLUMNS)})"
#: The last seq ever given (kept by SQLite for AUTOINCREMENT, even once rows are deleted:
#: the highest ever inserted, a row's seq being its last event's).
_LAST_SEQ = f"coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{EVENTS}'), 0)"
#: One row, its seq the last seq given plus its first parameter (its count of events):
#: one statement instead of a read and an insert.
_INSERT_NEXT = (
    f"INSERT INTO {EVENTS} ({_INSERT_COLUMNS}) VALUES ({_LAST_SEQ} + ?, {marks(EVENT_COLUMNS)})"
)
_NO_TEXTS: Mapping[datetime, str | None] = {}
#: One write's events (of one job), then the job's context and result JSON and its
#: timestamps as stored (``TIMESTAMP_FIELDS``' order), then timestamps' texts known already.
Noted = tuple[Sequence[Step], str, str, Sequence["str | None"], Mapping[datetime, "str | None"]]


def _row(
    steps: Sequence[Step],
    context: str,
    result: str,
    stamps: Sequence[str | None],
    encoded: str | None,
    texts: dict[Any, str | None],
    origin: str | None,
) -> list[Any]:
    """The row of one job's ``steps``, as ``_INSERT_COLUMNS``; its seq left at 0."""
    name, job, at, _ = steps[-1]
    text = texts.get(at) or ts(at)
    row = [0, name, text, origin, job.id, job.type, job.status.value, job.created_by]
    row += (int(job.dry_run), context, result, *stamps, len(steps), encoded)
    return row


@functools.lru_cache(maxsize=8)
def _insert(rows: int) -> str:
    """The statement inserting ``rows`` rows, their seqs given."""
    return f"INSERT INTO {EVENTS} ({_INSERT_COLUMNS}) VALUES {', '.join([_INSERT_ONE] * rows)}"


def _check_seq(name: str, value: Any, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidDataError(f"{name} must be a non-negative integer (a seq), not {value!r}")


class SQLiteOutbox(Store):
    """The outbox half of ``SQLiteStore``: writing, reading and pruning events; cursors."""

    _connections: Connections

    def _start_outbox(self) -> None:
        """Wire the event rows into every write transaction of ``_connections``."""
        self._connections.before_commit = self._write_events
        self._connections.after_commit = self._committed

    def _note(
        self,
        steps: Sequence[Step],
        context: str,
        result: str,
        stamps: Sequence[str | None],
        texts: Mapping[datetime, str | None] = _NO_TEXTS,
    ) -> None:
        """Note the events ``steps`` of one write of a job in the open write transaction:
        the job's context and result JSON and its timestamps as written (``stamps``),
        and ``texts`` of other timestamps already formatted."""
        self._connections.pending.append((steps, context, result, stamps, texts))

    def _write_events(self, conn: sqlite3.Connection, noted: list[Noted]) -> list[Event]:
        origin = self.origin
        if len(noted) == 1:  # one write (most commits): one row, numbered as it is inserted
            steps, context, result, stamps, known = noted[0]
            texts = dict(known)
            row = _row(steps, context, result, stamps, earlier(steps, texts), texts, origin)
            row[0] = len(steps)
            last = conn.execute(_INSERT_NEXT, row).lastrowid
            assert last is not None
            seq = last - len(steps)
            return [Event(seq + i, s[0], s[1], s[2], origin) for i, s in enumerate(steps, 1)]
        texts = {}
        for note in noted:
            texts.update(note[4])
        events: list[Event] = []
        rows: list[list[Any]] = []
        # The write lock is ours since BEGIN IMMEDIATE: nobody else numbers events meanwhile.
        (seq,) = conn.execute(f"SELECT {_LAST_SEQ}").fetchone()
        for last, steps, encoded in rows_of([note[0] for note in noted], texts):
            for name, job, at, _ in steps:
                seq += 1
                events.append(Event(seq, name, job, at, origin))
            _, context, result, stamps, _ = noted[last]
            row = _row(steps, context, result, stamps, encoded, texts, origin)
            row[0] = seq
            rows.append(row)
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            conn.execute(_insert(len(chunk)), [value for row in chunk for value in row])
        return events

    def _committed(self, events: list[Event]) -> None:
        listener = self.on_events
        if listener is None:
            return
        try:
            listener(events)
        except Exception:
            log.exception("the listener of committed events failed (the events are committed)")

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
        where, params = ["seq > ?"], []
        # Filtered, a seek in the filter's index (which ends with the seq): as fast
        # with ten million events as with a thousand. SQLite may prefer the rowid scan.
        index = ""
        if created_by is not None:
            where.append("created_by = ?")
            params.append(created_by)
            index = f" INDEXED BY {EVENTS}_creator"
        if job_id is not None:
            where.append("id = ?")
            params.append(job_id)
            index = f" INDEXED BY {EVENTS}_job"
        conn = self._connections.db.conn
        conn.execute("BEGIN")  # one snapshot: the horizon and the rows agree
        try:
            horizon, last = conn.execute(
                f"SELECT pruned_through, {_LAST_SEQ} FROM {EVENTS_HORIZON}"
            ).fetchone()
            if after is None:
                after = horizon
            elif after < horizon:
                (oldest,) = conn.execute(
                    f"SELECT coalesce(min(seq - steps + 1), ?) FROM {EVENTS} "
                    f"WHERE seq = (SELECT min(seq) FROM {EVENTS} WHERE seq > ?)",
                    [horizon + 1, horizon],
                ).fetchone()
                raise EventsPrunedError(after, oldest)
            elif after > last:
                raise InvalidDataError(
                    f"after={after} is beyond the last event of this database (seq {last}): "
                    "a position read from another database?"
                )
            # A row holds one event or more: ``limit`` rows hold at least ``limit`` events
            # after ``after`` (a row is read when its last event is).
            rows = conn.execute(
                f"SELECT * FROM {EVENTS}{index} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                [after, *params, limit],
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        expanded = (
            expand(
                row["seq"],
                row["steps"],
                row["earlier"],
                row["event"],
                job_record(row),
                datetime.fromisoformat(row["at"]),
                row["origin"],
                after=after,
            )
            for row in rows
        )
        return page(expanded, limit)

    @boundary
    def last_seq(self) -> int:
        (last,) = self._connections.db.conn.execute(f"SELECT {_LAST_SEQ}").fetchone()
        return int(last)

    # -- writes --------------------------------------------------------------

    @boundary
    def prune_events(self, *, before: datetime, limit: int) -> int:
        with self._connections.write() as conn:
            rows = conn.execute(
                f"SELECT seq, at, steps FROM {EVENTS} ORDER BY seq LIMIT ?", [limit]
            ).fetchall()  # all read before the DELETE
            oldest = ((seq, datetime.fromisoformat(at), steps) for seq, at, steps in rows)
            through, deleted = prunable(oldest, before=before, limit=limit)
            if through is None:
                return 0
            conn.execute(f"DELETE FROM {EVENTS} WHERE seq <= ?", [through])
            conn.execute(
                f"UPDATE {EVENTS_HORIZON} SET pruned_through = max(pruned_through, ?)", [through]
            )
        return deleted

    def _delete_events(self, conn: sqlite3.Connection, ids: list[str]) -> None:
        """Delete the events of jobs ``ids`` (in the transaction deleting the jobs)."""
        if ids:
            conn.execute(f"DELETE FROM {EVENTS} WHERE id IN ({marks(ids)})", ids)

    @boundary
    def take_cursor(
        self, name: str, *, owner: str, now: datetime, until: datetime, start: int
    ) -> tuple[int, bool]:
        with self._connections.write() as conn:
            conn.execute(
                f"INSERT INTO {CURSORS} (name, seq) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                [name, start],
            )
            row = conn.execute(
                f"UPDATE {CURSORS} SET owner = ?, expires_at = ? WHERE name = ? "
                "AND (owner IS NULL OR owner = ? OR expires_at <= ?) RETURNING seq",
                [owner, ts(until), name, owner, ts(now)],
            ).fetchone()
            if row is not None:
                return int(row[0]), True
            (seq,) = conn.execute(f"SELECT seq FROM {CURSORS} WHERE name = ?", [name]).fetchone()
        return int(seq), False

    @boundary
    def move_cursor(
        self, name: str, *, owner: str, seq: int, until: datetime | None = None
    ) -> bool:
        keep = until is not None
        with self._connections.write() as conn:
            moved = conn.execute(
                f"UPDATE {CURSORS} SET seq = ?, owner = ?, expires_at = ? "
                "WHERE name = ? AND owner = ?",
                [seq, owner if keep else None, ts(until), name, owner],
            ).rowcount
        return moved == 1
