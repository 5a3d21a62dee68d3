"""How the dashboard shows a job: progress, rate, ETA, "stalled", the timeline. Pure: no I/O.

One function, ``job_view``, turns a record into the plain values both the
templates and the live updates (JSON) use, so a page and its updates never
disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..models import BatchJob, Status

#: A person's words for each status (the status is always shown as text).
STATUS_LABELS = {
    Status.CREATED: "Created",
    Status.PRE_PROCESSED: "Pre-processed",
    Status.CONFIRMED: "Confirmed",
    Status.PROCESSING: "Processing",
    Status.COMPLETED: "Completed",
    Status.CANCELED: "Canceled",
    Status.FAILED: "Failed",
    Status.PAUSED: "Paused",
}

#: The timeline's steps, in lifecycle order: (record field, label).
TIMELINE = (
    ("created_at", "Created"),
    ("pre_processed_at", "Pre-processed"),
    ("confirmed_at", "Confirmed"),
    ("processing_at", "Processing started"),
    ("paused_at", "Paused"),
    ("completed_at", "Completed"),
    ("canceled_at", "Canceled"),
    ("failed_at", "Failed"),
)

#: Which button each status offers (the service has the last word).
ACTIONS = {
    Status.CREATED: ("cancel",),
    Status.PRE_PROCESSED: ("confirm", "cancel"),
    Status.CONFIRMED: ("pause", "cancel"),
    Status.PROCESSING: ("pause", "cancel"),
    Status.COMPLETED: (),
    Status.CANCELED: (),
    Status.FAILED: ("retry",),
    Status.PAUSED: ("resume", "cancel"),
}


@dataclass(frozen=True)
class Progress:
    """Records done out of a count that may not be known yet."""

    done: int
    count: int | None

    @property
    def percent(self) -> int | None:
        """Whole percent done, ``None`` while the count is unknown."""
        if self.count is None:
            return None
        if self.count <= 0:
            return 100
        return min(100, int(self.done * 100 / self.count))

    @property
    def text(self) -> str:
        """``"3 of 10 (30%)"``, or ``"3 records"`` while the count is unknown."""
        if self.count is None:
            return f"{self.done:,} record{'' if self.done == 1 else 's'}"
        return f"{self.done:,} of {self.count:,} ({self.percent}%)"


def progress_of(job: BatchJob) -> Progress:
    """The job's progress from its ``result`` (``advancement_count`` of ``count``)."""
    done = job.result.get("advancement_count")
    count = job.result.get("count")
    return Progress(
        done=done if isinstance(done, int) and not isinstance(done, bool) else 0,
        count=count if isinstance(count, int) and not isinstance(count, bool) else None,
    )


def rate_of(job: BatchJob, progress: Progress) -> float | None:
    """Records per second since processing started, up to the last checkpoint."""
    started, last = job.processing_at, job.completed_at or job.updated_at
    if started is None or last is None or progress.done <= 0:
        return None
    seconds = (last - started).total_seconds()
    return progress.done / seconds if seconds > 0 else None


def duration_text(seconds: float) -> str:
    """``"45 s"``, ``"3 min"``, ``"2 h 5 min"``, ``"3 d"``: a rounded length of time."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d"


def size_text(size: int) -> str:
    """``"812 bytes"``, ``"1,234 bytes (1.2 KB)"``: a file's size, exact and rounded."""
    exact = f"{size:,} byte{'' if size == 1 else 's'}"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            return f"{exact} ({size / scale:.1f} {unit})"
    return exact


def age_text(then: datetime | None, now: datetime) -> str:
    """``"5 min ago"``: how long ago ``then`` was."""
    if then is None:
        return "-"
    seconds = (now - then).total_seconds()
    return "just now" if seconds < 1 else f"{duration_text(seconds)} ago"


def is_stalled(job: BatchJob, now: datetime, lease_seconds: float) -> bool:
    """A processing job whose last checkpoint is older than its lease."""
    last = job.updated_at or job.processing_at
    return (
        job.status == Status.PROCESSING
        and last is not None
        and (now - last).total_seconds() > lease_seconds
    )


def job_view(job: BatchJob, now: datetime, lease_seconds: float) -> dict[str, Any]:
    """The values a page shows of ``job``, JSON-ready (live updates send exactly this)."""
    progress = progress_of(job)
    rate = rate_of(job, progress)
    eta = None
    if job.status == Status.PROCESSING and rate and progress.count is not None:
        eta = duration_text(max(0, progress.count - progress.done) / rate)
    # The bar: indeterminate only while a job that has no count yet is moving.
    bar: tuple[int, int | None]
    if progress.count is not None:
        bar = (progress.count or 1, progress.done if progress.count else 1)
    elif job.is_resting:
        bar = (1, 1 if job.status == Status.COMPLETED else 0)
    else:
        bar = (1, None)
    errors = job.result.get("errors")
    error_count = job.result.get("error_count")
    if not isinstance(error_count, int):
        error_count = len(errors) if isinstance(errors, list) else 0
    return {
        "id": job.id,
        "type": job.type,
        "status": job.status.value,
        "status_label": STATUS_LABELS[job.status],
        "resting": job.is_resting,
        "dry_run": job.dry_run,
        "created_by": job.created_by,
        "done": progress.done,
        "count": progress.count,
        "percent": progress.percent,
        "progress_text": progress.text,
        "bar_max": bar[0],
        "bar_value": bar[1],
        "rate_text": f"{rate:,.1f} records/s" if rate else "-",
        "eta_text": eta or "-",
        "stalled": is_stalled(job, now, lease_seconds),
        "error_count": error_count,
        "actions": list(ACTIONS[job.status]),
        "updated_at": job.updated_at.isoformat() if job.updated_at else None,
        "timeline": [
            {"field": name, "label": label, "at": getattr(job, name).isoformat()}
            for name, label in TIMELINE
            if getattr(job, name) is not None
        ],
    }
