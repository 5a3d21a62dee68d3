"""``BatchJobs``: the façade, which hands each call to the part that does it."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..events import DEFAULT_EVENT_RETENTION
from ..files import FileStore
from ..models import BatchJob
from ..runner import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, JobRunner
from ..scheduler import Scheduler
from ..schedules import RecurringJobs
from ..service import BatchJobService
from ..store import open_store, sqlite_path
from ..strategy import BatchJobStrategy, StrategyRegistry
from ._calling_thread import run_until_resting, wait_until_resting
from ._calls import EventCalls, JobCalls, ScheduleCalls
from ._event_hub import EventHub
from ._settings import (
    DEFAULT_CHANNEL_PREFIX,
    DEFAULT_CONCURRENCY,
    DEFAULT_DB,
    DEFAULT_POLL_INTERVAL,
    check_retention,
    check_settings,
    default_files_dir,
    new_origin,
)
from ._workers import DEFAULT_GIVE_UP_AFTER, Workers

if TYPE_CHECKING:
    from ..pubsub import RedisMirror

StrategyT = TypeVar("StrategyT", bound="BatchJobStrategy | type[BatchJobStrategy]")

#: Every ``BatchJobs`` of this process, for the fork hook.
_EVERY: weakref.WeakSet[BatchJobs] = weakref.WeakSet()


class BatchJobs(JobCalls, ScheduleCalls, EventCalls):
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
        check_settings(
            concurrency=concurrency,
            max_attempts=max_attempts,
            poll_interval=poll_interval,
            lease_seconds=lease_seconds,
        )
        #: How long events are kept (``None``: for ever); the workers prune older ones.
        self.event_retention: timedelta | None = check_retention(event_retention)
        #: Names this instance: on its events (``Event.origin``) and its Redis messages.
        self.origin = new_origin()
        #: The SQLite file (``None`` for another database).
        self.db_path = sqlite_path(db)
        self.redis_url = redis_url
        self.concurrency = concurrency
        self.poll_interval = float(poll_interval)
        #: Seconds a worker's claim on a job lasts without a checkpoint or heartbeat.
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = max_attempts
        self.channel_prefix = channel_prefix
        if files_dir is None:
            files_dir = default_files_dir(self.db_path)
        self.files = FileStore(files_dir)
        if redis_url:  # first: a malformed URL must not leave a database file behind
            from ..pubsub import RedisMirror, check_url

            check_url(redis_url)
        self.store = open_store(db, durability=durability, concurrency=concurrency)
        self.store.origin = self.origin
        self.mirror: RedisMirror | None = None
        if redis_url:
            self.mirror = RedisMirror(
                self.store, redis_url, prefix=channel_prefix, origin=self.origin
            )
        self._events = EventHub(self, self.store, self.mirror)
        self.store.on_events = self._events.committed
        _EVERY.add(self)
        self.registry = StrategyRegistry()
        self.registry.load_entry_points()
        self.service = BatchJobService(self.store, self.registry, sender=self, files=self.files)
        self.runner = self._runner()
        self.service.on_canceled = self.runner.clean_up_canceled
        self.recurring = RecurringJobs(self.store, self.service, self.registry)
        self._workers = Workers(
            self.runner,
            store=self.store,
            registry=self.registry,
            service=self.service,
            mirror=self.mirror,
            fire_schedules=self.recurring.fire_due,
        )

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

    # -- running ---------------------------------------------------------------

    def start(self, *, concurrency: int | None = None, poll_interval: float | None = None) -> None:
        """Run jobs, and fire due schedules, in background threads until ``shutdown``.

        ``concurrency`` and ``poll_interval``, when given, replace this
        instance's settings from now on (``batchjobs worker --concurrency``).
        """
        self._workers.join_stopping()
        if concurrency is not None or poll_interval is not None:
            if self.scheduler is not None:
                raise RuntimeError("the workers run already: shutdown() before changing them")
            if concurrency is not None:
                self.concurrency = check_settings(concurrency=concurrency)
                self.store.provision(self.concurrency)
            if poll_interval is not None:
                self.poll_interval = float(check_settings(poll_interval=poll_interval))
        self._workers.start(
            concurrency=self.concurrency,
            poll_interval=self.poll_interval,
            prune_events=self.prune_events if self.event_retention is not None else None,
        )

    @property
    def scheduler(self) -> Scheduler | None:
        """The background workers' scheduler while they run (``start``), else ``None``."""
        return self._workers.scheduler

    def shutdown(self, wait: bool = True) -> None:
        """Stop the background workers.

        Running jobs finish their current chunk, checkpoint and release their
        lease, so another process can resume them at once. With ``wait``
        (the default) this returns once they have; without, at once (``close``
        still waits for them before it closes the database).
        """
        self._workers.shutdown(wait)

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
        self._workers.join_stopping()
        self.runner.run_until_idle(timeout)

    def run_next(self, now: Any = None) -> BatchJob | None:
        """Claim and run one job in the calling thread; ``None`` if none was runnable."""
        self._workers.join_stopping()
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
        return run_until_resting(self, self._runner(stop), id, on_progress)

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
        return self._workers.wait_until_idle(timeout, stop=stop, give_up_after=give_up_after)

    def wait(self, id: str, timeout: float | None = None) -> BatchJob:
        """Block until job ``id`` rests (pre-processed dry run, completed, canceled, failed).

        Returns the job; ``TimeoutError`` after ``timeout`` seconds.
        """
        return wait_until_resting(self, self.retrieve, id, timeout)

    def _reset_after_fork(self) -> None:
        """In a forked child: another process, so another name, on its events and its
        hold on the mirror's cursor (the stores reopen their own connections)."""
        self.origin = self.store.origin = new_origin()
        self._events.reset_after_fork()
        if self.mirror is not None:
            self.mirror.reset_after_fork(self.origin)


def _after_fork() -> None:
    for jobs in list(_EVERY):
        jobs._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
