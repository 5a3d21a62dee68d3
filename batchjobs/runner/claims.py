"""Claiming jobs and running them one after another, short ones in batches that share commits.

``JobRunner`` claims runnable jobs of its registered types under a lease and
runs each with a ``JobExecution``. ``drain`` claims short jobs several at a
time: the final checkpoints of a batch wait (``DEFERRED``), and one commit
writes them all, gives back what was not started and claims the next batch.
Whatever happens, every lease of a batch ends committed or given back: the
batch is settled in an ``except`` before the error goes on.

In a process forked after a runner was made, the runner takes a new name on
its leases and that process's presence, and holds none of the parent's
leases: two processes never hold leases under one name (each would take the
other's for its own, and a dead one's would not be seen as a dead holder's).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from ..errors import StoreError
from ..models import ACTIVE_STATUSES, BatchJob, Status, utcnow
from ..store import Checkpoint, Claim, ClaimRequest, Lease, Store
from ..strategy import StrategyRegistry
from .holders import Presence, this_process
from .job import DEFERRED, DirectSaver, JobExecution, RunContext, _Deferred
from .leases import Heartbeat, HeldLease, Leases, LeaseState

__all__ = ["CLAIM_BATCH", "DEFAULT_LEASE_SECONDS", "DEFAULT_MAX_ATTEMPTS", "SHORT_JOB", "JobRunner"]

log = logging.getLogger("batchjobs.runner")

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 5
#: Jobs ``drain`` claims in one commit at most: a commit's cost (on PostgreSQL two
#: round trips and a WAL flush) shared by up to this many short jobs.
CLAIM_BATCH = 32
#: A job that takes longer than this (seconds) is not short: the jobs claimed
#: with it are given back at once and the next claim is of one job.
SHORT_JOB = 0.025
#: How long (in units of ``SHORT_JOB``) the jobs of one batch take together at
#: most, as far as the last batch tells: the first job's end waits about that
#: long for its commit. Jobs of 5 ms go ten at a time, of 20 ms two.
BATCH_SPAN = 2
#: Seconds a drain goes on using the owners of live leases its first claim read
#: (``gone``), so that each batch's claim does not read them again: a process of
#: this host that dies during a long drain is found at most this much later.
OWNERS_FOR = 1.0
#: Seconds for which one read of the leases of the jobs waiting in a batch says which
#: of them may start: a job starts only if a read this recent found it still ours (its
#: lease, its status as claimed). Short jobs share a read; a job waits behind another
#: longer than this only behind a read of its own. The window is of the order of the
#: read's own round trip under load.
STILL_OURS_FOR = 0.002
#: Seconds a job of a batch runs without a checkpoint (one long chunk, a long
#: pre-processing) before the heartbeat commits the ends of the jobs done before it and
#: gives back those not started, rather than renewing them while it runs.
GIVE_BACK_AFTER = 0.5
#: Seconds ``run_until_idle`` waits between two looks when nothing is runnable.
IDLE_PAUSE = 0.05
IDLE_PAUSE_MAX = 0.5


def _next_limit(limit: int, longest: float) -> int:
    """How many jobs to claim after a batch of ``limit`` jobs, the longest of which
    took ``longest`` seconds: one if that is not short, else twice as many, up to
    ``CLAIM_BATCH``, and no more than fill ``BATCH_SPAN`` short jobs' time."""
    if longest > SHORT_JOB:
        return 1
    fits = int(BATCH_SPAN * SHORT_JOB / longest) if longest > 0 else CLAIM_BATCH
    return max(1, min(limit * 2, CLAIM_BATCH, fits))


