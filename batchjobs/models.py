"""The batch job record, its statuses, ids and the one clock. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import enum
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ulid import ULID

__all__ = [
    "ACTIVE_STATUSES",
    "RESTING_STATUSES",
    "TIMESTAMP_FIELDS",
    "BatchJob",
    "Schedule",
    "iso_format",
    "Status",
    "new_job_id",
    "utcnow",
]


class Status(str, enum.Enum):
    """Where a batch job is in its lifecycle."""

    CREATED = "created"
    PRE_PROCESSED = "pre_processed"
    CONFIRMED = "confirmed"
    PROCESSING = "processing"
    COMPLETED = "completed"
    CANCELED = "canceled"
    FAILED = "failed"
    #: Stopped at a checkpoint until ``resume``: an extension Medusa lacks.
    PAUSED = "paused"

    def __str__(self) -> str:
        return self.value

    @property
    def timestamp_field(self) -> str:
        """The record field that holds when the job entered this status."""
        return _STATUS_TIMESTAMP_FIELDS[self]


#: The timestamp field of each status, as a table: read on every transition.
_STATUS_TIMESTAMP_FIELDS = {status: f"{status.value}_at" for status in Status}


#: Statuses a job waits in until a person (or nothing) moves it on.
RESTING_STATUSES = frozenset(
    {Status.PRE_PROCESSED, Status.COMPLETED, Status.CANCELED, Status.FAILED, Status.PAUSED}
)
#: Statuses in which a scheduler must pick the job up.
ACTIVE_STATUSES = (Status.CREATED, Status.CONFIRMED, Status.PROCESSING)

TIMESTAMP_FIELDS = (
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


def utcnow() -> datetime:
    """The current time, timezone-aware UTC: the only clock the library reads."""
    return datetime.now(timezone.utc)


_id_lock = threading.Lock()
_last_id = 0


def new_job_id(now: datetime | None = None) -> str:
    """A new ``batch_`` + ULID id, strictly increasing within this process."""
    global _last_id
    with _id_lock:
        value = int(ULID.from_datetime(now or utcnow()))
        # Same millisecond (or a clock step back): keep ids sortable by creation.
        if value <= _last_id:
            value = _last_id + 1
        _last_id = value
    return f"batch_{ULID.from_int(value)}"


#: ISO 8601 text of recent UTC timestamps: a save writes each of its timestamps
#: and its events send the same ones, so each is formatted once, not twice.
_iso_texts: dict[datetime, str] = {}
_ISO_TEXTS_KEPT = 256


def iso_format(value: datetime) -> str:
    """``value.isoformat()``, remembered for a while when ``value`` is in UTC."""
    # Only UTC, looked up as well as kept: an equal datetime in another zone
    # (the same instant) formats differently.
    if value.tzinfo is not timezone.utc:
        return value.isoformat()
    text = _iso_texts.get(value)
    if text is None:
        text = value.isoformat()
        if len(_iso_texts) >= _ISO_TEXTS_KEPT:
            _iso_texts.clear()
        _iso_texts[value] = text
    return text


def _iso(value: datetime | None) -> str | None:
    return None if value is None else iso_format(value)


@dataclass(frozen=True)
class BatchJob:
    """One batch job, as stored. Immutable: operations return new records.

    ``to_dict()`` gives the Medusa-compatible JSON shape.
    """

    id: str
    type: str
    status: Status
    created_by: str | None = None
    dry_run: bool = False
    context: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    pre_processed_at: datetime | None = None
    confirmed_at: datetime | None = None
    processing_at: datetime | None = None
    completed_at: datetime | None = None
    canceled_at: datetime | None = None
    failed_at: datetime | None = None
    deleted_at: datetime | None = None
    paused_at: datetime | None = None

    @property
    def is_resting(self) -> bool:
        """True when no scheduler will move the job on by itself."""
        return self.status in RESTING_STATUSES

    def replace(self, **changes: Any) -> BatchJob:
        """A copy of this record with ``changes`` applied (field names are checked)."""
        if not _FIELD_NAMES.issuperset(changes):
            unknown = sorted(changes.keys() - _FIELD_NAMES)
            raise TypeError(f"BatchJob has no field {', '.join(unknown)}")
        # dataclasses.replace re-runs __init__; a record is replaced on every
        # transition, so copy the instance dict instead.
        if "result" in changes:
            fields = {**self.__dict__, **changes}
            fields.pop("_result_json", None)
            return self._with(fields)
        return self._with(self.__dict__ | changes)

    def _with(self, fields: dict[str, Any]) -> BatchJob:
        """A record holding ``fields`` as they are: no checks (for the runner's hot path)."""
        copy = _new(BatchJob)
        _set(copy, "__dict__", fields)
        return copy

    def with_status(self, status: Status, at: datetime) -> BatchJob:
        """A copy that entered ``status`` at ``at`` (its status and that status's timestamp)."""
        return self._with(self.__dict__ | {"status": status, _STATUS_TIMESTAMP_FIELDS[status]: at})

    def result_json(self) -> str:
        """``result`` as JSON text: the stored text itself when the record was built from it."""
        text = self.__dict__.get("_result_json")
        return text if text is not None else _COMPACT.encode(self.result)

    def with_result_json(self, text: str) -> BatchJob:
        """This record, noting ``text`` as the JSON of its ``result`` (as stored)."""
        object.__setattr__(self, "_result_json", text)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: ISO 8601 timestamps, plain values."""
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status.value,
            "created_by": self.created_by,
            "dry_run": self.dry_run,
            "context": dict(self.context),
            "result": dict(self.result),
            **{name: _iso(getattr(self, name)) for name in TIMESTAMP_FIELDS},
        }


_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_new = object.__new__
_set = object.__setattr__
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(BatchJob))


@dataclass(frozen=True)
class Schedule:
    """A recurring job, as stored: each of its fire times creates one batch job.

    Exactly one of ``cron`` (a 5-field crontab, read in ``timezone``) and
    ``every`` (a fixed interval) is set. ``next_fire_at`` is the fire time
    the next job is due at (UTC); ``last_fired_at`` and ``last_job_id`` name
    the latest job it created (``scheduled_for`` of that job and its id).
    ``revision`` counts the writes to the schedule: a change guarded by it
    applies only to the version it was computed from. Immutable.
    """

    name: str
    type: str
    context: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: timedelta | None = None
    timezone: str = "UTC"
    dry_run: bool = False
    created_by: str | None = None
    misfire: str = "coalesce"
    next_fire_at: datetime | None = None
    last_fired_at: datetime | None = None
    last_job_id: str | None = None
    last_error: str | None = None
    paused_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    revision: int = 0

    @property
    def is_paused(self) -> bool:
        """True while ``pause_schedule`` holds it: no fire time creates a job."""
        return self.paused_at is not None

    def replace(self, **changes: Any) -> Schedule:
        """A copy of this record with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: ISO 8601 timestamps, ``every`` in seconds."""
        return {
            "name": self.name,
            "type": self.type,
            "context": dict(self.context),
            "cron": self.cron,
            "every": None if self.every is None else self.every.total_seconds(),
            "timezone": self.timezone,
            "dry_run": self.dry_run,
            "created_by": self.created_by,
            "misfire": self.misfire,
            "next_fire_at": _iso(self.next_fire_at),
            "last_fired_at": _iso(self.last_fired_at),
            "last_job_id": self.last_job_id,
            "last_error": self.last_error,
            "paused_at": _iso(self.paused_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }
