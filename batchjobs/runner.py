"""Running claimed jobs: pre-process, confirm, chunks with a checkpoint after each, complete.

``JobRunner`` claims jobs under a lease and runs them in the calling thread.
Transitions one worker makes in a row (pre-processed → confirmed →
processing) share the commit of the first checkpoint, or of the completion
when the job fits in one chunk; each still gets its own timestamp and event,
sent after that commit (their records carry the result as committed).
The commit that releases a job also claims the next one (``drain``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import signals
from .models import ACTIVE_STATUSES, BatchJob, Status, utcnow
from .store import Checkpoint, Claim, ClaimRequest, Lease, Store
from .strategy import BatchJobStrategy, JobRun, StrategyRegistry

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_RETRY",
    "JobRunner",
    "retry_backoff",
]

log = logging.getLogger("batchjobs.runner")

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 5
#: ``context["max_retry"]`` when the job does not set it.
DEFAULT_MAX_RETRY = 3
#: Jobs ``drain`` claims in one commit at most; the saves that end short jobs
#: share the commit that claims the next batch.
CLAIM_BATCH = 8
#: A job that takes longer than this (seconds) is not short: the jobs claimed
#: with it are given back at once and the next claim is of one job.
SHORT_JOB = 0.005
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


def retry_backoff(retry_count: int) -> float:
    """Seconds to wait before automatic retry number ``retry_count + 1``."""
    return min(BACKOFF_FIRST * 2**retry_count, BACKOFF_MAX)


def _error_entry(error: BaseException) -> dict[str, Any]:
    code = getattr(error, "code", None) or getattr(error, "type", None)
    return {
        "message": str(error) or type(error).__name__,
        "code": code if isinstance(code, str) else type(error).__name__,
    }


_SCALARS = (int, float, str, bool, type(None))
_MISSING = object()


def _fingerprint(value: Any) -> Any:
    # Scalars compare as they are; containers by their JSON, since a strategy
    # may change a list or dict in place between two checkpoints.
    return (type(value), value) if type(value) in _SCALARS else json.dumps(value)


@dataclass
class _SaveRequest:
    """A save worked out by ``_request``: the store's arguments and what they change."""

    checkpoint: Checkpoint
    steps: list[tuple[Status, datetime]]
    fingerprints: dict[str, Any]
    cursor: str
    changed: bool
    now: datetime


@dataclass
class _Deferred:
    """A job's final save, waiting for its batch's commit."""

    strategy: BatchJobStrategy
    run: JobRun
    state: _RunState
    request: _SaveRequest


@dataclass
class _Batch:
    """Jobs one ``drain`` claimed together, and the final saves waiting for one commit."""

    statuses: tuple[Status, ...]
    ids: list[str] | None
    #: How many jobs the next claim takes: doubles while jobs are short.
    limit: int = 1
    #: Claimed, not started yet; given back when a job of the batch turns out long.
    waiting: list[Claim] = field(default_factory=list)
    deferred: list[_Deferred] = field(default_factory=list)


