"""The background scheduler: APScheduler paces the poll and the heartbeat; a pool runs the work.

Our table stays the source of truth for claims; APScheduler's own job store
only ever holds this process's two timers and never sees a batch job. (Work
is not submitted as one-off APScheduler jobs: APScheduler 3 removes a run
one-off job from its store, and a shutdown racing that removal kills its
thread with ``JobLookupError``.) Work runs
in "drainers": a drainer claims and runs jobs one after another until none
is runnable, so a busy queue costs no scheduling hop per job. At most
``concurrency`` drainers run at once; when every one of them has been on its
job for a while (``PRE_LANE_AFTER``), one more lane only pre-processes new
jobs, so a dry-run preview never waits behind long exports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from apscheduler.schedulers.background import BackgroundScheduler

from .errors import StoreError
from .models import Status
from .runner import JobRunner

__all__ = ["DatabaseOutage", "Scheduler"]

log = logging.getLogger("batchjobs.scheduler")

#: The pre-processing lane opens once every worker has been on its job this long.
PRE_LANE_AFTER = 0.25
#: After the database failed, workers look again after this many seconds, doubling...
OUTAGE_FIRST = 0.5
#: ...up to this many.
OUTAGE_MAX = 30.0
#: Seconds between two prunings of the events past their retention.
PRUNE_EVENTS_EVERY = 300.0


class DatabaseOutage:
    """Whether the workers' database is failing: a backoff, and one log line per outage."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: The last error while the outage lasts, else ``None``.
        self.error: StoreError | None = None
        #: When the outage began (``clock``), while it lasts.
        self.since = 0.0
        #: How many outages there were, and how many failed calls in all.
        self.count = 0
        self.failures = 0
        self._delay = 0.0
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def failed(self, error: StoreError) -> None:
        """A database call failed: back off (longer each time) and say so, once."""
        with self._lock:
            first = self.error is None
            now = self.clock()
            self.failures += 1
            if first:
                self.count += 1
                self.since = now
                self._delay = OUTAGE_FIRST
            else:
                self._delay = min(self._delay * 2, OUTAGE_MAX)
            self.error = error
            self._retry_at = now + self._delay
        if first:
            log.warning("%s; the workers retry with a backoff until it works", error.message)

    def recovered(self) -> None:
        """A database call worked: the outage, if any, is over (one line says so)."""
        if self.error is None:
            return
        with self._lock:
            if self.error is None:
                return
            where = self.error.location
            self.error = None
            lasted = self.clock() - self.since
        log.warning("the database %s works again, after %.1f s; the workers go on", where, lasted)

    def backing_off(self) -> bool:
        """Whether the next look must wait (an outage, and its backoff not over)."""
        return self.error is not None and self.clock() < self._retry_at


