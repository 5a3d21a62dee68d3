"""Lifecycle operations: create, retrieve, list, update, confirm, cancel, retry.

``BatchJobService`` checks input and makes guarded transitions through the
store; the store writes each change's event in its transaction, and
``BatchJobs`` sends it to receivers after the commit. Running jobs is
``runner.JobRunner``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import BatchJobError, InvalidDataError, NotAllowedError, NotFoundError
from .files import FileStore
from .limits import MAX_ID_LENGTH, MAX_INTEGER, MAX_LIST_LIMIT, check_key, check_text
from .limits import check_json_object as _within_limits
from .models import (
    RESTING_STATUSES,
    TIMESTAMP_FIELDS,
    BatchJob,
    Pruned,
    Status,
    new_job_id,
    utcnow,
)
from .store import DATE_OPERATORS, FILTER_NAMES, Store
from .strategy import JobDraft, StrategyRegistry

__all__ = [
    "FILTER_NAMES",
    "PAUSABLE_STATUSES",
    "PRUNE_PAGE",
    "BatchJobService",
    "check_json_object",
]

#: Statuses ``pause`` takes a job from.
PAUSABLE_STATUSES = (Status.CONFIRMED, Status.PROCESSING)
#: Jobs fetched and deleted at a time by ``prune``.
PRUNE_PAGE = 500

log = logging.getLogger("batchjobs")


def check_json_object(name: str, value: Any, *, optional: bool = True) -> dict[str, Any]:
    """``value`` as a dict if it is a JSON object (``None``: empty, when ``optional``);
    otherwise ``InvalidDataError`` naming the field ``name``."""
    if value is None and optional:
        return {}
    if isinstance(value, Mapping) and not isinstance(value, dict):
        value = dict(value)
    return _within_limits(name, value)


def _as_datetime(name: str, value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidDataError(f"{name}: {value!r} is not an ISO 8601 date") from None
    if not isinstance(value, datetime):
        raise InvalidDataError(f"{name} takes a datetime or an ISO 8601 string")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:  # in UTC, as times are stored: the same instant on every backend
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise InvalidDataError(f"{name}: {value.isoformat()} is out of range in UTC") from None


def _check_draft(draft: JobDraft) -> JobDraft:
    draft.context = check_json_object("context", draft.context, optional=False)
    if not isinstance(draft.dry_run, bool):
        raise InvalidDataError(f"dry_run must be a boolean, not {draft.dry_run!r}")
    if draft.created_by is not None:
        check_text("created_by", draft.created_by)
    return draft


def _same_type(job: BatchJob, type: str, key: str) -> BatchJob:
    """``job``, found by ``key``, if it is of ``type``; else ``InvalidDataError``."""
    if job.type != type:
        raise InvalidDataError(
            f"key {key!r} belongs to {job.id}, a {job.type} job, not a {type} job"[:300]
        )
    return job


def _could_be_an_id(id: Any) -> bool:
    """Whether ``id`` is worth a look in the store: ids are short ASCII text."""
    return isinstance(id, str) and len(id) <= MAX_ID_LENGTH and id.isascii()


class BatchJobService:
    """Lifecycle operations over one store; events go out with ``sender``."""

    def __init__(
        self,
        store: Store,
        registry: StrategyRegistry,
        *,
        sender: Any = None,
        files: FileStore | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        #: The file store; ``prepare`` sees it as the job's creator does.
        self.files = files
        self.sender = sender if sender is not None else self
        #: Called after a job becomes runnable here (created, confirmed,
        #: retried); the scheduler wakes on it instead of waiting for its poll.
        self.on_runnable: Callable[[], None] | None = None
        #: Called with a job this service just canceled (``BatchJobs`` has the
        #: runner clean up after a job no worker is running).
        self.on_canceled: Callable[[BatchJob], Any] | None = None

    def _runnable(self) -> None:
        # After a commit: the caller must learn that its write happened, so
        # a failed wake-up is logged (polling finds the job), never raised.
        if self.on_runnable is not None:
            try:
                self.on_runnable()
            except Exception:
                log.exception("could not wake the workers; they find the job at their next poll")

    def create(
        self,
        type: str,
        context: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
        created_by: str | None = None,
        key: str | None = None,
    ) -> BatchJob:
        """Create a job of ``type``; it is pre-processed by the next worker.

        With ``key``: the job of ``created_by`` that has this key, if there is
        one, is returned as it is (nothing written, ``prepare`` not run);
        otherwise a new job gets it. ``InvalidDataError`` if that job is of
        another type.
        """
        if key is not None:
            check_key(key)
            if created_by is not None:
                check_text("created_by", created_by)
            found = self.store.get_by_key(key, created_by=created_by)
            if found is not None:
                return _same_type(found, type, key)
        job = self.draft(type, context, dry_run=dry_run, created_by=created_by)
        stored = self.store.insert(job, key=key)
        if stored.id != job.id and key is not None:  # another create with it came first
            return _same_type(stored, type, key)
        self.created(job)
        return job

    def draft(
        self,
        type: str,
        context: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
        created_by: str | None = None,
        now: datetime | None = None,
    ) -> BatchJob:
        """The ``created`` record ``create`` would write (input checked, ``prepare`` run),
        unwritten: for a caller that writes it in a transaction of its own, then
        calls ``created``."""
        check_text("type", type)
        strategy = self.registry.get(type)
        draft = _check_draft(
            JobDraft(type, check_json_object("context", context), dry_run, created_by)
        )
        if self.files is not None:
            draft.files = self.files.for_user(draft.created_by)
        # Checked again: prepare() may normalise the draft, not break it.
        draft = _check_draft(strategy.prepare(draft))
        if draft.type != type:
            raise InvalidDataError("prepare() may not change a job's type")
        now = now or utcnow()
        return BatchJob(
            id=new_job_id(now),
            type=type,
            status=Status.CREATED,
            created_by=draft.created_by,
            dry_run=draft.dry_run,
            context=draft.context,
            result={},
            created_at=now,
            updated_at=now,
        )

    def created(self, job: BatchJob) -> None:
        """After a new job's row (and its ``batch.created`` event) is committed: wake workers."""
        self._runnable()

    def retrieve(self, id: str) -> BatchJob:
        """The job ``id``; ``NotFoundError`` if there is none."""
        job = self.store.get(id) if _could_be_an_id(id) else None
        if job is None:
            raise NotFoundError.for_id(id)
        return job

    def list_and_count(
        self,
        *,
        limit: int = 20,
        offset: int = 0,
        order: str = "-created_at",
        **filters: Any,
    ) -> tuple[list[BatchJob], int]:
        """A page of jobs and the number of jobs matching ``filters``."""
        for name, number in (("limit", limit), ("offset", offset)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise InvalidDataError(f"{name} must be a non-negative integer, not {number!r}")
            if number > MAX_INTEGER:
                raise InvalidDataError(f"{name} must be at most {MAX_INTEGER}, not {number}")
        if limit > MAX_LIST_LIMIT:
            raise InvalidDataError(f"limit must be at most {MAX_LIST_LIMIT}, not {limit}")
        checked: dict[str, Any] = {}
        value: Any
        for name, value in filters.items():
            if name not in FILTER_NAMES:
                raise InvalidDataError(
                    f"cannot filter on {name!r}; filters: {', '.join(FILTER_NAMES)}"
                )
            if name in TIMESTAMP_FIELDS:
                if value is not None:
                    if not isinstance(value, Mapping) or not value:
                        raise InvalidDataError(
                            f"{name} takes None or a dict of gt/gte/lt/lte, not {value!r}"
                        )
                    for op in value:
                        if op not in DATE_OPERATORS:
                            raise InvalidDataError(
                                f"{name}: unknown operator {op!r}; use gt, gte, lt or lte"
                            )
                    value = {op: _as_datetime(name, v) for op, v in value.items()}
            elif name == "status":
                values = [value] if isinstance(value, str) else list(value)
                for v in values:
                    if v not in {s.value for s in Status}:
                        raise InvalidDataError(f"unknown status {v!r}")
                value = values
            checked[name] = value
        return self.store.list_and_count(filters=checked, limit=limit, offset=offset, order=order)

    def update(
        self,
        id: str,
        *,
        context: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> BatchJob:
        """Merge ``context`` and ``result`` into the job, key by key (shallow)."""
        context = check_json_object("context", context)
        result = check_json_object("result", result)
        job = self.store.merge(self.retrieve(id).id, now=utcnow(), context=context, result=result)
        if job is None:
            raise NotFoundError.for_id(id)
        return job

    def confirm(self, id: str) -> BatchJob:
        """Confirm a pre-processed (dry run) job for processing."""
        if not _could_be_an_id(id):
            raise NotFoundError.for_id(id)
        job = self.store.transition(
            id, from_statuses=[Status.PRE_PROCESSED], to=Status.CONFIRMED, now=utcnow()
        )
        if job is None:
            self.retrieve(id)
            raise NotAllowedError(
                "Cannot confirm processing for a batch job that is not pre processed"
            )
        self._runnable()
        return job

    def cancel(self, id: str) -> BatchJob:
        """Cancel a job that has not ended; a running job stops at its next checkpoint."""
        while True:
            current = self.retrieve(id)
            if current.status == Status.CANCELED:
                return current
            if current.status in (Status.COMPLETED, Status.FAILED):
                raise NotAllowedError(f"Cannot cancel {current.status.value} batch job")
            job = self.store.transition(
                id,
                from_statuses=[
                    Status.CREATED,
                    Status.PRE_PROCESSED,
                    Status.CONFIRMED,
                    Status.PROCESSING,
                    Status.PAUSED,
                ],
                to=Status.CANCELED,
                now=utcnow(),
            )
            if job is not None:
                if self.on_canceled is not None:
                    self.on_canceled(job)
                return job
            # The job moved between our read and our write: look again.

    def pause(self, id: str) -> BatchJob:
        """Pause a confirmed or processing job: a worker running it stops at its next
        checkpoint, saves it and gives the job up, until ``resume``."""
        while True:
            job = self.store.transition(
                id, from_statuses=PAUSABLE_STATUSES, to=Status.PAUSED, now=utcnow()
            )
            if job is not None:
                return job
            current = self.retrieve(id)
            if current.status not in PAUSABLE_STATUSES:
                raise NotAllowedError(
                    f'Cannot pause a batch job with status "{current.status.value}"'
                )
            # It moved between our write and our read (confirmed → processing): again.

    def resume(self, id: str) -> BatchJob:
        """Send a paused job back to be processed from its checkpoint.

        A worker that still holds it (it had not reached its checkpoint since the
        pause) keeps its lease: it commits that checkpoint and gives the job up, and
        no other worker runs the job meanwhile.
        """
        job = self.store.transition(
            id,
            from_statuses=[Status.PAUSED],
            to=Status.CONFIRMED,
            now=utcnow(),
            clear=["paused_at"],
        )
        if job is None:
            current = self.retrieve(id)
            raise NotAllowedError(f'Cannot resume a batch job with status "{current.status.value}"')
        self._runnable()
        return job

    def retry(self, id: str) -> BatchJob:
        """Send a failed job back to be resumed from its checkpoint."""
        current = self.retrieve(id)
        to = Status.CONFIRMED if current.pre_processed_at else Status.CREATED
        job = None
        if current.status == Status.FAILED:
            job = self.store.transition(
                id,
                from_statuses=[Status.FAILED],
                to=to,
                now=utcnow(),
                clear=["failed_at"],
                reset_claim=True,
            )
        if job is None:
            raise NotAllowedError("Cannot retry a batch job that is not failed")
        self._runnable()
        return job

    def prune(
        self,
        older_than: timedelta,
        *,
        statuses: list[str] | None = None,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> Pruned:
        """Delete the resting jobs unchanged for longer than ``older_than``, and their files.

        Only resting statuses (``statuses``: some of them; default all) are
        pruned, and a job that moved meanwhile (retried, confirmed) stays.
        Rows go first: a crash in between leaves a stray file, never a job
        without its file. ``dry_run`` deletes nothing and says what would go.
        """
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidDataError(f"older_than must be a positive duration, not {older_than!r}")
        resting = sorted(s.value for s in RESTING_STATUSES)
        wanted = resting if statuses is None else list(statuses)
        for status in wanted:
            if status not in resting:
                raise InvalidDataError(
                    f"only resting jobs are pruned ({', '.join(resting)}), not {status!r}"
                )
        try:
            cutoff = (now or utcnow()) - older_than
        except OverflowError:  # before year 1: no job is that old
            cutoff = datetime.min.replace(tzinfo=timezone.utc)
        filters = {"status": wanted, "updated_at": {"lt": cutoff}}
        deleted: list[BatchJob] = []
        files: list[str] = []
        kept: list[tuple[str, str]] = []
        while True:
            page, _ = self.store.list_and_count(
                filters=filters,
                limit=PRUNE_PAGE,
                offset=len(deleted) if dry_run else 0,
                order="created_at",
            )
            if not page:
                break
            if not dry_run:
                # Guarded as listed: a job retried and ended again meanwhile stays.
                ids = [job.id for job in page]
                kept_in = [Status(status) for status in wanted]
                gone = set(self.store.delete(ids, statuses=kept_in, updated_before=cutoff))
                page = [job for job in page if job.id in gone]
                for job in page:
                    key = job.result.get("file_key")
                    if isinstance(key, str) and self.files is not None:
                        try:
                            if self.files.delete(key):
                                files.append(key)
                        except BatchJobError as error:  # a key the file store refuses
                            kept.append((key, error.message))
            deleted.extend(page)
        return Pruned(tuple(deleted), tuple(files), tuple(kept), dry_run)
