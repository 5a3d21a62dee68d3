"""The SQLite store's schedules: the rows of recurring jobs and the guarded claim of a fire."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ..models import BatchJob, Schedule
from ._sqlite_connections import Connections, boundary
from ._sqlite_rows import ts as _ts
from ._sqlite_schema import SCHEDULES
from .base import Store

#: A schedule's columns, in the order ``_row`` gives their values.
COLUMNS = (
    "name",
    "type",
    "context",
    "cron",
    "every",
    "timezone",
    "dry_run",
    "created_by",
    "misfire",
    "next_fire_at",
    "last_fired_at",
    "last_job_id",
    "last_error",
    "paused_at",
    "created_at",
    "updated_at",
    "revision",
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM {SCHEDULES}"


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _row(schedule: Schedule) -> list[Any]:
    return [
        schedule.name,
        schedule.type,
        json.dumps(schedule.context, allow_nan=False),
        schedule.cron,
        None if schedule.every is None else schedule.every.total_seconds(),
        schedule.timezone,
        int(schedule.dry_run),
        schedule.created_by,
        schedule.misfire,
        _ts(schedule.next_fire_at),
        _ts(schedule.last_fired_at),
        schedule.last_job_id,
        schedule.last_error,
        _ts(schedule.paused_at),
        _ts(schedule.created_at),
        _ts(schedule.updated_at),
        schedule.revision,
    ]


def _record(row: sqlite3.Row) -> Schedule:
    return Schedule(
        name=row["name"],
        type=row["type"],
        context=json.loads(row["context"]),
        cron=row["cron"],
        every=None if row["every"] is None else timedelta(seconds=row["every"]),
        timezone=row["timezone"],
        dry_run=bool(row["dry_run"]),
        created_by=row["created_by"],
        misfire=row["misfire"],
        next_fire_at=_parse_ts(row["next_fire_at"]),
        last_fired_at=_parse_ts(row["last_fired_at"]),
        last_job_id=row["last_job_id"],
        last_error=row["last_error"],
        paused_at=_parse_ts(row["paused_at"]),
        created_at=_parse_ts(row["created_at"]),
        updated_at=_parse_ts(row["updated_at"]),
        revision=row["revision"],
    )


class SQLiteSchedules(Store):
    """The schedule methods of ``SQLiteStore`` (which inherits them), on its connections."""

    _connections: Connections

    @boundary
    def get_schedule(self, name: str) -> Schedule | None:
        row = self._connections.db.conn.execute(f"{_SELECT} WHERE name = ?", [name]).fetchone()
        return None if row is None else _record(row)

    @boundary
    def list_schedules(self) -> list[Schedule]:
        rows = self._connections.db.conn.execute(f"{_SELECT} ORDER BY name").fetchall()
        return [_record(row) for row in rows]

    @boundary
    def due_schedules(self, now: datetime, types: Sequence[str]) -> list[Schedule]:
        if not types:
            return []
        marks = ", ".join("?" for _ in types)
        rows = self._connections.db.conn.execute(
            f"{_SELECT} WHERE paused_at IS NULL AND next_fire_at <= ? AND type IN ({marks}) "
            "ORDER BY next_fire_at, name",
            [_ts(now), *types],
        ).fetchall()
        return [_record(row) for row in rows]

    @boundary
    def save_schedule(self, schedule: Schedule, *, expect_revision: int | None) -> Schedule | None:
        stored = schedule.replace(revision=(expect_revision or 0) + 1)
        values = _row(stored)
        if expect_revision is None:
            marks = ", ".join("?" for _ in values)
            sql = (
                f"INSERT INTO {SCHEDULES} ({', '.join(COLUMNS)}) VALUES ({marks}) "
                "ON CONFLICT (name) DO NOTHING"
            )
            params = values
        else:
            sets = ", ".join(f"{column} = ?" for column in COLUMNS[1:])
            sql = f"UPDATE {SCHEDULES} SET {sets} WHERE name = ? AND revision = ?"
            params = [*values[1:], schedule.name, expect_revision]
        with self._connections.write() as conn:
            changed = conn.execute(sql, params).rowcount
        return stored if changed == 1 else None

    @boundary
    def fire_schedule(
        self,
        schedule: Schedule,
        *,
        next_fire_at: datetime | None,
        jobs: Sequence[BatchJob],
        fired_at: datetime | None,
        now: datetime,
        error: str | None = None,
    ) -> Schedule | None:
        stored = schedule.replace(
            next_fire_at=next_fire_at,
            last_fired_at=fired_at if jobs else schedule.last_fired_at,
            last_job_id=jobs[-1].id if jobs else schedule.last_job_id,
            last_error=error,
            updated_at=now,
            revision=schedule.revision + 1,
        )
        with self._connections.write() as conn:
            claimed = conn.execute(
                f"UPDATE {SCHEDULES} SET next_fire_at = ?, last_fired_at = ?, last_job_id = ?, "
                "last_error = ?, updated_at = ?, revision = ? "
                "WHERE name = ? AND revision = ? AND next_fire_at = ? AND paused_at IS NULL",
                [
                    _ts(stored.next_fire_at),
                    _ts(stored.last_fired_at),
                    stored.last_job_id,
                    stored.last_error,
                    _ts(now),
                    stored.revision,
                    schedule.name,
                    schedule.revision,
                    _ts(schedule.next_fire_at),
                ],
            ).rowcount
            if claimed != 1:
                return None
            for job in jobs:
                self.insert(job)  # joins this transaction
        return stored

    @boundary
    def delete_schedule(self, name: str) -> Schedule | None:
        with self._connections.write() as conn:
            row = conn.execute(
                f"DELETE FROM {SCHEDULES} WHERE name = ? RETURNING {', '.join(COLUMNS)}", [name]
            ).fetchone()
        return None if row is None else _record(row)
