"""The store protocol: what any database behind ``BatchJobs`` must do, and the records it speaks.

A store keeps batch jobs and their leases. Its methods take and return
records (``BatchJob``, ``Claim``, ``Lease``, ``Checkpoint``, plain dicts and
datetimes), never SQL or JSON text, so the layers above work the same on
every backend. Each method's docstring is its contract: what it does
atomically, which guard decides it, what it returns, what it raises.

Every method may raise a ``StoreError`` subclass (``errors.py``) when the
database itself fails: ``StoreReadOnlyError``, ``StoreUnreachableError``,
``StoreCorruptError``, ``StoreLockedError``, ``StoreClosedError``. No driver
error (``sqlite3.Error``, ``psycopg.Error``) crosses the boundary.

Leases. A claim leases a job to an ``owner`` (the worker's identity) under a
fresh ``token``, unique to that claim. Every write on behalf of a running
job is guarded by its token: a worker whose lease expired and was taken over
by another claim can no longer write, even if it is the same process. A lease
ends in one of two ways: a checkpoint with ``release=True`` (the job ends or
is handed over), or ``release``. A lease expires at its time, or at once when
its owner is one of a claim's ``gone`` owners: the runner found that process
dead (it was on the runner's host), and the claim that takes its lease is the
same guarded write as for an expired one, so of two claimers one wins.

Schedules. A recurring job's schedule is a ``Schedule`` record keyed by its
name. Every change to one is guarded by the ``revision`` it was computed
from and counts one more; firing one (``fire_schedule``) is a guarded write
too, and inserts the fire's jobs in its transaction: a fire time makes its
jobs once, however many processes try.

Events (the outbox). Every write that changes a job also writes, in its
transaction, the events it makes: ``insert`` ``batch.created``;
``transition`` the event of the status entered; ``merge`` ``batch.updated``;
``save`` one per step and ``batch.updated`` when it changed the result, the
context or the cursor (``checkpoint_events`` says which, in which order);
``fire_schedule`` its jobs' ``batch.created``. Each event gets the next
``seq``: seqs increase by one per event in the order the transactions commit,
so a reader that has seen ``seq`` never later finds an event below it. Each
event carries the job as of the event. Nothing is written for a write whose
guard failed or that rolled back. After the commit, ``on_events`` (if set)
gets the events the transaction wrote, in the committing thread. A backend
stores the events of one job in one transaction as one row (the job as of
its last event, and what differs at each earlier one: ``_event_rows``), so
``delete``, which deletes the jobs' events with them, and ``prune_events``,
which deletes the oldest events, remove whole rows; a read ``after`` a seq
that was pruned raises ``EventsPrunedError``, never skips them.

Cursors. A named cursor (``take_cursor``/``move_cursor``) is a reader's
position in the outbox, leased to one owner at a time: how the Redis mirror
publishes every event once, in seq order, whichever process runs it.

Cleanups. A job canceled after its processing began owes its strategy's
``on_cancel`` a run. The cancel (``transition`` to ``canceled``) marks such a
job for cleanup; ``claim`` offers marked jobs to workers like runnable ones
(their claims carry a ``canceled`` job); ``claim_cleanup`` takes the cleanup
directly; ``finish_cleanup`` unmarks it. Taking a cleanup is one guarded
write, so one process runs ``on_cancel``; one that dies while running it
leaves the mark, and the cleanup is claimed again when its lease expires.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..models import (
    ACTIVE_STATUSES,
    TIMESTAMP_FIELDS,
    UPDATED_EVENT,
    BatchJob,
    Event,
    Schedule,
    Status,
    status_event,
)

__all__ = [
    "DATE_OPERATORS",
    "FILTER_NAMES",
    "ORDER_FIELDS",
    "Checkpoint",
    "Claim",
    "ClaimRequest",
    "Holder",
    "Lease",
    "Store",
    "StoredJob",
    "checkpoint_events",
]

#: Columns ``list_and_count`` may order by.
ORDER_FIELDS = ("id", "type", "status", "created_by", *TIMESTAMP_FIELDS)
#: Operators of a date filter.
DATE_OPERATORS = ("gt", "gte", "lt", "lte")
#: What ``list_and_count`` and ``count`` filter on.
FILTER_NAMES = ("id", "status", "type", "created_by", *TIMESTAMP_FIELDS)
#: Filters that a counts table (one row per type, status and creator) can answer.
COUNTED_FILTERS = frozenset({"status", "type", "created_by"})


def filter_values(value: Any) -> tuple[list[Any], bool]:
    """A value filter (one value or a list; ``Status`` or text; ``None`` for NULL)
    as the named values and whether NULL is asked for too."""
    values = [value] if isinstance(value, (str, Status)) or value is None else list(value)
    named = [v.value if isinstance(v, Status) else v for v in values if v is not None]
    return named, len(named) < len(values)


def countable(filters: Mapping[str, Any]) -> bool:
    """Whether a counts table answers ``count(filters)``: only counted filters, and
    no unnamed creator (``None`` or ``""``), which the counts table does not tell apart."""
    created_by = filters.get("created_by")
    unnamed = (
        created_by is None
        and "created_by" in filters
        or created_by == ""
        or (isinstance(created_by, list) and ("" in created_by or None in created_by))
    )
    return filters.keys() <= COUNTED_FILTERS and not unnamed


@dataclass(frozen=True)
class Lease:
    """One claim's hold on job ``id``: ``token`` proves it, and is never reused."""

    id: str
    token: str