class _Batch:
    """Jobs one ``drain`` claimed together, and the final checkpoints waiting for one commit.

    It is the ``Saver`` of the jobs it runs: a job's last checkpoint waits
    for the batch's commit; any other checkpoint takes the waiting ones with it.
    While a job runs long, the heartbeat starts that commit in a thread of its own
    (``give_back``): ``waiting``, ``deferred`` and the job running change under
    ``_lock``, and a commit never takes the job running (it is still the drain's).
    """

    def __init__(self, ctx: RunContext, request: Callable[[_Batch], ClaimRequest]) -> None:
        self.ctx = ctx
        self._request = request
        #: How many jobs the next claim takes: doubles while jobs are short.
        self.limit = 1
        #: Claimed, not started yet; given back when a job of the batch turns out long.
        self.waiting: list[tuple[Claim, HeldLease]] = []
        self.deferred: list[JobExecution] = []
        #: The last read of leases of this batch: when (monotonic), and what it found.
        self._seen: tuple[float, dict[Lease, Status | None]] = (0.0, {})
        #: The job running now, and since when (monotonic).
        self._running: tuple[JobExecution, float] | None = None
        #: How long the last two job runs took (seconds), the last one last.
        self._took = (0.0, 0.0)
        #: The thread of the last commit ``give_back`` started.
        self._flush: threading.Thread | None = None
        self._lock = threading.Lock()

    def hold(self, claims: list[Claim]) -> list[tuple[Claim, HeldLease]]:
        held = [(claim, self.ctx.leases.hold(claim.lease)) for claim in claims]
        with self._lock:
            self.waiting.extend(held)
        self._seen = (0.0, {})
        return held

    def run(self, execution: JobExecution, *, stop_after_pre_process: bool) -> None:
        """Run ``execution`` in the drain's thread (``give_back`` may commit the others)."""
        started = time.monotonic()
        with self._lock:
            self._running = (execution, started)
        try:
            execution.execute(stop_after_pre_process=stop_after_pre_process)
        finally:
            with self._lock:
                self._running = None
            self._took = (self._took[1], time.monotonic() - started)

    def give_back(self) -> None:
        """From the heartbeat's thread, once the job running has run ``GIVE_BACK_AFTER``
        seconds: commit the ends of the jobs done before it and give back the jobs not
        started, so that it holds up no one. The commit (and the receivers of its events)
        runs in a thread of its own, never holding up the heartbeat. Never raises."""
        with self._lock:
            running, flush = self._running, self._flush
            if running is None or time.monotonic() - running[1] < GIVE_BACK_AFTER:
                return
            if flush is not None and flush.is_alive():
                return
            self._flush = threading.Thread(
                target=self.settle, name="batchjobs-batch-commit", daemon=True
            )
            self._flush.start()

    def join(self) -> None:
        """Wait for the commit ``give_back`` started, if any (the drain's thread, at its end)."""
        flush = self._flush
        if flush is not None:
            flush.join()

    def holds(self, claim: Claim) -> Status | None:
        """The status of ``claim``'s job if its lease still holds it, as read at most
        ``STILL_OURS_FOR`` seconds ago; a read answers for every job still waiting, unless
        the jobs run longer than that (the last two did): its answers for the others would
        be too old by their turn. One slow job (a thread descheduled) changes nothing."""
        at, seen = self._seen
        if claim.lease in seen and time.monotonic() - at < STILL_OURS_FOR:
            return seen[claim.lease]
        leases = [claim.lease]
        if min(self._took) < STILL_OURS_FOR:
            with self._lock:
                leases += [waiting.lease for waiting, _ in self.waiting]
        at = time.monotonic()  # before the read: its age counts from its start
        self._seen = (at, dict(zip(leases, self.ctx.store.holding(leases), strict=True)))
        return self._seen[1][claim.lease]

    def take(self, claim: Claim, held: HeldLease, *, waited: bool) -> bool:
        """Take ``held`` out of the waiting jobs to run it; False if it was given back
        (with a long job's checkpoint, or by the heartbeat), or if it ``waited`` (it is
        not the first of its claim) and is no longer ours as claimed. Once out, its
        lease is given back if the look fails."""
        with self._lock:
            if not any(waiting is held for _, waiting in self.waiting):
                return False
            self.waiting = [(c, waiting) for c, waiting in self.waiting if waiting is not held]
        if not waited:
            return True
        try:
            return self._may_start(claim, held, self.holds(claim))
        except BaseException:
            self.ctx.leases.release([held])  # a no-op if its cleanup ran (and ended it)
            raise

    def _may_start(self, claim: Claim, held: HeldLease, status: Status | None) -> bool:
        """Whether a job that waited may start: ``status``, its job's as its lease was
        last read to hold it (``None``: it does not), is still as claimed."""
        if status == claim.job.status:
            return True
        ctx = self.ctx
        if status == Status.CANCELED:  # a cleanup, if its processing began (the store decides)
            now = utcnow()
            cleanup = ctx.store.claim_cleanup(
                claim.job.id,
                owner=ctx.owner,
                now=now,
                lease_until=now + ctx.lease,
                lease=claim.lease,
            )
            if cleanup is not None:  # run as a job of the batch: a long one holds up no one
                cleaning = JobExecution(ctx, cleanup, held, DirectSaver(ctx.store))
                self.run(cleaning, stop_after_pre_process=False)
                return False
        if status is None:
            ctx.leases.move(held, LeaseState.LOST)  # taken over, or gone
        else:
            ctx.leases.release([held])  # moved (canceled): give it back
        return False

    def save(
        self, execution: JobExecution, checkpoint: Checkpoint, *, ends: bool
    ) -> BatchJob | None | _Deferred:
        if not (self.deferred or self.waiting or ends):
            return self.ctx.store.save(checkpoint)
        if ends:
            with self._lock:
                self.deferred.append(execution)
            return DEFERRED
        _, stored = self.commit(claim_next=False, also=checkpoint)
        return stored

    def commit(
        self, *, claim_next: bool, also: Checkpoint | None = None
    ) -> tuple[list[Claim], BatchJob | None]:
        """One commit: the waiting checkpoints (and ``also``), the unstarted jobs given
        back, and with ``claim_next`` the next batch claimed. Returns the new claims
        and what ``also`` stored.

        If the commit fails, nothing of it happened: the finished jobs' runs are
        closed and their leases given back (another worker redoes their last
        chunk at once), the unstarted ones too, and the error goes on. If it succeeds
        but ending a run fails (a lost job's look at the store), every other run is
        still ended and the new claims are given back before the error goes on.
        """
        with self._lock:
            running = self._running[0] if self._running is not None else None
            deferred = [execution for execution in self.deferred if execution is not running]
            self.deferred = [execution for execution in self.deferred if execution is running]
            waiting, self.waiting = self.waiting, []
        checkpoints = [execution.waiting for execution in deferred]
        if also is not None:
            checkpoints.append(also)
        request = self._request(self) if claim_next else None
        if not checkpoints and not waiting and request is None:
            return [], None
        try:
            stored, claims = self.ctx.store.commit(
                [cp for cp in checkpoints if cp is not None],
                release=[held.lease for _, held in waiting],
                claim=request,
            )
        except BaseException:
            try:
                for execution in deferred:
                    execution.close()
            finally:
                self.ctx.leases.release(held for _, held in waiting)
            raise
        for _, held in waiting:
            self.ctx.leases.move(held, LeaseState.RELEASED)
        if waiting and self.ctx.on_runnable is not None:
            self.ctx.on_runnable()  # given back: another worker may run them now
        failed: BaseException | None = None
        for execution, result in zip(deferred, stored, strict=False):
            # Every run is ended, even if one fails to (a lost job's look at the store).
            try:
                assert execution.waiting is not None
                execution.committed(execution.waiting, result)
            except BaseException as error:
                failed = failed or error
            finally:
                execution.close()
        if failed is not None:  # the error goes on: the new claims are given back first
            self.ctx.leases.release([self.ctx.leases.hold(claim.lease) for claim in claims])
            raise failed
        return claims, (stored[-1] if also is not None else None)

    def settle(self) -> None:
        """Commit what waits and give back what was not started; never raises (logs)."""
        if not (self.deferred or self.waiting):
            return
        try:
            self.commit(claim_next=False)
        except Exception as error:
            message = error.message if isinstance(error, StoreError) else repr(error)
            log.error("could not commit the end of a batch of jobs: %s", message)