class Scheduler:
    """Runs a runner's jobs in background threads until ``shutdown``."""

    def __init__(
        self,
        runner: JobRunner,
        *,
        concurrency: int = 2,
        poll_interval: float = 1.0,
        fire_schedules: Callable[[], object] | None = None,
        prune_events: Callable[[], object] | None = None,
    ) -> None:
        self.runner = runner
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        #: Fires the recurring jobs that are due: at start, then every poll.
        self.fire_schedules = fire_schedules
        #: Deletes the events past their retention: every ``PRUNE_EVENTS_EVERY`` seconds.
        self.prune_events = prune_events
        self._lock = threading.Lock()
        self._drainers = 0
        self._pre_lane_busy = False
        self._wakes = 0
        self._started = False
        self._aps: BackgroundScheduler | None = None
        self._pool: ThreadPoolExecutor | None = None
        #: The database's failures, as the workers met them.
        self.outage = DatabaseOutage()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start polling, the heartbeat, and the worker threads."""
        if self._started:
            return
        self.runner.stopping.clear()
        self._pool = ThreadPoolExecutor(self.concurrency + 1, thread_name_prefix="batchjobs-worker")
        aps = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        aps.add_job(self.wake, "interval", seconds=self.poll_interval, id="poll")
        heartbeat = max(self.runner.lease.total_seconds() / 3, 0.05)
        aps.add_job(self._heartbeat, "interval", seconds=heartbeat, id="heartbeat")
        if self.fire_schedules is not None:
            aps.add_job(self._fire, "interval", seconds=self.poll_interval, id="schedules")
        if self.prune_events is not None:
            # First a while after start: a burst of starting workers prunes nothing at once.
            aps.add_job(self._prune, "interval", seconds=PRUNE_EVENTS_EVERY, id="events")
        aps.start()
        self._aps = aps
        self._started = True
        self.runner.on_runnable = self.wake
        self._fire()  # schedules due while no worker ran: now, not a poll later
        self.wake()

    def shutdown(self, wait: bool = True) -> None:
        """Stop claiming; running jobs checkpoint and release their lease at their next chunk.

        With ``wait``, returns once they have (``join``); without, at once.
        """
        if not self._started or self._aps is None:
            return
        self.runner.on_runnable = None
        with self._lock:
            self._started = False
        self.runner.stopping.set()
        self._aps.shutdown(wait=wait)
        self._aps = None
        assert self._pool is not None
        self._pool.shutdown(wait=False)
        if wait:
            self.join()

    def join(self) -> None:
        """Wait until the workers of a scheduler that was shut down have stopped.

        Then every lease left is given back (unless a job still runs here in
        another thread): a job is never left leased to a process that no longer
        runs it; and the runner no longer stops its jobs
        (``run_until_idle`` runs them in the calling thread).
        """
        if self._pool is None:
            return
        self._pool.shutdown(wait=True)
        self._pool = None
        if not self._started:
            self.runner.stopping.clear()
        try:
            self.runner.release_all()
        except StoreError as error:
            if self.outage.error is None:  # else the outage was reported already
                log.warning("could not give back the leases left (%s); they expire", error.message)

    # -- dispatch --------------------------------------------------------------

    def wake(self) -> None:
        """Look for runnable jobs now instead of at the next poll."""
        if self.outage.backing_off():
            return
        with self._lock:
            if not self._started:
                return
            self._wakes += 1
            if self._drainers < self.concurrency:
                self._drainers += 1
                lane = "drain"
            elif not self._pre_lane_busy:
                self._pre_lane_busy = True
                lane = "pre_process"
            else:
                return
            assert self._pool is not None
            self._pool.submit(self._drain, lane)

    def _widen(self) -> None:
        """A drainer found more jobs than it took at first: start another, if there is
        room (one wake-up for many jobs, such as a batch created at once, starts one)."""
        if self.outage.backing_off():
            return
        with self._lock:
            if not self._started or self._drainers >= self.concurrency:
                return
            self._drainers += 1
            assert self._pool is not None
            self._pool.submit(self._drain, "drain")

    def _pre_lane_due(self) -> bool:
        """Whether every worker has been on its job for ``PRE_LANE_AFTER`` (waits that long).

        In a stream of short jobs the workers reach a new job first anyway, and
        pre-processing it in a lane of its own would cost it one more commit.
        """
        newest = self.runner.newest_start()
        if newest is None:
            return False
        wait = newest + PRE_LANE_AFTER - time.monotonic()
        if wait > 0 and self.runner.stopping.wait(wait):
            return False
        return self.runner.newest_start() == newest

    def _drain(self, lane: str) -> None:
        pre_only = lane == "pre_process"
        runner = self.runner
        if pre_only and not self._pre_lane_due():
            with self._lock:
                self._release_lane(pre_only)
            return
        try:
            while not runner.stopping.is_set():
                with self._lock:
                    seen = self._wakes
                if pre_only:
                    ran = runner.drain(statuses=[Status.CREATED], stop_after_pre_process=True)
                else:
                    ran = runner.drain(on_stream=self._widen)
                self.outage.recovered()
                if ran:
                    continue
                with self._lock:
                    # A wake-up that came while we looked may have found us busy: look again.
                    if self._wakes != seen and self._started:
                        continue
                    self._release_lane(pre_only)
                    return
        except StoreError as error:
            self.outage.failed(error)  # the next poll after the backoff looks again
        except Exception:
            log.exception("worker stopped by an unexpected error")
        with self._lock:
            self._release_lane(pre_only)

    def _release_lane(self, pre_only: bool) -> None:
        if pre_only:
            self._pre_lane_busy = False
        else:
            self._drainers -= 1

    def _fire(self) -> None:
        if self.fire_schedules is None or self.outage.backing_off():
            return
        try:
            self.fire_schedules()
        except StoreError as error:
            self.outage.failed(error)
        except Exception:
            log.exception("could not fire the due schedules")

    def _prune(self) -> None:
        if self.prune_events is None:
            return
        try:
            self.prune_events()
        except Exception:
            log.exception("could not prune the old events")

    def _heartbeat(self) -> None:
        try:
            self.runner.renew_leases()
        except StoreError as error:
            self.outage.failed(error)
        except Exception:
            log.exception("could not renew leases")
