"""Running one claimed job: pre-process, confirm, chunks with a checkpoint after each, complete.

``JobExecution`` holds one claim and runs it in the calling thread. Transitions
it makes in a row (pre-processed → confirmed → processing) share the commit of
the first checkpoint, or of the completion when the job fits in one chunk;
each still gets its own timestamp and event, written by the store in that
commit and sent to receivers after it. After every commit ``run.job`` is the
job as committed, whoever listens.

A checkpoint whose guard fails means the job moved under us: paused (the
checkpoint is committed under ``paused`` and the lease given up), paused and
resumed (the resume kept our lease: committed under ``confirmed``, the lease
given up), canceled (its cleanup is taken by one guarded write, and run
here), or its lease taken over.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from ..models import BatchJob, Status, utcnow
from ..store import Checkpoint, Claim, Store
from ..strategy import BatchJobStrategy, JobRun, StrategyRegistry
from .leases import HeldLease, Leases, LeaseState

__all__ = [
    "DEFAULT_MAX_RETRY",
    "DEFERRED",
    "JobExecution",
    "RunContext",
    "Saver",
    "retry_backoff",
]

log = logging.getLogger("batchjobs.runner")
#: How jobs end when they fail: the job's errors say it too (the CLI prints
#: those, and these records' tracebacks only with --verbose).
outcomes = logging.getLogger("batchjobs.jobs")

#: ``context["max_retry"]`` when the job does not set it.
DEFAULT_MAX_RETRY = 3
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


def retry_backoff(retry_count: int) -> float:
    """Seconds to wait before automatic retry number ``retry_count + 1``."""
    return min(BACKOFF_FIRST * 2**retry_count, BACKOFF_MAX)


@dataclass
class RunContext:
    """What running a job needs from its runner: handed down, never reached back for."""

    store: Store
    registry: StrategyRegistry
    leases: Leases
    owner: str
    sender: Any
    files: Any
    max_attempts: int
    #: Set to stop running jobs at their next checkpoint and hand them over.
    stopping: threading.Event
    #: Called when a job is left for another worker (confirmed by the pre-processing lane).
    on_runnable: Callable[[], None] | None = None

    @property
    def lease(self) -> timedelta:
        """How long a lease lasts."""
        return self.leases.duration


class _Deferred:
    """The answer of a saver that keeps a final checkpoint for its batch's commit."""


#: A ``Saver`` keeps the checkpoint for later: its batch commits it and calls ``committed``.
DEFERRED = _Deferred()


class Saver(Protocol):
    """Commits a running job's checkpoints: at once, or with the other jobs of its batch."""

    def save(
        self, execution: JobExecution, checkpoint: Checkpoint, *, ends: bool
    ) -> BatchJob | None | _Deferred:
        """Commit ``checkpoint`` (``ends``: the job's last); as ``Store.save``, or ``DEFERRED``."""


class DirectSaver:
    """Each checkpoint is its own commit."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def save(
        self, execution: JobExecution, checkpoint: Checkpoint, *, ends: bool
    ) -> BatchJob | None | _Deferred:
        return self.store.save(checkpoint)


def _error_entry(error: BaseException) -> dict[str, Any]:
    code = getattr(error, "code", None) or getattr(error, "type", None)
    return {
        "message": str(error) or type(error).__name__,
        "code": code if isinstance(code, str) else type(error).__name__,
    }


_SCALARS = (int, float, str, bool, type(None))


def _fingerprint(value: Any) -> Any:
    # Scalars compare as they are; containers by their JSON, since a strategy
    # may change a list or dict in place between two checkpoints.
    return (type(value), value) if type(value) in _SCALARS else json.dumps(value)


def _fingerprints(run: JobRun) -> tuple[dict[str, Any], str]:
    """``run.result`` by key (scalars as they are, containers as JSON) and ``run.cursor``
    as JSON: what a checkpoint compares, and what a failed chunk rolls back to."""
    result = {k: _fingerprint(v) for k, v in run.result.items()}
    return result, json.dumps(run.cursor, allow_nan=False)


def _roll_back(run: JobRun, good: tuple[dict[str, Any], str]) -> None:
    """Undo what a failed chunk did to ``run.result`` and ``run.cursor``."""
    result, cursor = good
    run.result = {k: f[1] if isinstance(f, tuple) else json.loads(f) for k, f in result.items()}
    run.cursor = json.loads(cursor)


def _paused(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint a pause stopped, as it is committed once the job is ``paused``: under
    that status, giving the lease up, so that ``resume`` repeats no record.

    The transitions it carried are dropped (the job stays paused), unless the
    job's work is over: a job whose last chunk is done still completes (or fails).
    """
    steps = checkpoint.steps
    ends = bool(steps) and steps[-1][0] in (Status.COMPLETED, Status.FAILED)
    return replace(
        checkpoint, expect=Status.PAUSED, steps=steps if ends else (), until=None, release=True
    )