#: The runners of this process: each takes a new name in a forked child (``_after_fork``).
_runners: weakref.WeakSet[JobRunner] = weakref.WeakSet()


def _after_fork() -> None:
    for runner in list(_runners):
        runner._forked()


class _LeaseOwners:
    """``Store.lease_owners(now)``; ``cached``: as last read, unless ``OWNERS_FOR``
    seconds have passed since (or ``now`` is that far from the last one's)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: As last read: (monotonic time, as of, owners).
        self._seen: tuple[float, datetime, list[str]] | None = None
        self._thread = threading.local()  # several worker threads drain at once

    @property
    def from_cache(self) -> bool:
        """Whether this thread's last call answered from the cache, not the store."""
        return bool(getattr(self._thread, "from_cache", False))

    def __call__(self, now: datetime, *, cached: bool) -> list[str]:
        seen, clock = self._seen, time.monotonic()
        if (
            cached
            and seen is not None
            and clock - seen[0] < OWNERS_FOR
            and abs((now - seen[1]).total_seconds()) < OWNERS_FOR
        ):
            self._thread.from_cache = True
            return seen[2]
        self._thread.from_cache = False
        owners = self.store.lease_owners(now)
        self._seen = (clock, now, owners)
        return owners

    def first_claim(
        self,
        claim: Callable[[ClaimRequest], list[Claim]],
        request: Callable[[bool], ClaimRequest],
    ) -> list[Claim]:
        """A drain's first claim, made with the owners as last read (a job just created
        is claimed in one round trip); if it finds nothing, made again with them read
        now, since a process of this host that died since may have left a job."""
        claims = claim(request(True))
        if not claims and self.from_cache:
            claims = claim(request(False))
        return claims


