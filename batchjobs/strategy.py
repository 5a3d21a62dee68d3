"""Strategies: the base class whose hooks are the contract, the run handle, the registry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar

from .errors import InvalidDataError, MissingContextKeyError
from .models import BatchJob

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ENTRY_POINT_GROUP",
    "MAX_KEPT_ERRORS",
    "BatchJobStrategy",
    "JobDraft",
    "JobRun",
    "StrategyRegistry",
]

log = logging.getLogger("batchjobs.strategy")

#: Records per chunk unless the strategy or ``context["chunk_size"]`` says otherwise.
DEFAULT_CHUNK_SIZE = 100
#: ``result.errors`` keeps this many; ``result.error_count`` counts them all.
MAX_KEPT_ERRORS = 100
#: Installed packages add strategies through this entry-point group.
ENTRY_POINT_GROUP = "batchjobs.strategies"


class _Context(dict):  # type: ignore[type-arg]
    """A job's context as its strategy reads it: a missing key is the input's fault."""

    __slots__ = ()

    def __missing__(self, key: object) -> Any:
        raise MissingContextKeyError(key)


@dataclass
class JobDraft:
    """A job about to be created, as ``BatchJobStrategy.prepare`` sees it.

    ``files`` is the file store as ``created_by`` sees it (``None`` without a
    file store): ``prepare`` may check there that a ``file_key`` is the
    creator's, as the run will.
    """

    type: str
    context: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    created_by: str | None = None
    files: Any = field(default=None, compare=False, repr=False)


class JobRun:
    """The handle a strategy gets while its job runs.

    ``result`` and ``cursor`` are merged into the stored job at the next
    checkpoint; ``cursor`` comes back as it was saved when a job resumes.
    ``state`` is this run's scratch space, never saved (an open file kept
    from one chunk to the next); ``closing`` closes such things when the run
    ends, however it ends.

    ``files`` is the file store as the job's creator sees it
    (``FileStore.for_user(job.created_by)``): the job reads only files its
    creator owns, and what it writes is its creator's. A job the application
    created (``created_by`` ``None``) reaches every file.
    """

    def __init__(
        self,
        job: BatchJob,
        *,
        cursor: dict[str, Any] | None = None,
        files: Any = None,
        is_canceled: Callable[[], bool] | None = None,
    ) -> None:
        self._job = job
        self.result: dict[str, Any] = dict(job.result)
        self.cursor: dict[str, Any] = dict(cursor or {})
        self.files = None if files is None else files.for_user(job.created_by)
        self.log = logging.getLogger(f"batchjobs.job.{job.type}")
        self.state: dict[str, Any] = {}
        self._is_canceled = is_canceled
        self._canceled = False
        self._closers: list[Callable[[], Any]] = []

    @property
    def job(self) -> BatchJob:
        """The job as last committed. Reading a key its ``context`` lacks raises
        ``MissingContextKeyError`` (a ``KeyError`` and an ``InvalidDataError``):
        the job fails as refused input, which a retry would not change."""
        job = self._job
        if type(job.context) is not _Context:
            # Wrapped when read, not when set: the runner sets it at every commit.
            job = self._job = job.replace(context=_Context(job.context))
        return job

    @job.setter
    def job(self, job: BatchJob) -> None:
        self._job = job

    @property
    def canceled(self) -> bool:
        """True once the job was canceled; a long chunk may check it and stop early."""
        if not self._canceled and self._is_canceled is not None:
            self._canceled = self._is_canceled()
        return self._canceled

    def closing(self, resource: ClosableT) -> ClosableT:
        """Call ``resource.close()`` when this run ends (completed, failed, canceled,
        handed over); returns ``resource``."""
        self._closers.append(resource.close)
        return resource

    def close(self) -> None:
        """End the run: close what ``closing`` was given, the last first."""
        while self._closers:
            close = self._closers.pop()
            try:
                close()
            except Exception:
                log.exception("closing %r at the end of batch job %s failed", close, self.job.id)

    def set_count(self, count: int) -> None:
        """Record how many records the job has in all (``result.count``)."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"count must be a non-negative integer, not {count!r}")
        self.result["count"] = count
        done = self.result.get("advancement_count", 0)
        self.result["progress"] = min(done / count, 1.0) if count else 1.0

    def add_error(self, message: str, code: str = "error", **details: Any) -> None:
        """Record a per-record error in ``result.errors`` (the first 100 are kept)."""
        errors = list(self.result.get("errors") or [])
        if len(errors) < MAX_KEPT_ERRORS:
            errors.append({"message": message, "code": code, **details})
        self.result["errors"] = errors
        self.result["error_count"] = self.result.get("error_count", 0) + 1


