"""Waiting for a job, or running one, in the calling thread, until it rests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .. import signals
from ..errors import NotFoundError
from ..models import BatchJob
from ..runner import JobRunner

#: How often ``wait`` looks at the store when no local event wakes it.
WAIT_POLL_SECONDS = 0.05


@contextmanager
def _receiving(sender: object, events: list[str], receiver: Callable[..., None]) -> Iterator[None]:
    """While it lasts, ``receiver`` gets ``sender``'s ``events``."""
    receivers = [signals.signal_for(event) for event in events]
    for signal in receivers:
        signal.connect(receiver, sender=sender)
    try:
        yield
    finally:
        for signal in receivers:
            signal.disconnect(receiver, sender=sender)


def wait_until_resting(
    sender: object, retrieve: Callable[[str], BatchJob], id: str, timeout: float | None
) -> BatchJob:
    """Job ``id`` once it rests, looking again at each of ``sender``'s events for it
    (another process's progress: every ``WAIT_POLL_SECONDS``); ``TimeoutError``."""
    changed = threading.Event()

    def on_event(sender: Any, *, job: BatchJob, **extra: Any) -> None:
        if job.id == id:
            changed.set()

    events = [event for event in signals.EVENTS if event != "batch.updated"]
    with _receiving(sender, events, on_event):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            changed.clear()
            job = retrieve(id)
            if job.is_resting:
                return job
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"batch job {id} is still {job.status.value} after {timeout} seconds"
                )
            pause = WAIT_POLL_SECONDS if remaining is None else min(remaining, WAIT_POLL_SECONDS)
            changed.wait(pause)


def run_until_resting(
    sender: object,
    runner: JobRunner,
    id: str,
    on_progress: Callable[[BatchJob], object] | None,
) -> BatchJob:
    """Run job ``id`` with ``runner`` (made for this run: it is closed after) until it
    rests or the runner's stop is set; ``on_progress(job)`` after each of ``sender``'s
    commits for it, and as it waits (see ``BatchJobs.run``)."""

    def progress(sender: Any, *, job: BatchJob, **extra: Any) -> None:
        if job.id == id and on_progress is not None:
            on_progress(job)

    try:
        with _receiving(sender, list(signals.EVENTS), progress):
            job = runner.run_job(id, on_wait=on_progress)
    finally:
        runner.close()  # a lease it left (interrupted mid-chunk) keeps it open
    if job is None:
        raise NotFoundError.for_id(id)
    return job