class JobRunner:
    """Claims and runs jobs of registered types; one per ``BatchJobs``."""

    def __init__(
        self,
        store: Store,
        registry: StrategyRegistry,
        *,
        sender: Any = None,
        files: Any = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        owner: str | None = None,
        presence: Presence | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.lease = timedelta(seconds=lease_seconds)
        #: This process's sign of life on this host (``holders``).
        self.presence = presence or this_process()
        self._shared_presence = presence is None
        #: Names this runner on its leases: host, process, and a token of its own.
        self.owner = owner or self.presence.owner()
        self._present = False
        self._owners = _LeaseOwners(store)
        self.leases = Leases(store, self.lease)
        #: The batches being drained now (the heartbeat commits what waits behind a long job).
        self._batches: set[_Batch] = set()
        self.ctx = RunContext(
            store=store,
            registry=registry,
            leases=self.leases,
            owner=self.owner,
            sender=sender if sender is not None else self,
            files=files,
            max_attempts=max_attempts,
            stopping=stopping or threading.Event(),
        )
        _runners.add(self)

    def _forked(self) -> None:
        """In a forked child: a new name, this process's presence, no lease of the parent's."""
        # ``holders``'s fork hook ran first (imported first): this makes the child's own.
        self.presence = this_process() if self._shared_presence else self.presence.forked()
        self.owner = self.ctx.owner = self.presence.owner()
        self._present = False
        self.leases.forget()
        self._batches = set()

    @property
    def stopping(self) -> threading.Event:
        """Set to stop running jobs at their next checkpoint and hand them over."""
        return self.ctx.stopping

    @property
    def on_runnable(self) -> Callable[[], None] | None:
        """Called when this runner leaves a job for another worker (the scheduler wakes)."""
        return self.ctx.on_runnable

    @on_runnable.setter
    def on_runnable(self, callback: Callable[[], None] | None) -> None:
        self.ctx.on_runnable = callback

    @property
    def running(self) -> list[str]:
        """Ids of the jobs this runner is running now."""
        return self.leases.running()

    def newest_start(self) -> float | None:
        """When the most recently started of the jobs running here started (monotonic)."""
        return self.leases.newest_start()

    def renew_leases(self, now: datetime | None = None) -> int:
        """Extend the leases of every job held here (the heartbeat); returns how many.

        Then a batch whose job has run ``GIVE_BACK_AFTER`` commits the ends of the jobs
        done before it, and gives back the jobs not started."""
        self.presence.touch()
        renewed = self.leases.renew(now)
        for batch in list(self._batches):
            batch.give_back()
        return renewed

    def release_all(self) -> int:
        """Give up every lease this runner holds in the store (after its workers stopped),
        unless a job still runs here in another thread (a cleanup run by ``cancel``, a
        ``run_until_idle``): its lease is its own to end, and what the workers left
        expires by itself then."""
        if self.leases.live():
            return 0
        return self.store.release_all(self.owner)

    def close(self) -> None:
        """Say this runner is done (its workers stopped). Never raises.

        If it left no lease, its process may end without leaving a sign that
        it died; if it did (a run interrupted by ``KeyboardInterrupt`` or
        ``SystemExit``), that sign stays, so the lease is taken over, as
        after a crash, as soon as the process ends.
        """
        if not self._present:
            return
        self._present = False
        try:
            left = self.owner in self.store.lease_owners(utcnow())
        except StoreError:
            return
        if not left:
            self.presence.done()

    def gone(self, now: datetime, *, cached: bool = False) -> tuple[str, ...]:
        """Owners of live leases that are dead processes of this host (see ``OWNERS_FOR``)."""
        if not self._present:  # before the first claim: this process shows it lives
            self._present = True
            self.presence.hold()
        return self.presence.gone(self._owners(now, cached=cached))

    # -- claiming ----------------------------------------------------------------

    def _request(
        self,
        now: datetime,
        limit: int = 1,
        *,
        statuses: Iterable[Status] = ACTIVE_STATUSES,
        ids: Iterable[str] | None = None,
        cached: bool = False,
    ) -> ClaimRequest:
        statuses = tuple(statuses)
        return ClaimRequest(
            self.owner,
            tuple(self.registry.types),
            now,
            now + self.lease,
            statuses=statuses,
            ids=None if ids is None else tuple(ids),
            limit=limit,
            cleanups=statuses == ACTIVE_STATUSES,
            gone=self.gone(now, cached=cached),
        )

    def claim_next(
        self,
        now: datetime | None = None,
        *,
        statuses: Iterable[Status] = ACTIVE_STATUSES,
        ids: Iterable[str] | None = None,
    ) -> Claim | None:
        """Lease the oldest runnable job of a registered type (among ``ids``), or ``None``."""
        claims = self.store.claim(self._request(now or utcnow(), statuses=statuses, ids=ids))
        return claims[0] if claims else None

    def run_claim(self, claim: Claim, *, stop_after_pre_process: bool = False) -> BatchJob:
        """Run a claimed job until it rests or is handed over; returns it as last committed."""
        execution = JobExecution(
            self.ctx, claim, self.leases.hold(claim.lease), DirectSaver(self.store)
        )
        execution.execute(stop_after_pre_process=stop_after_pre_process)
        return execution.job

    def run_next(
        self,
        now: datetime | None = None,
        *,
        statuses: Iterable[Status] = ACTIVE_STATUSES,
        stop_after_pre_process: bool = False,
        ids: Iterable[str] | None = None,
    ) -> BatchJob | None:
        """Claim one runnable job and run it; ``None`` when nothing was runnable at ``now``."""
        claim = self.claim_next(now, statuses=statuses, ids=ids)
        if claim is None:
            return None
        return self.run_claim(claim, stop_after_pre_process=stop_after_pre_process)

    def clean_up_canceled(self, job: BatchJob, now: datetime | None = None) -> bool:
        """Run ``on_cancel`` for a canceled job if its cleanup is owed and nobody has it.

        A worker running the job cleans up at its next checkpoint; a job
        canceled while handed over, backing off or left by a dead worker is
        cleaned up by whoever takes the cleanup first (one guarded write):
        here, or any worker with its strategy. Returns whether it ran here.
        """
        if job.status != Status.CANCELED or job.type not in self.registry:
            return False
        now = now or utcnow()
        claim = self.store.claim_cleanup(
            job.id, owner=self.owner, now=now, lease_until=now + self.lease, gone=self.gone(now)
        )
        if claim is None:
            return False
        with Heartbeat(self.renew_leases, self.lease.total_seconds() / 3):  # a long on_cancel
            self.run_claim(claim)
        return True

    # -- draining ------------------------------------------------------------------

    def drain(
        self,
        now: datetime | None = None,
        *,
        statuses: Iterable[Status] = ACTIVE_STATUSES,
        stop_after_pre_process: bool = False,
        ids: Iterable[str] | None = None,
        on_stream: Callable[[], None] | None = None,
    ) -> int:
        """Run runnable jobs one after another until none is left; returns how many ran.

        While jobs are short they are claimed several at a time (``_next_limit``) and one
        commit ends them all and claims the next batch (their events follow it). A job that
        needs a checkpoint, or takes longer than ``SHORT_JOB``, commits the waiting ones and
        gives the unstarted ones back, so a long job holds up no one. Stops early once
        ``stopping`` is set. ``on_stream`` is called once a later claim finds jobs too."""
        statuses, ids = tuple(statuses), None if ids is None else tuple(ids)

        def request(cached: bool, limit: int = 1) -> ClaimRequest:
            return self._request(now or utcnow(), limit, statuses=statuses, ids=ids, cached=cached)

        batch = _Batch(self.ctx, lambda batch: request(True, batch.limit))
        claims = self._owners.first_claim(self.store.claim, request)
        now = None  # the later claims: as of when they are made
        ran = 0
        self._batches.add(batch)
        try:
            while claims:
                longest = 0.0
                for n, (claim, held) in enumerate(batch.hold(claims)):
                    if self.stopping.is_set():
                        break
                    if not batch.take(claim, held, waited=n > 0):
                        continue
                    ran += 1
                    started = time.monotonic()
                    execution = JobExecution(self.ctx, claim, held, batch)
                    batch.run(execution, stop_after_pre_process=stop_after_pre_process)
                    longest = max(longest, time.monotonic() - started)
                    if longest > SHORT_JOB and batch.waiting:  # slow: others take the rest
                        batch.commit(claim_next=False)
                batch.limit = _next_limit(batch.limit, longest)
                claims, _ = batch.commit(claim_next=not self.stopping.is_set())
                if claims and on_stream is not None:
                    on_stream()
                    on_stream = None
                if stop_after_pre_process and self.on_runnable is not None:
                    self.on_runnable()  # now committed as confirmed: a worker may take them
        except BaseException:
            batch.settle()
            raise
        finally:
            self._batches.discard(batch)
            batch.join()  # its jobs' ends committed, before the leases may be given back
        return ran

    def run_job(
        self, id: str, *, on_wait: Callable[[BatchJob], object] | None = None
    ) -> BatchJob | None:
        """Run job ``id`` in this thread until it rests, or ``stopping`` is set.

        Claims it whenever it is runnable, and waits while another worker
        holds it or a retry backs off (calling ``on_wait`` with it each time it
        looks). A heartbeat renews its lease while a chunk runs long. Returns
        the job as last read (``None`` if it is gone).
        """
        with Heartbeat(self.renew_leases, self.lease.total_seconds() / 3):
            while True:
                self.run_next(ids=[id])
                job = self.store.get(id)
                if job is None or job.is_resting or self.stopping.is_set():
                    return job
                if on_wait is not None:
                    on_wait(job)
                self.stopping.wait(IDLE_PAUSE * 2)

    def run_until_idle(
        self, timeout: float | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Run jobs in this thread until every job of a registered type rests.

        Waits out leases held by other (possibly dead) workers and retry
        backoffs; raises ``TimeoutError`` once ``timeout`` seconds have passed.
        """
        deadline = None if timeout is None else clock() + timeout
        with Heartbeat(self.renew_leases, self.lease.total_seconds() / 3):
            while True:
                if self.drain():
                    continue
                count, earliest = self.store.pending(self.registry.types)
                if count == 0:
                    return
                remaining = None if deadline is None else deadline - clock()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{count} batch job(s) still active after {timeout} seconds")
                pause = IDLE_PAUSE
                if earliest is not None:
                    pause = max((earliest - utcnow()).total_seconds(), 0.005)
                pause = min(pause, IDLE_PAUSE_MAX, remaining if remaining is not None else pause)
                time.sleep(pause)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