def _resumed(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint of a job paused and resumed before it got there, as it is committed
    under ``confirmed`` (the lease, kept by the resume, still ours), giving the lease up:
    any worker goes on from it. A job whose work is over still completes (or fails)."""
    steps = checkpoint.steps
    if not (steps and steps[-1][0] in (Status.COMPLETED, Status.FAILED)):
        steps = ()
    elif all(status != Status.PROCESSING for status, _ in steps):
        steps = ((Status.PROCESSING, steps[0][1]), *steps)
    until = checkpoint.until if checkpoint.release else None
    return replace(checkpoint, expect=Status.CONFIRMED, steps=steps, until=until, release=True)


class JobExecution:
    """One claimed job, run in the calling thread until it rests, is handed over or lost."""

    def __init__(self, ctx: RunContext, claim: Claim, held: HeldLease, saver: Saver) -> None:
        self.ctx = ctx
        self.claim = claim
        self.held = held
        self.saver = saver
        #: The job as last committed.
        self.job = claim.job
        self.strategy: BatchJobStrategy | None = None
        self.run: JobRun | None = None
        #: Transitions made since the last commit, each with its time.
        self.pending: list[tuple[Status, datetime]] = []
        #: ``run.result`` fingerprints and ``run.cursor`` JSON as last committed:
        #: what the next checkpoint compares with, and what a failed chunk rolls back to.
        self.saved_result = {k: _fingerprint(v) for k, v in claim.job.result.items()}
        self.saved_cursor = json.dumps(claim.cursor, allow_nan=False)
        #: What the checkpoint waiting for its batch's commit writes.
        self.waiting: Checkpoint | None = None
        #: Until when its lease runs, as far as its own checkpoints know.
        self.expires = claim.expires_at
        #: ``run.result`` fingerprints and ``run.cursor`` JSON after the last step
        #: that succeeded: what a failed chunk is rolled back to.
        self.good = (self.saved_result, self.saved_cursor)
        #: Whether this run began processing, committed or not: a cancel since owes a cleanup.
        self.began = False

    # -- the walk ----------------------------------------------------------------

    def execute(self, *, stop_after_pre_process: bool = False) -> None:
        """Run the job; its lease is committed, deferred, lost or released when this returns."""
        ctx = self.ctx
        job = self.job
        ctx.leases.move(self.held, LeaseState.RUNNING)
        try:
            self.strategy = ctx.registry.get(job.type)
            self.run = JobRun(
                job,
                cursor=self.claim.cursor,
                files=ctx.files,
                is_canceled=lambda: ctx.store.status_of(job.id) == Status.CANCELED,
            )
            if job.status == Status.CANCELED:  # a cleanup owed since a cancel
                self._clean_up()
            elif self.claim.attempts > ctx.max_attempts:
                self._fail(
                    {
                        "message": f"Batch job was taken over {self.claim.attempts} times after "
                        f"its worker stopped without releasing it (max_attempts is "
                        f"{ctx.max_attempts}); it is failed so that it cannot kill more workers",
                        "code": "max_attempts_exceeded",
                    }
                )
            else:
                self._walk(stop_after_pre_process)
        except BaseException as error:
            if not isinstance(error, Exception) and self.held.live:
                ctx.leases.move(self.held, LeaseState.ABANDONED)  # the worker is dying
            raise
        finally:
            if self.held.state != LeaseState.DEFERRED:
                self.close()

    def close(self) -> None:
        """End the run: what it opened is closed, its lease given back if still ours."""
        try:
            if self.run is not None:
                self.run.close()
        finally:
            self.ctx.leases.release([self.held])

    def _walk(self, stop_after_pre_process: bool) -> None:
        run, strategy = self._parts()
        if self.job.status == Status.CREATED:
            try:
                strategy.pre_process(run)
            except Exception as error:
                outcomes.exception("pre_process of batch job %s failed", self.job.id)
                self._fail(_error_entry(error))
                return
            self.pending.append((Status.PRE_PROCESSED, utcnow()))
            if self.job.dry_run:
                self._save(release=True)
                return
            self.pending.append((Status.CONFIRMED, utcnow()))
            if stop_after_pre_process:
                if self._save(release=True) and self.ctx.on_runnable is not None:
                    self.ctx.on_runnable()  # confirmed: a processing worker may take it now
                return
        if self.job.status != Status.PROCESSING:
            self.pending.append((Status.PROCESSING, utcnow()))
        self._process()

    def _parts(self) -> tuple[JobRun, BatchJobStrategy]:
        assert self.run is not None and self.strategy is not None
        return self.run, self.strategy

    def _process(self) -> None:
        run, strategy = self._parts()
        size = self.job.context.get("chunk_size") or strategy.chunk_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            self._fail(
                {
                    "message": f"chunk_size must be a positive integer, not {size!r}",
                    "code": "invalid_data",
                }
            )
            return
        count, done = run.result.get("count"), run.result.get("advancement_count", 0)
        # Show the job as processing before a chunk that may take long; only a
        # job that fits in one chunk saves its transitions with its completion.
        if self.pending and (count is None or count - done > size) and not self._save():
            return
        if self.pending:  # pre_process's output, not saved yet, is what to roll back to
            self.good = _fingerprints(self._parts()[0])
        self.began = True
        while True:
            done = run.result.get("advancement_count", 0)
            count = run.result.get("count")
            if count is not None and done >= count:
                break
            if self.ctx.stopping.is_set():
                self._save(release=True)  # hand over at once
                return
            try:
                advanced = strategy.process_chunk(run, done, size)
            except Exception as error:
                _roll_back(run, self.good)  # the chunk did not happen
                self._chunk_failed(error)
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
            if not self._save():
                return
        try:
            strategy.finalize(run)
        except Exception as error:
            outcomes.exception("finalize of batch job %s failed", self.job.id)
            self._fail(_error_entry(error))
            return
        if run.result.get("count") is None:
            run.result["count"] = run.result.get("advancement_count", 0)
        run.result["progress"] = 1.0
        run.result.setdefault("advancement_count", 0)
        self.pending.append((Status.COMPLETED, utcnow()))
        self._save(release=True)

    def _chunk_failed(self, error: Exception) -> None:
        run, strategy = self._parts()
        context = self.job.context
        retry_count = context.get("retry_count", 0)
        max_retry = context.get("max_retry", DEFAULT_MAX_RETRY)
        try:
            retry = bool(strategy.should_retry(run, error)) and retry_count < max_retry
        except Exception:
            log.exception("should_retry of batch job %s failed", self.job.id)
            retry = False
        entry = _error_entry(error)
        if not retry:
            outcomes.error("batch job %s failed: %s", self.job.id, entry["message"], exc_info=error)
            self._fail(entry)
            return
        outcomes.warning(
            "batch job %s: chunk failed (%s); retry %d of %d",
            self.job.id,
            entry["message"],
            retry_count + 1,
            max_retry,
        )
        run.add_error(entry["message"], entry["code"])
        self._save(
            release=True,
            context={"retry_count": retry_count + 1},
            until=utcnow() + timedelta(seconds=retry_backoff(retry_count)),
        )

    def _fail(self, entry: dict[str, Any]) -> None:
        run, _ = self._parts()
        run.add_error(entry["message"], entry["code"])
        self.pending.append((Status.FAILED, utcnow()))
        self._save(release=True)

    # -- checkpoints ---------------------------------------------------------------

    def _save(
        self,
        *,
        release: bool = False,
        context: dict[str, Any] | None = None,
        until: datetime | None = None,
    ) -> bool:
        """Commit the run's progress and pending transitions; False if the job was lost."""
        run, _ = self._parts()
        now = utcnow()
        result, cursor = _fingerprints(run)
        checkpoint = Checkpoint(
            self.held.lease,
            self.job.status,
            now,
            steps=tuple(self.pending),
            result={
                k: run.result[k]
                for k, f in result.items()
                if k not in self.saved_result or self.saved_result[k] != f
            },
            context=context or {},
            cursor=None if cursor == self.saved_cursor else dict(run.cursor),
            until=until if release else self._renewal(now),
            release=release,
        )
        ends = release and not self.ctx.stopping.is_set()
        stored = self.saver.save(self, checkpoint, ends=ends)
        self.saved_result, self.saved_cursor = result, cursor
        self.good = (result, cursor)
        if stored is DEFERRED:
            self.waiting = checkpoint
            self.ctx.leases.move(self.held, LeaseState.DEFERRED)
            return True
        assert not isinstance(stored, _Deferred)
        return self.committed(checkpoint, stored)

    def _renewal(self, now: datetime) -> datetime | None:
        """Until when a checkpoint at ``now`` renews the lease: once a third of it has
        passed (the heartbeat renews it too), else ``None`` (as it is)."""
        if self.expires - now > self.ctx.lease * 2 / 3:
            return None
        self.expires = now + self.ctx.lease
        return self.expires

    def committed(self, checkpoint: Checkpoint, stored: BatchJob | None) -> bool:
        """After ``checkpoint``'s commit: note the job as committed (the store wrote its
        events in that commit; ``BatchJobs`` sent them to receivers after it).

        ``stored`` is what the store answered: ``None`` when its guard failed.
        """
        if stored is None:
            self._lost(checkpoint)
            return False
        if checkpoint.release and self.held.live:
            self.ctx.leases.move(self.held, LeaseState.COMMITTED)
        self.job = stored
        if self.run is not None:
            self.run.job = stored
        del self.pending[: len(checkpoint.steps)]
        return True

    def _lost(self, checkpoint: Checkpoint) -> None:
        """A checkpoint's guard failed: paused (resumed since), canceled, or lease taken over."""
        ctx = self.ctx
        current = ctx.store.get(self.job.id)
        if current is not None:
            self.job = current
            if self.run is not None:
                self.run.job = current
        for status, moved in ((Status.PAUSED, _paused), (Status.CONFIRMED, _resumed)):
            if current is not None and current.status == status:  # the lease kept: ours?
                stored = ctx.store.save(kept := moved(checkpoint))  # guarded: status, lease
                if stored is not None:
                    log.info("batch job %s was %s; gave it up", current.id, status.value)
                    self.pending.clear()
                    self.committed(kept, stored)
                    return
                current = ctx.store.get(self.job.id)  # canceled or resumed meanwhile
        if current is not None and current.status == Status.CANCELED:
            log.info("batch job %s was canceled; stopping", current.id)
            now = utcnow()
            cleanup = ctx.store.claim_cleanup(
                current.id,
                owner=ctx.owner,
                now=now,
                lease_until=now + ctx.lease,
                lease=self.held.lease,
                began=self.began,  # if not begun, none is owed: the lease is given back at the end
            )
            if cleanup is not None:
                self._clean_up()
            return
        log.warning("batch job %s: lease lost to another worker; stopping", self.job.id)
        if self.held.live:
            ctx.leases.move(self.held, LeaseState.LOST)

    def _clean_up(self) -> None:
        """Run ``on_cancel`` (the cleanup is ours: taken by a guarded write), then mark it done."""
        run, strategy = self._parts()
        try:
            strategy.on_cancel(run)
        except Exception:
            log.exception("on_cancel of batch job %s failed", self.job.id)
        if self.ctx.store.finish_cleanup(self.held.lease):
            self.ctx.leases.move(self.held, LeaseState.COMMITTED)
