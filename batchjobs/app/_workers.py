"""A ``BatchJobs``'s background workers: the scheduler, and what wakes it up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..runner import JobRunner
from ..scheduler import Scheduler
from ..service import BatchJobService
from ..store import Store
from ..strategy import StrategyRegistry

if TYPE_CHECKING:
    from ..pubsub import RedisMirror

#: How often ``wait_until_idle`` counts the jobs left.
IDLE_POLL_SECONDS = 0.1
#: Seconds of database failures after which ``wait_until_idle`` gives up.
DEFAULT_GIVE_UP_AFTER = 3.0


class Workers:
    """Runs ``runner``'s jobs in background threads, from ``start`` to ``shutdown``.

    A ``Scheduler`` (APScheduler) polls for jobs, and is woken at once when
    this process makes a job runnable (``service``), when another process
    does (PostgreSQL's ``NOTIFY``; Redis, through ``mirror``). Each ``start``
    after a ``shutdown`` makes a new scheduler.
    """

    def __init__(
        self,
        runner: JobRunner,
        *,
        store: Store,
        registry: StrategyRegistry,
        service: BatchJobService,
        mirror: RedisMirror | None,
        fire_schedules: Callable[[], object],
    ) -> None:
        self.runner = runner
        self.store = store
        self.registry = registry
        self.service = service
        self.mirror = mirror
        self.fire_schedules = fire_schedules
        #: The running scheduler (``None`` when stopped).
        self.scheduler: Scheduler | None = None
        #: Schedulers shut down without waiting, whose workers may still be handing over.
        self._stopping: list[Scheduler] = []
        self._stop_listening: Callable[[], None] | None = None

    def start(
        self,
        *,
        concurrency: int,
        poll_interval: float,
        prune_events: Callable[[], object] | None,
    ) -> None:
        """Start the scheduler (a new one unless it runs) and its wake-ups."""
        if self.scheduler is None:
            self.scheduler = Scheduler(
                self.runner,
                concurrency=concurrency,
                poll_interval=poll_interval,
                fire_schedules=self.fire_schedules,
                prune_events=prune_events,
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
        """Stop the wake-ups and the scheduler; with ``wait``, until its workers
        (and those of earlier shutdowns without ``wait``) handed their jobs over."""
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
            self.join_stopping()

    def join_stopping(self) -> None:
        """Wait for the workers of the schedulers shut down without waiting."""
        while self._stopping:
            self._stopping.pop().join()

    def wait_until_idle(
        self,
        timeout: float | None = None,
        *,
        stop: threading.Event | None = None,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    ) -> bool:
        """Wait until every job of a registered type rests; True then, False if
        ``stop`` was set first (see ``BatchJobs.wait_until_idle``)."""
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