@dataclass(frozen=True)
class Claim:
    """A job leased to a worker, with what it needs to run or resume it.

    ``job.status`` is ``canceled`` for a claimed cleanup (run ``on_cancel``,
    then ``finish_cleanup``).
    """

    job: BatchJob
    lease: Lease
    #: Until when nobody else may claim the job (unless the lease is renewed).
    expires_at: datetime
    #: The cursor saved with the last checkpoint (``{}`` before the first).
    cursor: dict[str, Any] = field(default_factory=dict)
    #: How many times the job was taken over from a lease that expired unreleased.
    attempts: int = 0


@dataclass(frozen=True)
class Holder:
    """Who holds a job's lease, and until when."""

    owner: str
    token: str
    expires_at: datetime | None


@dataclass(frozen=True)
class ClaimRequest:
    """What a worker asks ``claim`` for."""

    #: The worker's identity, recorded on each lease.
    owner: str
    #: Only jobs of these types (the worker has their strategies).
    types: tuple[str, ...]
    #: The time the claim is made at: leases that expired by then are free.
    now: datetime
    #: When the new leases expire.
    lease_until: datetime
    #: Only jobs in these (active) statuses.
    statuses: tuple[Status, ...] = ACTIVE_STATUSES
    #: Only these jobs (``batchjobs run`` claims its own), or any.
    ids: tuple[str, ...] | None = None
    #: Jobs to claim at most.
    limit: int = 1
    #: Whether canceled jobs owing a cleanup are offered too.
    cleanups: bool = True
    #: Owners known to be dead (processes of this host that ended): their
    #: leases count as expired at ``now``, however long they had to run.
    gone: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    """One guarded write of a running job's progress (``Store.save``).

    Applies only while the job's status is ``expect`` and ``lease`` still
    holds it. ``steps`` are the transitions since the last checkpoint, each
    with its time: the job takes the last one's status and each one's
    timestamp. ``result`` and ``context`` merge shallowly (top-level keys);
    ``cursor``, when given, replaces the saved one. The lease is renewed
    until ``until`` (``None``: left as it is); with ``release`` it is given up
    instead, and ``until`` (if given) is when the job may be claimed again (a
    retry's backoff).
    """

    lease: Lease
    expect: Status
    now: datetime
    steps: tuple[tuple[Status, datetime], ...] = ()
    result: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    cursor: Mapping[str, Any] | None = None
    until: datetime | None = None
    release: bool = False


@dataclass(frozen=True)
class StoredJob:
    """A job with what its store keeps beside it: what ``dump`` reads and ``load``
    writes, to move jobs from one database to another."""

    job: BatchJob
    #: The cursor saved with the last checkpoint (``{}`` before the first).
    cursor: dict[str, Any] = field(default_factory=dict)
    #: Whether the job, canceled while it ran, still owes its ``on_cancel``.
    cleanup: bool = False
    #: How many times the job was taken over from a lease that expired unreleased.
    attempts: int = 0
    #: Until when a worker holds it (``None``: nobody does); ``load`` writes no lease.
    leased_until: datetime | None = None
    #: Its idempotency key (``insert(job, key=...)``), if it has one.
    key: str | None = None


