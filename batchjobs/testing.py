"""The testing kit: make the database fail, and crash a job after chunk N.

For the tests of an application's strategies (does my export resume without
duplicating rows? does my job survive a database hiccup?) and for ours::

    from batchjobs.testing import Faults, crash_after_chunk

    jobs.register(crash_after_chunk(MyExport, 2))   # dies after chunk 2's work
    job = jobs.create("my-export", {...})
    with pytest.raises(SimulatedCrash):
        jobs.run_until_idle()
    jobs.register(MyExport)                         # the next run resumes it
    ...

    faults = Faults(jobs)
    with faults.failing_commits(1): ...             # the next commit fails, rolled back
    with faults.read_only(): ...                    # every write refuses, reads work
    with faults.lock_held(timeout=0.05): ...        # another connection holds the lock

Each fault makes the real database fail the way it would (SQLite's
``query_only``, a lock held by another connection, a commit rolled back),
so the error goes through the store's boundary and comes out as the
``StoreError`` an application would see.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .store import Store
from .strategy import BatchJobStrategy, JobDraft, JobRun

__all__ = ["CrashAfterChunk", "Faults", "SimulatedCrash", "crash_after_chunk"]


class SimulatedCrash(BaseException):
    """Raised by ``crash_after_chunk``: the worker "dies" (not an ``Exception``, so
    nothing on the way catches it; its lease is left to expire, as after ``kill -9``)."""


class Faults:
    """Fault injection into the store of a ``BatchJobs`` (or a ``Store``)."""

    def __init__(self, jobs_or_store: Any) -> None:
        store = getattr(jobs_or_store, "store", jobs_or_store)
        if not isinstance(store, Store):
            raise TypeError(f"{jobs_or_store!r} is neither a BatchJobs nor a Store")
        self.store = store

    @contextmanager
    def failing_commits(self, times: int = 1) -> Iterator[None]:
        """The next ``times`` write transactions fail at their commit (``StoreError``),
        changing nothing; those left unspent are cancelled when the context ends."""
        self.store.fail_commits(times)
        try:
            yield
        finally:
            self.store.fail_commits(0)

    @contextmanager
    def read_only(self) -> Iterator[None]:
        """Every write raises ``StoreReadOnlyError`` (as on a read-only disk); reads work."""
        self.store.set_read_only(True)
        try:
            yield
        finally:
            self.store.set_read_only(False)

    @contextmanager
    def lock_held(self, timeout: float = 0.05) -> Iterator[None]:
        """Another connection holds the write lock; writes wait ``timeout`` seconds, then
        raise ``StoreLockedError``."""
        with self.store.lock_held(timeout):
            yield


class CrashAfterChunk(BatchJobStrategy):
    """``strategy``, except that the worker crashes once per job, after the work of its
    chunk number ``chunks`` and before that chunk's checkpoint.

    The crash is ``SimulatedCrash`` (in this process), or with ``exit_code`` an
    immediate ``os._exit`` (in a worker subprocess: nothing runs after it, as
    after ``kill -9``). A job resumed afterwards redoes that chunk: at most one
    chunk is processed twice.
    """

    def __init__(
        self, strategy: BatchJobStrategy, chunks: int, *, exit_code: int | None = None
    ) -> None:
        if not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"chunks must be a positive integer, not {chunks!r}")
        self.strategy = strategy
        self.batch_type = strategy.batch_type
        self.chunk_size = strategy.chunk_size
        self.chunks = chunks
        self.exit_code = exit_code
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._crashed: set[str] = set()

    @property
    def identifier(self) -> str:
        return self.strategy.identifier

    def prepare(self, draft: JobDraft) -> JobDraft:
        return self.strategy.prepare(draft)

    def pre_process(self, run: JobRun) -> None:
        self.strategy.pre_process(run)

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        advanced = self.strategy.process_chunk(run, start, size)
        id = run.job.id
        with self._lock:
            self._counts[id] = count = self._counts.get(id, 0) + 1
            crash = count >= self.chunks and id not in self._crashed
            if crash:
                self._crashed.add(id)
        if crash:
            if self.exit_code is not None:
                os._exit(self.exit_code)
            raise SimulatedCrash(f"batch job {id} crashed after chunk {count}")
        return advanced

    def finalize(self, run: JobRun) -> None:
        self.strategy.finalize(run)

    def on_cancel(self, run: JobRun) -> None:
        self.strategy.on_cancel(run)

    def should_retry(self, run: JobRun, error: Exception) -> bool:
        return self.strategy.should_retry(run, error)

    def build_template(self) -> str | None:
        return self.strategy.build_template()


def crash_after_chunk(
    strategy: BatchJobStrategy | type[BatchJobStrategy],
    chunks: int,
    *,
    exit_code: int | None = None,
) -> CrashAfterChunk:
    """``strategy`` (a class or an instance) crashing after chunk ``chunks`` of each job;
    register it in its place. See ``CrashAfterChunk``."""
    instance = strategy() if isinstance(strategy, type) else strategy
    return CrashAfterChunk(instance, chunks, exit_code=exit_code)
