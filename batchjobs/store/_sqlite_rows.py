"""The SQLite store's rows and records: timestamps as text, a job row as a ``BatchJob``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ..models import TIMESTAMP_FIELDS, BatchJob, Status


def ts(value: datetime | None) -> str | None:
    """A timestamp as stored: ISO 8601 text, in UTC, so that SQLite compares and
    sorts the texts as the times they are (whatever the zone of the ``datetime``)."""
    if value is None:
        return None
    if value.tzinfo is not timezone.utc and value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.isoformat()


def parse_ts(value: str | None) -> datetime | None:
    """A stored timestamp as a ``datetime``."""
    return None if value is None else datetime.fromisoformat(value)


def job_fields(row: sqlite3.Row) -> dict[str, Any]:
    """The fields of the job in ``row``: a row of the jobs table, or of the events table."""
    return {
        "id": row["id"],
        "type": row["type"],
        "status": Status(row["status"]),
        "created_by": row["created_by"],
        "dry_run": bool(row["dry_run"]),
        "context": json.loads(row["context"]),
        "result": json.loads(row["result"]),
        **{name: parse_ts(row[name]) for name in TIMESTAMP_FIELDS},
    }


def job_record(row: sqlite3.Row) -> BatchJob:
    """The job in ``row``, as a record."""
    return BatchJob(**job_fields(row))


def marks(values: Sequence[Any]) -> str:
    """``?, ?, ?``: one parameter per value."""
    return ", ".join("?" for _ in values)