@dataclass
class _RunState:
    """What the running worker knows of its job beyond the last commit."""

    #: The job as last committed.
    job: BatchJob
    lease: Lease
    committed: Status
    pending: list[tuple[Status, datetime]] = field(default_factory=list)
    saved_result: dict[str, Any] = field(default_factory=dict)
    saved_cursor: str = "{}"
    #: The batch this job was claimed in by ``drain``: its final save waits for
    #: the batch's one commit.
    batch: _Batch | None = None
    #: The final save waits in the batch: the batch's commit closes the run.
    deferred: bool = False
    #: ``run.result`` fingerprints and ``run.cursor`` JSON after the last step that
    #: succeeded: what a failed chunk is rolled back to.
    good: tuple[dict[str, Any], str] = ({}, "{}")

    def roll_back(self, run: JobRun) -> None:
        """Undo what a failed chunk did to ``run.result`` and ``run.cursor``."""
        fingerprints, cursor = self.good
        run.result = {
            k: f[1] if isinstance(f, tuple) else json.loads(f) for k, f in fingerprints.items()
        }
        run.cursor = json.loads(cursor)

    def current(self) -> BatchJob:
        """The job as last committed."""
        return self.job


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
    ) -> None:
        self.store = store
        self.registry = registry
        self.sender = sender if sender is not None else self
        self.files = files
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        #: Set to stop running jobs at their next checkpoint and hand them over.
        self.stopping = threading.Event()
        #: Called when this runner leaves a job for another worker to run
        #: (pre-processed and confirmed, or handed over); the scheduler wakes on it.
        self.on_runnable: Callable[[], None] | None = None
        self._running: dict[str, float] = {}  # job id → when it started (monotonic)
        #: The lease of every job running here or held for a batch: the heartbeat's.
        self._leases: dict[str, Lease] = {}
        self._held: set[str] = set()  # claimed in a batch, not started yet
        self._running_lock = threading.Lock()

    def _emit(self, event: str, job: BatchJob) -> None:
        signals.emit(event, self.sender, job)

    def clean_up_canceled(self, job: BatchJob, now: datetime | None = None) -> bool:
        """Run ``on_cancel`` for a canceled job that no live worker holds.

        A worker running the job cleans up itself at its next checkpoint; a job
        canceled while handed over, backing off or left by a dead worker is
        cleaned up by whoever takes its cleanup first (one guarded write), here
        or in any worker with its strategy. Returns whether ``on_cancel`` ran here.
        """
        if job.status != Status.CANCELED or job.type not in self.registry:
            return False
        now = now or utcnow()
        claim = self.store.claim_cleanup(
            job.id, owner=self.owner, now=now, lease_until=now + self.lease
        )
        if claim is None:
            return False
        self._clean_up(claim)
        return True

    def _clean_up(self, claim: Claim, run: JobRun | None = None) -> None:
        """Run ``on_cancel`` under ``claim`` (a cleanup taken), then mark it done."""
        with self._running_lock:
            self._leases[claim.job.id] = claim.lease
        own = run is None
        if run is None:
            run = JobRun(claim.job, cursor=claim.cursor, files=self.files, is_canceled=lambda: True)
        try:
            self.registry.get(claim.job.type).on_cancel(run)
        except Exception:
            log.exception("on_cancel of batch job %s failed", claim.job.id)
        finally:
            with self._running_lock:
                self._leases.pop(claim.job.id, None)
            if own:
                run.close()
        self.store.finish_cleanup(claim.lease)

    @property
    def running(self) -> list[str]:
        """Ids of the jobs this runner is running now."""
        with self._running_lock:
            return list(self._running)

    def newest_start(self) -> float | None:
        """When the most recently started of the jobs running here started (monotonic)."""
        with self._running_lock:
            return max(self._running.values(), default=None)

    def renew_leases(self, now: datetime | None = None) -> int:
        """Extend the leases of every job running here (the heartbeat)."""
        with self._running_lock:
            leases = list(self._leases.values())
        return len(self.store.renew(leases, (now or utcnow()) + self.lease))

    def claim_next(
        self,
        now: datetime | None = None,
        *,
        statuses: Iterable[Status] = ACTIVE_STATUSES,
        ids: Iterable[str] | None = None,
    ) -> Claim | None:
        """Lease the oldest runnable job of a registered type (among ``ids``), or ``None``."""
        now = now or utcnow()
        claims = self.store.claim(
            ClaimRequest(
                self.owner,
                tuple(self.registry.types),
                now,
                now + self.lease,
                statuses=tuple(statuses),
                ids=None if ids is None else tuple(ids),
            )
        )
        return claims[0] if claims else None

    def run_next(
        self,
        now: datetime | None = None,
        *,
        statuses: Iterable[Status] = ACTIVE_STATUSES,
        stop_after_pre_process: bool = False,
        ids: Iterable[str] | None = None,
    ) -> BatchJob | None:
        """Claim one runnable job and run it until it rests or is handed over.

        Returns the job as this worker left it, or ``None`` when nothing was
        runnable at ``now``. ``ids`` limits the claim to those jobs.
        """
        claim = self.claim_next(now, statuses=statuses, ids=ids)
        if claim is None:
            return None
        return self.run_claim(claim, stop_after_pre_process=stop_after_pre_process)

    def drain(
        self,
        now: datetime | None = None,
        *,
        statuses: Iterable[Status] = ACTIVE_STATUSES,
        stop_after_pre_process: bool = False,
        ids: Iterable[str] | None = None,
    ) -> int:
        """Run runnable jobs one after another until none is left; returns how many ran.

        While jobs are short they are claimed several at a time (up to
        ``CLAIM_BATCH``); the saves that end them wait, and one commit writes
        them all and claims the next batch (their events follow that commit).
        A job that needs a checkpoint, or takes longer than ``SHORT_JOB``,
        commits the waiting saves and gives the batch's unstarted jobs back,
        so a long job holds up no one. Stops early once ``stopping`` is set.
        """
        batch = _Batch(tuple(statuses), None if ids is None else list(ids))
        claims = self.store.claim(self._claim_request(batch, now or utcnow()))
        ran = 0
        try:
            while claims:
                self._hold(batch, claims)
                short = True
                for claim in claims:
                    if self.stopping.is_set():
                        break
                    if claim not in batch.waiting:
                        continue  # given back with a long job's checkpoint
                    self._unhold(batch, [claim])
                    if claim is not claims[0] and not self._still_ours(claim):
                        continue
                    ran += 1
                    started = time.monotonic()
                    self._run_claim(claim, stop_after_pre_process, batch)
                    if time.monotonic() - started > SHORT_JOB:
                        short = False
                        if batch.waiting:  # slow jobs: let other workers have the rest
                            self._commit_batch(batch, claim_next=False)
                # Short jobs: claim twice as many next time; otherwise one.
                batch.limit = min(batch.limit * 2, CLAIM_BATCH) if short else 1
                claims, _ = self._commit_batch(batch, claim_next=not self.stopping.is_set())
                if stop_after_pre_process and self.on_runnable:
                    self.on_runnable()  # now committed as confirmed: a worker may take them
        except BaseException:
            with suppress(Exception):
                self._commit_batch(batch, claim_next=False)
            raise
        return ran

    def _claim_request(self, batch: _Batch, now: datetime) -> ClaimRequest:
        return ClaimRequest(
            self.owner,
            tuple(self.registry.types),
            now,
            now + self.lease,
            statuses=batch.statuses,
            ids=None if batch.ids is None else tuple(batch.ids),
            limit=batch.limit,
            cleanups=batch.statuses == ACTIVE_STATUSES,
        )

    def _still_ours(self, claim: Claim) -> bool:
        """Whether a job that waited in a batch may start: still ours, not canceled."""
        status = self.store.holds(claim.lease)
        if status == claim.job.status:
            return True
        if status == Status.CANCELED:
            self._cancel_held(claim.lease)
        return False

    def _cancel_held(self, lease: Lease) -> None:
        """A job we hold was canceled before it started: clean up if owed, else let it go."""
        now = utcnow()
        cleanup = self.store.claim_cleanup(
            lease.id, owner=self.owner, now=now, lease_until=now + self.lease
        )
        if cleanup is not None:
            self._clean_up(cleanup)
        else:
            self.store.release([lease])

    def _hold(self, batch: _Batch, claims: list[Claim]) -> None:
        batch.waiting.extend(claims)
        with self._running_lock:
            self._held.update(c.job.id for c in claims)
            self._leases.update((c.job.id, c.lease) for c in claims)

    def _unhold(self, batch: _Batch, claims: list[Claim]) -> None:
        for claim in claims:
            batch.waiting.remove(claim)
        with self._running_lock:
            for claim in claims:
                self._held.discard(claim.job.id)
                if claim.job.id not in self._running:
                    self._leases.pop(claim.job.id, None)

    def _commit_batch(
        self,
        batch: _Batch,
        *,
        claim_next: bool,
        also: tuple[str, _SaveRequest] | None = None,
    ) -> tuple[list[Claim], BatchJob | None]:
        """One commit: the batch's waiting saves (and ``also``), its unstarted jobs given
        back, and, with ``claim_next``, the next batch claimed.

        Returns the new claims and what ``also`` stored.
        """
        deferred = list(batch.deferred)
        saves = [d.request.checkpoint for d in deferred]
        if also is not None:
            saves.append(also[1].checkpoint)
        waiting = list(batch.waiting)
        claim = self._claim_request(batch, utcnow()) if claim_next else None
        if not saves and not waiting and claim is None:
            return [], None
        stored, claims = self.store.commit(saves, release=[c.lease for c in waiting], claim=claim)
        # Only now that they are committed (a failed commit leaves them to retry).
        batch.deferred = []
        self._unhold(batch, waiting)
        with self._running_lock:
            for d in deferred:
                self._held.discard(d.state.job.id)
                self._leases.pop(d.state.job.id, None)
        for d, result in zip(deferred, stored, strict=False):
            try:
                self._saved(d.strategy, d.run, d.state, d.request, result)
            finally:
                d.run.close()
        for given in waiting:  # canceled while we held it: the cleanup may be ours to take
            job = self.store.get(given.job.id)
            if job is not None and job.status == Status.CANCELED:
                self.clean_up_canceled(job)
        return claims, (stored[-1] if also is not None else None)

    def run_claim(self, claim: Claim, *, stop_after_pre_process: bool = False) -> BatchJob:
        """Run a claimed job: pre-process, confirm, process chunks, complete."""
        return self._run_claim(claim, stop_after_pre_process, None).current()

    def _run_claim(
        self, claim: Claim, stop_after_pre_process: bool, batch: _Batch | None
    ) -> _RunState:
        job = claim.job
        fingerprints = {k: _fingerprint(v) for k, v in job.result.items()}
        cursor = json.dumps(claim.cursor, allow_nan=False)
        state = _RunState(
            job=job,
            lease=claim.lease,
            committed=job.status,
            saved_result=fingerprints,
            saved_cursor=cursor,
            batch=batch,
            good=(fingerprints, cursor),
        )
        if job.status == Status.CANCELED:  # a cleanup owed since a cancel
            self._clean_up(claim)
            return state
        with self._running_lock:
            self._running[job.id] = time.monotonic()
            self._leases[job.id] = claim.lease
        run: JobRun | None = None
        try:
            strategy = self.registry.get(job.type)
            run = JobRun(
                job,
                cursor=claim.cursor,
                files=self.files,
                is_canceled=lambda: self.store.status_of(job.id) == Status.CANCELED,
            )
            if claim.attempts > self.max_attempts:
                error = {
                    "message": f"Batch job was taken over {claim.attempts} times after its "
                    f"worker stopped without releasing it (max_attempts is "
                    f"{self.max_attempts}); it is failed so that it cannot kill more workers",
                    "code": "max_attempts_exceeded",
                }
                self._fail(strategy, run, state, error)
            else:
                self._run(strategy, run, state, stop_after_pre_process)
            return state
        finally:
            with self._running_lock:
                self._running.pop(job.id, None)
                if not state.deferred:
                    self._leases.pop(job.id, None)
            if run is not None and not state.deferred:
                run.close()

    def _run(
        self,
        strategy: BatchJobStrategy,
        run: JobRun,
        state: _RunState,
        stop_after_pre_process: bool,
    ) -> None:
        if state.job.status == Status.CREATED:
            try:
                strategy.pre_process(run)
            except Exception as error:
                log.exception("pre_process of batch job %s failed", state.job.id)
                self._fail(strategy, run, state, _error_entry(error))
                return
            state.pending.append((Status.PRE_PROCESSED, utcnow()))
            if state.job.dry_run:
                self._save(strategy, run, state, release=True)
                return
            state.pending.append((Status.CONFIRMED, utcnow()))
            if stop_after_pre_process:
                saved = self._save(strategy, run, state, release=True)
                if saved and state.batch is None and self.on_runnable:
                    self.on_runnable()  # confirmed: a processing worker may take it now
                return
        if state.job.status != Status.PROCESSING:
            state.pending.append((Status.PROCESSING, utcnow()))
        self._process(strategy, run, state)

    def _process(self, strategy: BatchJobStrategy, run: JobRun, state: _RunState) -> None:
        size = state.job.context.get("chunk_size") or strategy.chunk_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            self._fail(
                strategy,
                run,
                state,
                {
                    "message": f"chunk_size must be a positive integer, not {size!r}",
                    "code": "invalid_data",
                },
            )
            return
        count, done = run.result.get("count"), run.result.get("advancement_count", 0)
        # Show the job as processing before a chunk that may take long; only a
        # job that fits in one chunk saves its transitions with its completion.
        if (
            state.pending
            and (count is None or count - done > size)
            and not self._save(strategy, run, state)
        ):
            return
        if state.pending:  # not saved yet: remember pre_process's output to roll back to
            state.good = (
                {k: _fingerprint(v) for k, v in run.result.items()},
                json.dumps(run.cursor, allow_nan=False),
            )
        while True:
            done = run.result.get("advancement_count", 0)
            count = run.result.get("count")
            if count is not None and done >= count:
                break
            if self.stopping.is_set():
                self._save(strategy, run, state, release=True)  # hand over at once
                return
            try:
                advanced = strategy.process_chunk(run, done, size)
            except Exception as error:
                self._chunk_failed(strategy, run, state, error)
                return
            if not advanced:
                break
            done += advanced
            run.result["advancement_count"] = done
            count = run.result.get("count")  # the chunk may have changed it (set_count)
            if count:
                run.result["progress"] = min(done / count, 1.0)
            if count is not None and done >= count:
                break
            if not self._save(strategy, run, state):
                return
        try:
            strategy.finalize(run)
        except Exception as error:
            log.exception("finalize of batch job %s failed", state.job.id)
            self._fail(strategy, run, state, _error_entry(error))
            return
        if run.result.get("count") is None:
            run.result["count"] = run.result.get("advancement_count", 0)
        run.result["progress"] = 1.0
        run.result.setdefault("advancement_count", 0)
        state.pending.append((Status.COMPLETED, utcnow()))
        self._save(strategy, run, state, release=True)

    def _chunk_failed(
        self, strategy: BatchJobStrategy, run: JobRun, state: _RunState, error: Exception
    ) -> None:
        context = state.job.context
        retry_count = context.get("retry_count", 0)
        max_retry = context.get("max_retry", DEFAULT_MAX_RETRY)
        try:
            retry = bool(strategy.should_retry(run, error)) and retry_count < max_retry
        except Exception:
            log.exception("should_retry of batch job %s failed", state.job.id)
            retry = False
        entry = _error_entry(error)
        state.roll_back(run)  # the chunk did not happen: resume where the last one ended
        if not retry:
            log.error("batch job %s failed: %s", state.job.id, entry["message"], exc_info=error)
            self._fail(strategy, run, state, entry)
            return
        log.warning(
            "batch job %s: chunk failed (%s); retry %d of %d",
            state.job.id,
            entry["message"],
            retry_count + 1,
            max_retry,
        )
        run.add_error(entry["message"], entry["code"])
        self._save(
            strategy,
            run,
            state,
            release=True,
            context={"retry_count": retry_count + 1},
            available_at=utcnow() + timedelta(seconds=retry_backoff(retry_count)),
        )

    def _fail(
        self, strategy: BatchJobStrategy, run: JobRun, state: _RunState, entry: dict[str, Any]
    ) -> None:
        run.add_error(entry["message"], entry["code"])
        state.pending.append((Status.FAILED, utcnow()))
        self._save(strategy, run, state, release=True)

    def _save(
        self,
        strategy: BatchJobStrategy,
        run: JobRun,
        state: _RunState,
        *,
        release: bool = False,
        context: dict[str, Any] | None = None,
        available_at: datetime | None = None,
    ) -> bool:
        """Commit the run's progress and pending transitions; False if the job was lost.

        In a batch, a save that ends the job waits for the batch's commit (and
        counts as done); any other save takes the batch's waiting saves with it.
        """
        request = self._request(run, state, release, context, available_at)
        batch = state.batch
        if batch is None or not (batch.deferred or batch.waiting or release):
            stored = self.store.save(request.checkpoint)
        elif release and not self.stopping.is_set():
            batch.deferred.append(_Deferred(strategy, run, state, request))
            state.deferred = True
            with self._running_lock:
                self._held.add(state.job.id)  # the heartbeat renews it until the commit
                self._leases[state.job.id] = state.lease
            return True
        else:
            _, stored = self._commit_batch(batch, claim_next=False, also=(state.job.id, request))
        return self._saved(strategy, run, state, request, stored)

    def _request(
        self,
        run: JobRun,
        state: _RunState,
        release: bool,
        context: dict[str, Any] | None,
        available_at: datetime | None,
    ) -> _SaveRequest:
        """What saving the run now would write."""
        now = utcnow()
        fingerprints = {k: _fingerprint(v) for k, v in run.result.items()}
        saved = state.saved_result
        patch = {
            k: run.result[k] for k, f in fingerprints.items() if k not in saved or saved[k] != f
        }
        cursor = json.dumps(run.cursor, allow_nan=False)
        cursor_changed = cursor != state.saved_cursor
        checkpoint = Checkpoint(
            state.lease,
            state.committed,
            now,
            steps=tuple(state.pending),
            result=patch,
            context=context or {},
            cursor=dict(run.cursor) if cursor_changed else None,
            until=available_at if release else now + self.lease,
            release=release,
        )
        changed = bool(patch or context or cursor_changed)
        return _SaveRequest(checkpoint, list(state.pending), fingerprints, cursor, changed, now)

    def _saved(
        self,
        strategy: BatchJobStrategy,
        run: JobRun,
        state: _RunState,
        request: _SaveRequest,
        stored: BatchJob | None,
    ) -> bool:
        """After a save's commit: note what is saved, send its events (or handle the loss)."""
        if stored is None:
            self._lost(strategy, run, state)
            return False
        state.saved_result, state.saved_cursor = request.fingerprints, request.cursor
        state.good = (request.fingerprints, request.cursor)
        steps = list(request.steps)
        state.pending = state.pending[len(steps) :]
        before = state.job
        state.committed = stored.status
        state.job = run.job = stored
        events = [signals.event_for_status(step) for step, _ in steps]
        if request.changed:
            final = bool(steps) and steps[-1][0] in (Status.COMPLETED, Status.FAILED)
            events.insert(len(events) - final, "batch.updated")
        if not events:
            return True
        # Each step's event carries the job as at that step, the result as committed.
        job = stored.replace(
            status=before.status,
            **{step.timestamp_field: getattr(before, step.timestamp_field) for step, _ in steps},
        )
        for event in events:
            if event != "batch.updated":
                job = job.with_status(*steps.pop(0))
            signals.emit(event, self.sender, job)
        return True

    def _lost(self, strategy: BatchJobStrategy, run: JobRun, state: _RunState) -> None:
        """A checkpoint's guard failed: the job was canceled or taken over."""
        current = self.store.get(state.job.id)
        if current is not None:
            state.job = run.job = current
        if current is not None and current.status == Status.CANCELED:
            log.info("batch job %s was canceled; stopping", current.id)
            now = utcnow()
            cleanup = self.store.claim_cleanup(
                current.id,
                owner=self.owner,
                now=now,
                lease_until=now + self.lease,
                lease=state.lease,
            )
            if cleanup is not None:
                self._clean_up(cleanup, run)
        else:
            log.warning("batch job %s: lease lost to another worker; stopping", state.job.id)

    def run_until_idle(
        self, timeout: float | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Run jobs in this thread until every job of a registered type rests.

        Waits out leases held by other (possibly dead) workers and retry
        backoffs; raises ``TimeoutError`` once ``timeout`` seconds have passed.
        """
        deadline = None if timeout is None else clock() + timeout
        heartbeat = _Heartbeat(self, interval=self.lease.total_seconds() / 3)
        with heartbeat:
            while True:
                if self.drain():
                    continue
                count, earliest = self.store.pending(self.registry.types)
                if count == 0:
                    return
                remaining = None if deadline is None else deadline - clock()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{count} batch job(s) still active after {timeout} seconds")
                pause = 0.05
                if earliest is not None:
                    pause = max((earliest - utcnow()).total_seconds(), 0.005)
                pause = min(pause, 0.5, remaining if remaining is not None else pause)
                time.sleep(pause)


class _Heartbeat:
    """A thread that renews this runner's leases while a synchronous run goes on."""

    def __init__(self, runner: JobRunner, interval: float) -> None:
        self.runner = runner
        self.interval = max(interval, 0.01)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchjobs-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.runner.renew_leases()
            except Exception:
                log.exception("could not renew leases")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