def checkpoint_events(
    after: BatchJob, checkpoint: Checkpoint, earlier: Mapping[str, Any]
) -> list[tuple[str, BatchJob, datetime, Mapping[str, Any]]]:
    """The events ``checkpoint`` makes, the job ending as ``after``: (name, job, at,
    the fields in which that job differs from ``after``).

    ``earlier`` holds the values, before the checkpoint, of the timestamp
    fields its steps set (its status before was ``checkpoint.expect``: its
    guard). One event per step, each with the job as at that step (its result
    as committed), and ``batch.updated`` when the checkpoint changed the
    result, the context or the cursor: after the steps, or before a final
    ``completed``/``failed`` step. The last event's job is ``after``. Every
    backend writes exactly these.
    """
    steps = checkpoint.steps
    count = len(steps)
    updated = bool(checkpoint.result or checkpoint.context or checkpoint.cursor is not None)
    if not count:
        return [(UPDATED_EVENT, after, checkpoint.now, {})] if updated else []
    # Each step's timestamp field as it was before that step (an earlier step may
    # have set it too), then undone from the end: how the job differs from
    # ``after`` once k steps are taken (as_of[k]; none for k = count).
    values = dict(earlier)
    before = []
    for status, at in steps:
        field = status.timestamp_field
        before.append(values[field])
        values[field] = at
    as_of: list[dict[str, Any]] = [{}] * (count + 1)
    undone: dict[str, Any] = {}
    for k in range(count - 1, -1, -1):
        undone[steps[k][0].timestamp_field] = before[k]
        as_of[k] = {"status": steps[k - 1][0] if k else checkpoint.expect, **undone}
    final = updated and steps[-1][0] in (Status.COMPLETED, Status.FAILED)
    events: list[tuple[str, BatchJob, datetime, Mapping[str, Any]]] = []
    job = after.replace(**as_of[0]) if final and count == 1 else after
    for k, (status, at) in enumerate(steps, start=1):
        if final and k == count:
            events.append((UPDATED_EVENT, job, checkpoint.now, as_of[k - 1]))
        job = after.replace(**as_of[k]) if k < count else after
        events.append((status_event(status), job, at, as_of[k]))
    if updated and not final:
        events.append((UPDATED_EVENT, after, checkpoint.now, {}))
    return events


