"""``BatchJobs``: the one object an application holds."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import signals
from .errors import NotFoundError
from .events import (
    DEFAULT_EVENT_RETENTION,
    DEFAULT_READ_LIMIT,
    EventFeed,
    EventNotifier,
    prune_events,
)
from .files import FileStore
from .models import BatchJob, Event, Pruned, Schedule
from .runner import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, JobRunner
from .scheduler import Scheduler
from .schedules import RecurringJobs
from .service import BatchJobService
from .store import open_store, sqlite_path
from .strategy import BatchJobStrategy, StrategyRegistry

if TYPE_CHECKING:
    from .pubsub import RedisMirror

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DB",
    "DEFAULT_FILES_DIR",
    "DEFAULT_POLL_INTERVAL",
    "BatchJobs",
]

DEFAULT_DB = "batchjobs.db"
#: The file store of a database that is not a file (PostgreSQL), in the working
#: directory. Workers on several machines need one they all see: pass ``files_dir``.
DEFAULT_FILES_DIR = "batchjobs-files"
DEFAULT_CONCURRENCY = 2
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_CHANNEL_PREFIX = "batchjobs"
#: How often ``wait`` looks at the store when no local event wakes it.
WAIT_POLL_SECONDS = 0.05
#: How often ``wait_until_idle`` counts the jobs left.
IDLE_POLL_SECONDS = 0.1
#: Seconds of database failures after which ``wait_until_idle`` gives up.
DEFAULT_GIVE_UP_AFTER = 3.0

StrategyT = TypeVar("StrategyT", bound="BatchJobStrategy | type[BatchJobStrategy]")


def _new_origin() -> str:
    """A name for a ``BatchJobs`` on its events and messages: host, pid, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _check_settings(**settings: Any) -> Any:
    """``ValueError`` for a setting out of range; returns the last one's value."""
    value = None
    for name, value in settings.items():
        if name in ("concurrency", "max_attempts"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return value


#: Every ``BatchJobs`` of this process, for the fork hook.
_EVERY: weakref.WeakSet[BatchJobs] = weakref.WeakSet()


class BatchJobs:
    """Batch jobs in one SQLite file (or a PostgreSQL database: ``BatchJobs("postgresql://…")``),
    run in the background of this process.

    >>> jobs = BatchJobs("app.db")
    >>> jobs.register(Shout)                     # a BatchJobStrategy
    >>> job = jobs.create("shout", {"words": ["a", "b"]})
    >>> jobs.start()                             # background workers
    >>> jobs.wait(job.id, timeout=10).status
    <Status.COMPLETED: 'completed'>
    >>> jobs.shutdown()

    Several ``BatchJobs`` (threads or processes, or machines on PostgreSQL) may
    share one database: a job is only ever run by one of them at a time, and a
    job left behind by a dead process is resumed from its last checkpoint.
    """

    def __init__(
        self,
        db: str | Path = DEFAULT_DB,
        *,
        redis_url: str | None = None,
        files_dir: str | Path | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        durability: str = "normal",
        channel_prefix: str = DEFAULT_CHANNEL_PREFIX,
        event_retention: timedelta | float | None = DEFAULT_EVENT_RETENTION,
    ) -> None:
        _check_settings(
            concurrency=concurrency,
            max_attempts=max_attempts,
            poll_interval=poll_interval,
            lease_seconds=lease_seconds,
        )
        if isinstance(event_retention, (int, float)) and not isinstance(event_retention, bool):
            event_retention = timedelta(seconds=event_retention)
        if event_retention is not None and (
            not isinstance(event_retention, timedelta) or event_retention <= timedelta(0)
        ):
            raise ValueError(
                "event_retention must be a positive timedelta or number of seconds, or None "
                f"(keep every event), not {event_retention!r}"
            )
        #: How long events are kept (``None``: for ever); the workers prune older ones.
        self.event_retention: timedelta | None = event_retention
        #: Names this instance: on its events (``Event.origin``) and its Redis messages.
        self.origin = _new_origin()
        #: The SQLite file (``None`` for another database).
        self.db_path = sqlite_path(db)
        self.redis_url = redis_url
        self.concurrency = concurrency
        self.poll_interval = float(poll_interval)
        #: Seconds a worker's claim on a job lasts without a checkpoint or heartbeat.
        self.lease_seconds = float(lease_seconds)
        self.channel_prefix = channel_prefix
        if files_dir is None:
            if self.db_path is None:
                files_dir = Path(DEFAULT_FILES_DIR)
            else:
                files_dir = self.db_path.with_name(f"{self.db_path.stem}-files")
        self.files = FileStore(files_dir)
        self.mirror: RedisMirror | None = None
        if redis_url:  # first: a malformed URL must not leave a database file behind
            from .pubsub import RedisMirror, check_url

            check_url(redis_url)
        self.store = open_store(db, durability=durability, concurrency=concurrency)
        self.store.origin = self.origin
        self._notifier = EventNotifier()
        #: Whether the listeners waking this process's feeds (Redis, NOTIFY) are on.
        self._watching = False
        self._unwatch: list[Callable[[], None]] = []
        self.store.on_events = self._committed
        if redis_url:
            self.mirror = RedisMirror(
                self.store, redis_url, prefix=channel_prefix, origin=self.origin
            )
        _EVERY.add(self)
        self.registry = StrategyRegistry()
        self.registry.load_entry_points()
        self.service = BatchJobService(self.store, self.registry, sender=self, files=self.files)
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = max_attempts
        self.runner = self._runner()
        self.service.on_canceled = self.runner.clean_up_canceled
        self.recurring = RecurringJobs(self.store, self.service, self.registry)
        self.scheduler: Scheduler | None = None
        #: Schedulers shut down without waiting, whose workers may still be handing over.
        self._stopping: list[Scheduler] = []
        self._stop_listening: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<BatchJobs {self.location!r}>"

    @property
    def location(self) -> str:
        """The database, for messages: its file, or its URL without credentials."""
        return self.store.location

    def _runner(self, stopping: threading.Event | None = None) -> JobRunner:
        return JobRunner(
            self.store,
            self.registry,
            sender=self,
            files=self.files,
            lease_seconds=self.lease_seconds,
            max_attempts=self.max_attempts,
            stopping=stopping,
        )

    def __enter__(self) -> BatchJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- strategies ----------------------------------------------------------

    def register(self, strategy: StrategyT) -> StrategyT:
        """Register a strategy class or instance; usable as a class decorator.

        A strategy for a ``batch_type`` that is already registered replaces
        the earlier one.
        """
        return self.registry.register(strategy)

    def strategy(self, batch_type: str) -> BatchJobStrategy:
        """The strategy registered for ``batch_type``."""
        return self.registry.get(batch_type)

    # -- lifecycle -------------------------------------------------------------

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
        return self.service.create(
            type, context, dry_run=dry_run, created_by=created_by, key=key
        )

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

    # -- recurring jobs ----------------------------------------------------------

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

    # -- running ---------------------------------------------------------------

    def start(
        self, *, concurrency: int | None = None, poll_interval: float | None = None
    ) -> None:
        """Run jobs, and fire due schedules, in background threads until ``shutdown``.

        ``concurrency`` and ``poll_interval``, when given, replace this
        instance's settings from now on (``batchjobs worker --concurrency``).
        """
        self._join_stopping()
        if concurrency is not None or poll_interval is not None:
            if self.scheduler is not None:
                raise RuntimeError("the workers run already: shutdown() before changing them")
            if concurrency is not None:
                self.concurrency = _check_settings(concurrency=concurrency)
                self.store.provision(self.concurrency)
            if poll_interval is not None:
                self.poll_interval = float(_check_settings(poll_interval=poll_interval))
        if self.scheduler is None:
            self.scheduler = Scheduler(
                self.runner,
                concurrency=self.concurrency,
                poll_interval=self.poll_interval,
                fire_schedules=self.recurring.fire_due,
                prune_events=self.prune_events if self.event_retention is not None else None,
            )
        self.scheduler.start()
        self.service.on_runnable = self.scheduler.wake
        if self._stop_listening is None:
            # PostgreSQL: a job made runnable by any process, on any machine.
            self._stop_listening = self.store.listen(self.scheduler.wake)
        if self.mirror is not None:
            self.mirror.start()  # also publishes what other processes left unpublished
            self.mirror.listen(self.scheduler.wake)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the background workers.

        Running jobs finish their current chunk, checkpoint and release their
        lease, so another process can resume them at once. With ``wait``
        (the default) this returns once they have; without, at once (``close``
        still waits for them before it closes the database).
        """
        if self.mirror is not None:
            self.mirror.stop_listening()
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        self.service.on_runnable = None
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=wait)
            if not wait:
                self._stopping.append(self.scheduler)
            self.scheduler = None
        if wait:
            self._join_stopping()

    def _join_stopping(self) -> None:
        while self._stopping:
            self._stopping.pop().join()

    def close(self) -> None:
        """Shut down (waiting for running jobs to hand over), end the event feeds, stop
        mirroring events, close the database connections."""
        self.shutdown()
        self.runner.close()
        self.stop_following()
        if self.mirror is not None:
            self.mirror.close()
        self.store.close()

    def run_until_idle(self, timeout: float | None = None) -> None:
        """Run jobs in the calling thread until every job of a registered type rests
        (after the workers of a ``shutdown(wait=False)`` stopped)."""
        self._join_stopping()
        self.runner.run_until_idle(timeout)

    def run_next(self, now: Any = None) -> BatchJob | None:
        """Claim and run one job in the calling thread; ``None`` if none was runnable."""
        self._join_stopping()
        return self.runner.run_next(now)

    def run(
        self,
        id: str,
        *,
        on_progress: Callable[[BatchJob], object] | None = None,
        stop: threading.Event | None = None,
    ) -> BatchJob:
        """Run job ``id`` in the calling thread until it rests; returns it.

        Claims it whenever it is runnable, waits while another worker holds it
        or a retry backs off, and renews its lease while a chunk runs long.
        ``on_progress(job)`` is called with the job after each of its commits,
        and as it waits. Setting ``stop`` (a signal handler, another thread)
        makes the job stop at its next checkpoint and hand over: it is then
        returned as it is (not resting), and any worker resumes it.
        """
        self.retrieve(id)
        runner = self._runner(stop)

        def progress(sender: Any, *, job: BatchJob, **extra: Any) -> None:
            if job.id == id and on_progress is not None:
                on_progress(job)

        receivers = [signals.signal_for(event) for event in signals.EVENTS]
        for signal in receivers:
            signal.connect(progress, sender=self)
        try:
            job = runner.run_job(id, on_wait=on_progress)
        finally:
            for signal in receivers:
                signal.disconnect(progress, sender=self)
            runner.close()  # a lease it left (interrupted mid-chunk) keeps it open
        if job is None:
            raise NotFoundError.for_id(id)
        return job

    def wait_until_idle(
        self,
        timeout: float | None = None,
        *,
        stop: threading.Event | None = None,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    ) -> bool:
        """While the background workers run (``start``), wait until every job of a
        registered type rests; True then, False if ``stop`` was set first.

        Raises the database's ``StoreError`` once the workers have met it for
        ``give_up_after`` seconds in a row (they cannot make progress: a
        read-only or unreachable database), ``TimeoutError`` past ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = stop or threading.Event()
        while True:
            count, _ = self.store.pending(self.registry.types)
            if count == 0:
                return True
            outage = None if self.scheduler is None else self.scheduler.outage
            if outage is not None and outage.error is not None:
                failing, since = outage.error, outage.since
                if time.monotonic() - since >= give_up_after:
                    raise failing
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{count} batch job(s) still active after {timeout} seconds")
            if pause.wait(IDLE_POLL_SECONDS):
                return False

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

    def wait(self, id: str, timeout: float | None = None) -> BatchJob:
        """Block until job ``id`` rests (pre-processed dry run, completed, canceled, failed).

        Returns the job; ``TimeoutError`` after ``timeout`` seconds.
        """
        changed = threading.Event()

        def on_event(sender: Any, *, job: BatchJob, **extra: Any) -> None:
            if job.id == id:
                changed.set()

        receivers = [signals.signal_for(e) for e in signals.EVENTS if e != "batch.updated"]
        for signal in receivers:
            signal.connect(on_event, sender=self)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                changed.clear()
                job = self.retrieve(id)
                if job.is_resting:
                    return job
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"batch job {id} is still {job.status.value} after {timeout} seconds"
                    )
                pause = (
                    WAIT_POLL_SECONDS if remaining is None else min(remaining, WAIT_POLL_SECONDS)
                )
                changed.wait(pause)
        finally:
            for signal in receivers:
                signal.disconnect(on_event, sender=self)

    # -- events ---------------------------------------------------------------

    def _committed(self, events: Sequence[Event]) -> None:
        """After a commit that wrote ``events``: wake the feeds and the mirror, then the
        receivers, in the committing thread, in seq order."""
        self._notifier.notify()
        if self.mirror is not None:
            self.mirror.wake(events)
        for event in events:
            signals.emit(event.event, self, event.job, seq=event.seq)

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
        if not self._watching:  # other processes' commits wake the feeds too
            self._watching = True
            stop = self.store.watch(self._notifier.notify)
            if stop is not None:
                self._unwatch.append(stop)
            if self.mirror is not None:
                self.mirror.watch(self._notifier.notify)
        return EventFeed(
            self.store,
            self._notifier,
            after=after,
            job_id=job_id,
            created_by=created_by,
            poll_interval=self.poll_interval,
        )

    def last_seq(self) -> int:
        """The seq of the last event committed (0 before the first): "now" for a reader."""
        return self.store.last_seq()

    def stop_following(self) -> None:
        """End every ``follow`` feed of this instance, at once and for good (``close`` does)."""
        self._notifier.close()
        while self._unwatch:
            self._unwatch.pop()()

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


def _after_fork() -> None:
    # A forked child is another process: its events and its hold on the mirror's
    # cursor must not pass for its parent's (the stores reopen their connections).
    for jobs in list(_EVERY):
        jobs.origin = jobs.store.origin = _new_origin()
        # The listeners waking the parent's feeds (Redis, NOTIFY) do not run here, and
        # stopping them is the parent's business: the child's first follow() starts its own.
        jobs._watching = False
        jobs._unwatch = []
        if jobs.mirror is not None:
            jobs.mirror.reset_after_fork(jobs.origin)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
