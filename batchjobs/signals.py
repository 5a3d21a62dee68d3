"""One blinker signal per batch job event, and the guarded ``emit``.

Receivers get ``sender=<BatchJobs>``, ``job=<BatchJob>`` and ``seq=<int>`` (the
event's place in the outbox: ``BatchJobs.events(after=seq)`` reads what came
after it); events mirrored in from another process also carry ``remote=True``.
A receiver that raises is logged and never breaks the job that emitted the event.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import Namespace, Signal

from .models import BatchJob, Status, status_event

__all__ = [
    "EVENTS",
    "batch_canceled",
    "batch_completed",
    "batch_confirmed",
    "batch_created",
    "batch_failed",
    "batch_paused",
    "batch_pre_processed",
    "batch_processing",
    "batch_updated",
    "emit",
    "event_for_status",
    "has_receivers",
    "signal_for",
]

log = logging.getLogger("batchjobs.signals")

namespace = Namespace()

batch_created = namespace.signal("batch.created", doc="A batch job was created.")
batch_updated = namespace.signal(
    "batch.updated", doc="A batch job's context or result changed (checkpoints included)."
)
batch_pre_processed = namespace.signal("batch.pre_processed", doc="Pre-processing finished.")
batch_confirmed = namespace.signal("batch.confirmed", doc="The job was confirmed for processing.")
batch_processing = namespace.signal("batch.processing", doc="Processing started.")
batch_completed = namespace.signal("batch.completed", doc="Processing finished.")
batch_canceled = namespace.signal("batch.canceled", doc="The job was canceled.")
batch_failed = namespace.signal("batch.failed", doc="The job failed.")
batch_paused = namespace.signal(
    "batch.paused", doc="The job was paused (its worker stops at its next checkpoint)."
)

#: Every event name, in lifecycle order.
EVENTS = (
    "batch.created",
    "batch.updated",
    "batch.pre_processed",
    "batch.confirmed",
    "batch.processing",
    "batch.completed",
    "batch.canceled",
    "batch.failed",
    "batch.paused",
)


#: The signals by event name: a plain dict, read on every event.
_SIGNALS: dict[str, Signal] = {event: namespace.signal(event) for event in EVENTS}


def signal_for(event: str) -> Signal:
    """The signal named ``event`` (``"batch.completed"``…)."""
    try:
        return _SIGNALS[event]
    except KeyError:
        raise ValueError(f"unknown event {event!r}; events are: {', '.join(EVENTS)}") from None


def event_for_status(status: Status) -> str:
    """The event sent when a job enters ``status``."""
    return status_event(status)


def has_receivers(event: str, sender: Any) -> bool:
    """Whether anything listens to ``event`` from ``sender`` (to skip building a record)."""
    # May answer yes for a sender whose receivers are all gone (blinker keeps an
    # empty entry for it): that only costs building a record nobody gets.
    return _SIGNALS[event].has_receivers_for(sender)


def emit(event: str, sender: Any, job: BatchJob, **extra: Any) -> None:
    """Send ``event`` to its receivers, logging (never raising) their errors."""
    signal = _SIGNALS[event]
    if not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, job=job, **extra)
        except Exception:
            log.exception("receiver %r of %s failed for job %s", receiver, event, job.id)
