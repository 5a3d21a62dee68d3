"""The batch job record, its statuses, ids and the one clock. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import enum
import operator
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ulid import ULID

__all__ = [
    "ACTIVE_STATUSES",
    "RESTING_STATUSES",
    "TIMESTAMP_FIELDS",
    "UPDATED_EVENT",
    "BatchJob",
    "Pruned",
    "Event",
    "Schedule",
    "Status",
    "status_event",
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
#: The event a job entering each status sends (``batch.completed``...).
_STATUS_EVENTS = {status: f"batch.{status.value}" for status in Status}
#: The event of a change to a job's context or result (checkpoints included).
UPDATED_EVENT = "batch.updated"


def status_event(status: Status) -> str:
    """The name of the event sent when a job enters ``status``."""
    return _STATUS_EVENTS[status]


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


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, slots=True)
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

    @property
    def is_retryable(self) -> bool:
        """True for a failed job that ``retry`` may bring through: its failure was not
        a refusal of its input (``invalid_data``), which only a new job with fixed
        input gets past."""
        if self.status != Status.FAILED:
            return False
        errors = self.result.get("errors") or [{}]
        last = errors[-1] if isinstance(errors, list) and errors else {}
        return not (isinstance(last, dict) and last.get("code") == "invalid_data")

    def replace(self, **changes: Any) -> BatchJob:
        """A copy of this record with ``changes`` applied (as ``dataclasses.replace``)."""
        # By position: a checkpoint's events build one record per step, and
        # dataclasses.replace looks at every field's metadata each time.
        values = list(_job_values(self))
        for name, value in changes.items():
            index = _JOB_FIELD_INDEX.get(name)
            if index is None:
                raise TypeError(f"replace() got an unexpected keyword argument {name!r}")
            values[index] = value
        return BatchJob(*values)

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


_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(BatchJob))
_JOB_FIELD_INDEX = {name: i for i, name in enumerate(_JOB_FIELDS)}
_job_values = operator.attrgetter(*_JOB_FIELDS)


@dataclass(frozen=True)
class Pruned:
    """What ``BatchJobs.prune`` deleted (with ``dry_run``: would delete)."""

    jobs: tuple[BatchJob, ...] = ()
    #: Keys of the jobs' files deleted with them.
    files: tuple[str, ...] = ()
    #: Files left in place, each with why (a key the file store refuses).
    kept_files: tuple[tuple[str, str], ...] = ()
    dry_run: bool = False


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


@dataclass(frozen=True, slots=True)
class Event:
    """One batch job event as committed: its place in the outbox and the job as it was.

    ``seq`` numbers the events of one database in the order they were
    committed, one more per event; ``job`` is the record as of this event
    (its ``result`` as committed); ``at`` is when the event happened (the
    status's timestamp, or ``updated_at`` for ``batch.updated``); ``origin``
    names the ``BatchJobs`` that committed it, when it has a name.
    """

    seq: int
    event: str
    job: BatchJob
    at: datetime
    origin: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: ``{"seq", "event", "at", "batch_job"}``."""
        return {
            "seq": self.seq,
            "event": self.event,
            "at": self.at.isoformat(),
            "batch_job": self.job.to_dict(),
        }