class Store(abc.ABC):
    """The store protocol. Implementations: ``sqlite.SQLiteStore`` and
    ``postgres.PostgresStore`` (``open_store`` picks one).

    Safe to share between threads. Times passed in are timezone-aware UTC;
    records come back with timezone-aware UTC datetimes.
    """

    #: A name for messages: the file, or the URL without credentials.
    location: str = ""
    #: Written on each event row: which ``BatchJobs`` committed it (``None``: unnamed).
    origin: str | None = None
    #: Called after each commit that wrote events, with them in seq order, in the
    #: committing thread; never for a transaction that rolled back. What it raises
    #: is logged: the write it reports is committed.
    on_events: Callable[[Sequence[Event]], None] | None = None

    # -- the store itself ------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None:
        """Release every connection. Later calls raise ``StoreClosedError``; idempotent."""

    def provision(self, threads: int) -> None:
        """Get ready for ``threads`` worker threads using the store at once (a pool's
        size). Does nothing unless the store keeps such a pool."""
        return None

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from a thread of the store's) whenever another process may
        have made a job runnable; returns the function that stops it.

        The wake-ups are hints: claims stay the source of truth. ``None``: this
        store cannot hear other processes (SQLite: the Redis mirror does it).
        """
        return None

    # -- jobs ------------------------------------------------------------------

    @abc.abstractmethod
    def insert(self, job: BatchJob, *, key: str | None = None) -> BatchJob:
        """Write a new job, as given (no lease, no cleanup due); returns it.

        Atomic. ``StoreError`` if a job with its id exists. With ``key`` (an
        idempotency key, unique among the jobs of one ``created_by``, ``None``
        being one creator too): if a job of ``job.created_by`` has that key,
        nothing is written and that job is returned. One guarded insert
        decides: of concurrent inserts with one key, one writes, the others
        return its job.
        """

    @abc.abstractmethod
    def get_by_key(self, key: str, *, created_by: str | None) -> BatchJob | None:
        """The job of ``created_by`` inserted with ``key``, or ``None``."""

    @abc.abstractmethod
    def get(self, id: str) -> BatchJob | None:
        """The job ``id`` as last committed, or ``None``."""

    @abc.abstractmethod
    def status_of(self, id: str) -> Status | None:
        """Just the status of job ``id`` (cheaper than ``get``), or ``None``."""

    @abc.abstractmethod
    def list_and_count(
        self,
        *,
        filters: Mapping[str, Any] | None = None,
        limit: int = 20,
        offset: int = 0,
        order: str = "-created_at",
    ) -> tuple[list[BatchJob], int]:
        """A page of jobs matching ``filters``, and how many match in all, from one snapshot.

        ``filters`` (already checked by the caller): ``id``/``status``/
        ``type``/``created_by`` → a value or a list (an empty list matches
        nothing; ``created_by=None`` matches jobs without one); a timestamp
        field → ``None`` (is null) or ``{"gt"|"gte"|"lt"|"lte": datetime}``.
        ``order``: one of ``ORDER_FIELDS``, ``-`` first for descending; ties
        are broken by id in the same direction. ``InvalidDataError`` for an
        unknown order.
        """

    @abc.abstractmethod
    def count(self, *, filters: Mapping[str, Any] | None = None) -> int:
        """How many jobs match ``filters`` (as ``list_and_count``)."""

    @abc.abstractmethod
    def transition(
        self,
        id: str,
        *,
        from_statuses: Iterable[Status],
        to: Status,
        now: datetime,
        clear: Iterable[str] = (),
        reset_claim: bool = False,
    ) -> BatchJob | None:
        """Move job ``id`` to ``to`` if its status is one of ``from_statuses``: one guarded write.

        Sets ``to``'s timestamp and ``updated_at`` to ``now``; ``clear`` names
        timestamp fields set back to null; ``reset_claim`` drops any lease,
        backoff and attempt count. A move to ``canceled`` of a job whose
        processing began (``processing_at`` set) marks it for cleanup; its
        lease, if any, stays (its worker finds the cancel at its checkpoint).
        Returns the new record, or ``None`` when the guard did not match
        (unknown id included): zero rows changed means someone else moved it.
        """

    @abc.abstractmethod
    def merge(
        self,
        id: str,
        *,
        now: datetime,
        context: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> BatchJob | None:
        """Shallowly merge ``context`` and ``result`` into job ``id``, atomically.

        Whatever its status or lease. Returns the new record, or ``None`` if
        there is no such job.
        """

    @abc.abstractmethod
    def delete(
        self,
        ids: Iterable[str],
        *,
        statuses: Iterable[Status] | None = None,
        updated_before: datetime | None = None,
    ) -> list[str]:
        """Delete jobs ``ids`` (only those still in ``statuses``, and last updated before
        ``updated_before``, if given), atomically.

        Returns the ids actually deleted: a job that moved meanwhile stays.
        """

    @abc.abstractmethod
    def dump(self, *, after: str | None = None, limit: int = 1000) -> list[StoredJob]:
        """Up to ``limit`` jobs whose id sorts after ``after``, by id, with their
        cursors, cleanup marks, attempts and lease expiries. A read."""

    @abc.abstractmethod
    def load(self, jobs: Sequence[StoredJob]) -> int:
        """Write ``jobs`` (cursors, marks and attempts included, no lease), atomically;
        a job whose id is already stored is left as it is. Returns how many were written."""

    # -- claims, checkpoints, leases ---------------------------------------------

    @abc.abstractmethod
    def claim(self, request: ClaimRequest) -> list[Claim]:
        """Lease up to ``request.limit`` jobs to ``request.owner``, oldest first; atomic.

        A job is claimable when its type is one of ``request.types`` and its
        status one of ``request.statuses`` (or it is a canceled job owing a
        cleanup, with ``request.cleanups``), and it has no lease that is live
        at ``request.now`` nor a backoff after it. A lease held by one of
        ``request.gone`` is expired, whatever its time. A job whose lease
        expired unreleased (its worker died) comes first, before any free job,
        and alone: its claim counts one more ``attempts``. Whether a lease is
        expired is decided inside the claim's guarded write. Each claim gets a new
        token. Two concurrent claims never lease one job twice (any process,
        any connection). Returns ``[]`` when nothing is claimable.
        """

    @abc.abstractmethod
    def save(self, checkpoint: Checkpoint) -> BatchJob | None:
        """Apply ``checkpoint``: one guarded write (status ``expect`` and the lease's token).

        Returns the job as committed, or ``None`` when the guard failed: the
        job was canceled (or otherwise moved), or its lease was lost.
        """

    @abc.abstractmethod
    def commit(
        self,
        checkpoints: Sequence[Checkpoint],
        *,
        release: Iterable[Lease] = (),
        claim: ClaimRequest | None = None,
    ) -> tuple[list[BatchJob | None], list[Claim]]:
        """In one transaction: ``save`` each checkpoint, ``release`` leases, then ``claim``.

        All or nothing: if it raises, none of it happened. Returns each
        checkpoint's outcome (as ``save``) and the new claims (``[]`` without
        ``claim``).
        """

    @abc.abstractmethod
    def renew(self, leases: Iterable[Lease], until: datetime) -> list[str]:
        """Extend ``leases`` until ``until``; returns the ids of the jobs still held."""

    @abc.abstractmethod
    def release(self, leases: Iterable[Lease]) -> int:
        """Give up ``leases`` (each job is claimable at once); returns how many were held."""

    @abc.abstractmethod
    def release_all(self, owner: str) -> int:
        """Give up every lease ``owner`` holds; returns how many."""

    @abc.abstractmethod
    def holds(self, lease: Lease) -> Status | None:
        """The job's status if ``lease`` still holds it, else ``None``."""

    def holding(self, leases: Sequence[Lease]) -> list[Status | None]:
        """``holds`` for each of ``leases``, in order (a store over a network reads them
        at once)."""
        return [self.holds(lease) for lease in leases]

    @abc.abstractmethod
    def lease_owners(self, now: datetime) -> list[str]:
        """The owners of the leases live at ``now``, each once (a read: whether one of
        them is dead is the runner's to say, in a claim's ``gone``)."""

    @abc.abstractmethod
    def holder(self, id: str) -> Holder | None:
        """Who holds job ``id``'s lease (live or expired), or ``None`` when nobody does."""

    @abc.abstractmethod
    def claim_cleanup(
        self,
        id: str,
        *,
        owner: str,
        now: datetime,
        lease_until: datetime,
        lease: Lease | None = None,
        began: bool = False,
        gone: tuple[str, ...] = (),
    ) -> Claim | None:
        """Take the cleanup of canceled job ``id``: one guarded write decides who cleans up.

        Without ``lease``: succeeds only if the job is canceled, marked for
        cleanup and has no live lease (one held by one of ``gone`` is not, as
        in ``claim``); leases it to ``owner`` under a new
        token. With ``lease`` (the worker that ran the job found the cancel
        at its checkpoint): succeeds only while that lease still holds the
        canceled job and its processing began, which is ``processing_at``
        set, or ``began``: the worker's run began processing after its last
        commit (so the cancel did not mark the job); marks the cleanup and
        keeps the token. A job canceled before its processing began owes no
        cleanup: ``on_cancel`` runs once, and only for a job that processed.
        Returns the claim, or ``None`` if someone else has it or nothing is
        owed.
        """

    @abc.abstractmethod
    def finish_cleanup(self, lease: Lease) -> bool:
        """Unmark job ``lease.id``'s cleanup and give its lease up, if ``lease`` still holds it."""

    @abc.abstractmethod
    def pending(self, types: Sequence[str]) -> tuple[int, datetime | None]:
        """How many jobs of ``types`` are active or owe a cleanup, and the earliest
        time one of them has no lease nor backoff (``None``: one is free now)."""

    # -- schedules -------------------------------------------------------------

    @abc.abstractmethod
    def get_schedule(self, name: str) -> Schedule | None:
        """The schedule ``name`` as last committed, or ``None``."""

    @abc.abstractmethod
    def list_schedules(self) -> list[Schedule]:
        """Every schedule, by name."""

    @abc.abstractmethod
    def due_schedules(self, now: datetime, types: Sequence[str]) -> list[Schedule]:
        """The schedules of ``types``, not paused, whose ``next_fire_at`` is at or before
        ``now``, the most overdue first. A read: firing one is ``fire_schedule``'s."""

    @abc.abstractmethod
    def save_schedule(self, schedule: Schedule, *, expect_revision: int | None) -> Schedule | None:
        """Write ``schedule`` whole: one guarded write.

        ``expect_revision=None`` inserts it, only if no schedule has its
        name; otherwise it replaces the stored one only while that one's
        revision is still ``expect_revision``. Returns the record as stored
        (its ``revision`` one past the expected one, 1 for a new schedule), or
        ``None`` when the guard failed: the name is taken, or the schedule was
        changed, fired or removed since it was read (read it again, decide
        again). Nothing is written then.
        """

    @abc.abstractmethod
    def fire_schedule(
        self,
        schedule: Schedule,
        *,
        next_fire_at: datetime | None,
        jobs: Sequence[BatchJob],
        fired_at: datetime | None,
        now: datetime,
        error: str | None = None,
    ) -> Schedule | None:
        """Claim the fire due at ``schedule.next_fire_at`` and insert its ``jobs``, atomically.

        One transaction: move ``next_fire_at`` on from the value read to
        ``next_fire_at``, guarded by that value, the revision read and the
        schedule's not being paused; then insert ``jobs`` (possibly none) as
        ``insert`` does. ``fired_at`` (the fire time of the last job) and the
        last job's id become ``last_fired_at`` and ``last_job_id`` when there
        are jobs; ``error`` (why the fire made none) becomes ``last_error``.
        Of several callers holding the same record, exactly one gets through.
        Returns the schedule as stored, or ``None`` when the guard failed
        (fired elsewhere, paused, changed or removed): nothing was written.
        If a job cannot be inserted, it raises and nothing was written.
        """

    @abc.abstractmethod
    def delete_schedule(self, name: str) -> Schedule | None:
        """Remove the schedule ``name``, atomically; returns it as it was, or ``None``.

        The jobs it made stay. A fire racing the removal either commits first
        (its jobs stay) or finds the schedule gone and writes nothing.
        """

    # -- events (the outbox) ---------------------------------------------------

    @abc.abstractmethod
    def events(
        self,
        *,
        after: int | None = None,
        limit: int = 1000,
        job_id: str | None = None,
        created_by: str | None = None,
    ) -> list[Event]:
        """Up to ``limit`` events with a seq above ``after``, oldest first, from one snapshot.

        ``after=None`` reads from the oldest event kept. Only job ``job_id``'s,
        or only those of jobs ``created_by`` that user, when given. ``limit``
        counts events (a page may end inside a row, and ``after`` fall inside
        one). ``EventsPrunedError`` (with the oldest seq kept) when events after
        ``after`` were deleted by ``prune_events``; ``InvalidDataError`` for a
        negative ``after`` or one beyond the last seq ever written (a
        position in another database).
        """

    def watch(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` after every commit that wrote events, from any process, if
        this backend can tell (PostgreSQL's ``NOTIFY``); returns how to stop, or
        ``None`` when it cannot (readers then poll)."""
        return None

    @abc.abstractmethod
    def last_seq(self) -> int:
        """The seq of the last event committed (0 before the first)."""

    @abc.abstractmethod
    def prune_events(self, *, before: datetime, limit: int) -> int:
        """Delete the oldest events, stopping at the first one at or after ``before``
        and once ``limit`` are deleted: one transaction, the oldest first, so what is
        kept is always every event above one seq. The events of one job in one
        transaction go together (their row), dated by the last of them, so up to
        one row's worth more than ``limit`` may go. Returns how many were deleted."""

    @abc.abstractmethod
    def take_cursor(
        self, name: str, *, owner: str, now: datetime, until: datetime, start: int
    ) -> tuple[int, bool]:
        """Lease cursor ``name`` to ``owner`` until ``until`` if nobody else holds it live at
        ``now``: one guarded write. A cursor that does not exist yet is made at ``start``.

        Returns its seq and whether ``owner`` holds it now.
        """

    @abc.abstractmethod
    def move_cursor(
        self, name: str, *, owner: str, seq: int, until: datetime | None = None
    ) -> bool:
        """Set cursor ``name`` to ``seq`` if ``owner`` holds it: one guarded write.

        The lease is extended until ``until``, or given up when ``until`` is
        ``None``. False (nothing written) if ``owner`` no longer holds it.
        """

    # -- fault injection: what batchjobs.testing drives ------------------------

    @abc.abstractmethod
    def set_read_only(self, read_only: bool) -> None:
        """Make the database refuse writes, as a read-only disk does (or stop).

        While set, every write raises ``StoreReadOnlyError`` and reads work.
        """

    @abc.abstractmethod
    def lock_held(self, timeout: float = 0.05) -> AbstractContextManager[None]:
        """While the context lasts, another connection holds the database's write lock.

        This store waits ``timeout`` seconds for it (instead of its usual
        patience), then raises ``StoreLockedError``.
        """

    @abc.abstractmethod
    def fail_commits(self, times: int) -> None:
        """Make the next ``times`` write transactions fail at their commit.

        Each raises a ``StoreError`` and is rolled back whole, as when the
        disk fails under a commit.
        """