class BatchJobStrategy:
    """How one type of batch job is pre-processed and processed.

    Subclass it, set ``batch_type`` and implement ``process_chunk``; every
    other hook is optional and does nothing by default. One instance serves
    every job of its type, from several threads: keep per-job state on the
    ``JobRun`` (``run.result``, ``run.cursor``), not on ``self``.
    """

    #: The job type this strategy handles (required).
    batch_type: str = ""
    #: Records per chunk; a job's ``context["chunk_size"]`` overrides it.
    chunk_size: int = DEFAULT_CHUNK_SIZE

    @property
    def identifier(self) -> str:
        """A name for the strategy; the class name unless a subclass sets one."""
        return type(self).__name__

    def prepare(self, draft: JobDraft) -> JobDraft:
        """Validate and normalise a job before its row exists.

        Raise ``InvalidDataError`` to refuse it; return the (possibly changed)
        draft to accept it.
        """
        return draft

    def pre_process(self, run: JobRun) -> None:
        """Count the records (``run.set_count``), preview, set ``stat_descriptors``.

        May run again after a crash, so it must not have side effects that
        cannot be repeated.
        """

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        """Process records ``[start, start + size)``; return how many advanced.

        Return 0 when nothing is left. Runs once per chunk; after a crash the
        last unfinished chunk runs again, so it should be safe to replay.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement process_chunk")

    def finalize(self, run: JobRun) -> None:
        """After the last chunk, before the job completes: close files, set ``file_key``."""

    def on_cancel(self, run: JobRun) -> None:
        """The job was canceled while it ran: clean up partial output."""

    def should_retry(self, run: JobRun, error: Exception) -> bool:
        """Whether a chunk that raised ``error`` is retried (up to ``max_retry``)."""
        return False

    def build_template(self) -> str | None:
        """A file users can fill in to make a job's input, or ``None``."""
        return None


class _Closable(Protocol):
    def close(self) -> Any: ...


ClosableT = TypeVar("ClosableT", bound=_Closable)
StrategyT = TypeVar("StrategyT", bound="BatchJobStrategy | type[BatchJobStrategy]")


class StrategyRegistry:
    """The strategies known to one ``BatchJobs``, by ``batch_type``."""

    def __init__(self) -> None:
        self._strategies: dict[str, BatchJobStrategy] = {}
        self._origins: dict[str, str] = {}

    def register(self, strategy: StrategyT, *, origin: str = "registered") -> StrategyT:
        """Add a strategy (a class or an instance); a later one replaces an earlier one."""
        instance = strategy() if isinstance(strategy, type) else strategy
        if not isinstance(instance, BatchJobStrategy):
            raise TypeError(f"{strategy!r} is not a BatchJobStrategy")
        batch_type = instance.batch_type
        if not isinstance(batch_type, str) or not batch_type:
            raise ValueError(f"{type(instance).__name__} must set batch_type")
        self._strategies[batch_type] = instance
        self._origins[batch_type] = origin
        return strategy

    def load_entry_points(self) -> None:
        """Register every strategy of the ``batchjobs.strategies`` entry-point group."""
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                dist = ep.dist.name if ep.dist is not None else "unknown package"
                self.register(ep.load(), origin=f"entry point ({dist})")
            except Exception:
                log.exception("could not load strategy entry point %s = %s", ep.name, ep.value)

    def get(self, batch_type: str) -> BatchJobStrategy:
        """The strategy for ``batch_type``; ``InvalidDataError`` if none."""
        try:
            return self._strategies[batch_type]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._strategies)) or "none"
            raise InvalidDataError(
                f"Unknown batch job type {batch_type!r}; registered types: {known}"
            ) from None

    def origin(self, batch_type: str) -> str:
        """Where the strategy for ``batch_type`` came from."""
        return self._origins[batch_type]

    @property
    def types(self) -> list[str]:
        """The registered types, sorted."""
        return sorted(self._strategies)

    def __contains__(self, batch_type: object) -> bool:
        return batch_type in self._strategies
