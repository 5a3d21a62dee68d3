"""The façade's calls that each part answers: one job's lifecycle, recurring jobs, events.

``BatchJobs`` takes them from these classes, each of which declares the part
it hands its calls to (``service``, ``recurring``, the outbox's store and
event hub); ``BatchJobs.__init__`` builds the parts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from .. import signals
from ..events import DEFAULT_READ_LIMIT, EventFeed, prune_events
from ..models import BatchJob, Event, Pruned, Schedule
from ..schedules import RecurringJobs
from ..service import BatchJobService
from ..store import Store
from ._event_hub import EventHub


class JobCalls:
    """The calls on one job's lifecycle, answered by the ``service``."""

    service: BatchJobService

    def create(
        self,
        type: str,
        context: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
        created_by: str | None = None,
        key: str | None = None,
    ) -> BatchJob:
        """Create a job of a registered ``type``; returns the ``created`` record.

        ``key`` names the job for its creator (``created_by``), as an
        idempotency key: if a job of theirs has that key already, that job is
        returned as it is, whatever its status, and nothing is created (a
        script run again resumes its job: ``key="nightly-2026-12-01"``).
        ``InvalidDataError`` if that job is of another type.
        """
        return self.service.create(type, context, dry_run=dry_run, created_by=created_by, key=key)

    def retrieve(self, id: str) -> BatchJob:
        """The job ``id``; ``NotFoundError`` if there is none."""
        return self.service.retrieve(id)

    def list_and_count(
        self, *, limit: int = 20, offset: int = 0, order: str = "-created_at", **filters: Any
    ) -> tuple[list[BatchJob], int]:
        """A page of jobs and how many match.

        Filters: ``status``, ``type``, ``created_by`` (a value or a list); any
        ``*_at`` field with ``{"gt"|"gte"|"lt"|"lte": datetime or ISO}`` or
        ``None`` for "is null". ``order`` is a field, ``-`` for descending.
        """
        return self.service.list_and_count(limit=limit, offset=offset, order=order, **filters)

    def update(
        self,
        id: str,
        *,
        context: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> BatchJob:
        """Merge ``context`` and ``result`` into job ``id`` (top-level keys)."""
        return self.service.update(id, context=context, result=result)

    def confirm(self, id: str) -> BatchJob:
        """Confirm a pre-processed dry-run job so that it is processed."""
        return self.service.confirm(id)

    def cancel(self, id: str) -> BatchJob:
        """Cancel job ``id``; a running job stops at its next checkpoint."""
        return self.service.cancel(id)

    def retry(self, id: str) -> BatchJob:
        """Resume a failed job from its checkpoint."""
        return self.service.retry(id)

    def pause(self, id: str) -> BatchJob:
        """Pause a confirmed or processing job until ``resume``.

        A worker running it commits the checkpoint of the chunk in progress,
        stops there and gives the job up; ``paused`` rests (``wait`` returns).
        """
        return self.service.pause(id)

    def resume(self, id: str) -> BatchJob:
        """Send a paused job back to the workers, to continue from its checkpoint."""
        return self.service.resume(id)

    def prune(
        self,
        older_than: timedelta,
        *,
        statuses: list[str] | None = None,
        dry_run: bool = False,
    ) -> Pruned:
        """Delete the resting jobs unchanged (``updated_at``) for longer than ``older_than``,
        and their files; ``statuses`` limits it to some resting statuses. Active jobs
        are never pruned. ``dry_run``: delete nothing, say what would go."""
        return self.service.prune(older_than, statuses=statuses, dry_run=dry_run)


class ScheduleCalls:
    """The calls on recurring jobs, answered by ``recurring``."""

    recurring: RecurringJobs

    def schedule(
        self,
        name: str,
        type: str,
        context: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        timezone: str = "UTC",
        dry_run: bool = False,
        created_by: str | None = None,
        misfire: str = "coalesce",
    ) -> Schedule:
        """Store a recurring job: each fire time creates one job of ``type``.

        ``cron`` is a 5-field crontab read in ``timezone`` (``"0 2 * * *"``);
        ``every`` an interval (a ``timedelta`` or seconds). Each job's context is
        ``context`` plus ``scheduled_for``, its fire time (ISO 8601, in
        ``timezone``). Fire times missed while no worker ran: ``misfire=
        "coalesce"`` one job for the latest, ``"skip"`` none, ``"all"`` one each
        (100 at most). Declaring ``name`` again replaces its definition.
        Workers started with ``start()`` fire schedules, each fire once across
        every process sharing the database.
        """
        return self.recurring.schedule(
            name,
            type,
            context,
            cron=cron,
            every=every,
            timezone=timezone,
            dry_run=dry_run,
            created_by=created_by,
            misfire=misfire,
        )

    def schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        return self.recurring.list_schedules()

    def unschedule(self, name: str) -> Schedule:
        """Remove the schedule ``name`` (the jobs it made stay); ``NotFoundError`` if none."""
        return self.recurring.remove(name)

    def pause_schedule(self, name: str) -> Schedule:
        """Stop the schedule ``name`` from firing until ``resume_schedule``."""
        return self.recurring.pause(name)

    def resume_schedule(self, name: str) -> Schedule:
        """Let a paused schedule fire again from its next fire time (none made up)."""
        return self.recurring.resume(name)

    def fire_schedules(self, now: datetime | None = None) -> list[BatchJob]:
        """Create the jobs of every schedule due at ``now``; returns them.

        The step the workers take every ``poll_interval``; call it yourself
        to fire schedules without ``start()`` (scripts, tests).
        """
        return self.recurring.fire_due(now)


class EventCalls:
    """The calls on the events: the outbox of ``store``, and ``_events``, where this
    instance's committed events go (its feeds, the mirror, the blinker receivers)."""

    store: Store
    poll_interval: float
    event_retention: timedelta | None
    _events: EventHub

    def events(
        self,
        after: int | None = None,
        *,
        limit: int = DEFAULT_READ_LIMIT,
        job_id: str | None = None,
        created_by: str | None = None,
    ) -> list[Event]:
        """Up to ``limit`` events committed after seq ``after``, oldest first.

        ``after=None`` reads from the oldest event kept. ``job_id`` or
        ``created_by`` keep only one job's, or one user's jobs', events.
        ``EventsPrunedError`` (``.oldest``: the oldest seq kept) if events
        after ``after`` were pruned. Each ``Event`` has ``seq``, ``event``,
        ``job`` (the record as of the event) and ``at``.
        """
        return self.store.events(after=after, limit=limit, job_id=job_id, created_by=created_by)

    def follow(
        self,
        after: int | None = None,
        *,
        job_id: str | None = None,
        created_by: str | None = None,
    ) -> EventFeed:
        """The events committed after seq ``after`` and from now on: an iterator that waits.

        ``after=None``: only events committed from now on. Wakes at once on
        this process's commits, and on other processes' through Redis (with
        ``redis_url``); otherwise it looks every ``poll_interval``. Ends when
        this ``BatchJobs`` closes. ``feed.read(timeout)`` is one step.
        """
        return self._events.follow(
            after, job_id=job_id, created_by=created_by, poll_interval=self.poll_interval
        )

    def last_seq(self) -> int:
        """The seq of the last event committed (0 before the first): "now" for a reader."""
        return self.store.last_seq()

    def stop_following(self) -> None:
        """End every ``follow`` feed of this instance, at once and for good (``close`` does)."""
        self._events.close()

    def prune_events(self, now: datetime | None = None) -> int:
        """Delete the events older than ``event_retention``, in small batches; how many.

        The workers started by ``start()`` do it every few minutes.
        """
        if self.event_retention is None:
            return 0
        return prune_events(self.store, self.event_retention, now)

    def subscribe(self, event: str, fn: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """Call ``fn(sender, job=..., seq=...)`` after every ``event`` of this instance's jobs.

        Usable as a decorator: ``@jobs.subscribe("batch.completed")``.
        """
        signal = signals.signal_for(event)

        def connect(fn: Callable[..., Any]) -> Callable[..., Any]:
            signal.connect(fn, sender=self, weak=False)
            return fn

        return connect if fn is None else connect(fn)
