"""The PostgreSQL store's schedules: the rows of recurring jobs and the guarded claim of a fire."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..models import BatchJob, Event, Schedule
from ._postgres_connections import Database, boundary
from ._postgres_schema import SCHEDULES
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


def _row(schedule: Schedule) -> list[Any]:
    return [
        schedule.name,
        schedule.type,
        Jsonb(schedule.context),
        schedule.cron,
        schedule.every,
        schedule.timezone,
        schedule.dry_run,
        schedule.created_by,
        schedule.misfire,
        schedule.next_fire_at,
        schedule.last_fired_at,
        schedule.last_job_id,
        schedule.last_error,
        schedule.paused_at,
        schedule.created_at,
        schedule.updated_at,
        schedule.revision,
    ]


def _record(row: Sequence[Any]) -> Schedule:
    return Schedule(**dict(zip(COLUMNS, row, strict=True)))


class PostgresSchedules(Store):
    """The schedule methods of ``PostgresStore`` (which inherits them), on its database."""

    _database: Database
    #: Writes new jobs in an open transaction (``PostgresStore``'s).
    _insert: Callable[[psycopg.Connection[Any], Sequence[BatchJob], set[str]], Sequence[Event]]
    _committed: Callable[[Sequence[Event]], None]

    @boundary
    def get_schedule(self, name: str) -> Schedule | None:
        row = self._database.read(
            lambda conn: conn.execute(f"{_SELECT} WHERE name = %s", [name]).fetchone()
        )
        return None if row is None else _record(row)

    @boundary
    def list_schedules(self) -> list[Schedule]:
        rows = self._database.read(lambda conn: conn.execute(f"{_SELECT} ORDER BY name").fetchall())
        return [_record(row) for row in rows]

    @boundary
    def due_schedules(self, now: datetime, types: Sequence[str]) -> list[Schedule]:
        if not types:
            return []
        rows = self._database.read(
            lambda conn: conn.execute(
                f"{_SELECT} WHERE paused_at IS NULL AND next_fire_at <= %s AND type = ANY(%s) "
                "ORDER BY next_fire_at, name",
                [now, list(types)],
            ).fetchall()
        )
        return [_record(row) for row in rows]

    @boundary
    def save_schedule(self, schedule: Schedule, *, expect_revision: int | None) -> Schedule | None:
        stored = schedule.replace(revision=(expect_revision or 0) + 1)
        values = _row(stored)
        if expect_revision is None:
            marks = ", ".join("%s" for _ in values)
            query = (
                f"INSERT INTO {SCHEDULES} ({', '.join(COLUMNS)}) VALUES ({marks}) "
                "ON CONFLICT (name) DO NOTHING RETURNING name"
            )
            params = values
        else:
            sets = ", ".join(f"{column} = %s" for column in COLUMNS[1:])
            query = (
                f"UPDATE {SCHEDULES} SET {sets} WHERE name = %s AND revision = %s RETURNING name"
            )
            params = [*values[1:], schedule.name, expect_revision]
        # Rows, not rowcount: statements are pipelined, and only a fetch waits for them.
        changed = self._database.write(
            lambda conn, wake: conn.execute(query, params).fetchone() is not None
        )
        return stored if changed else None

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
        params = [
            stored.next_fire_at,
            stored.last_fired_at,
            stored.last_job_id,
            stored.last_error,
            now,
            stored.revision,
            schedule.name,
            schedule.revision,
            schedule.next_fire_at,
        ]

        def work(
            conn: psycopg.Connection[Any], wake: set[str]
        ) -> tuple[Schedule | None, Sequence[Event]]:
            claimed = conn.execute(
                f"UPDATE {SCHEDULES} SET next_fire_at = %s, last_fired_at = %s, "
                "last_job_id = %s, last_error = %s, updated_at = %s, revision = %s "
                "WHERE name = %s AND revision = %s AND next_fire_at = %s AND paused_at IS NULL "
                "RETURNING name",
                params,
            ).fetchone()
            if claimed is None:
                return None, []
            return stored, (self._insert(conn, jobs, wake) if jobs else [])

        fired, events = self._database.write(work)
        self._committed(events)
        return fired

    @boundary
    def delete_schedule(self, name: str) -> Schedule | None:
        row = self._database.write(
            lambda conn, wake: conn.execute(
                f"DELETE FROM {SCHEDULES} WHERE name = %s RETURNING {', '.join(COLUMNS)}", [name]
            ).fetchone()
        )
        return None if row is None else _record(row)
