"""The outbox's read side: ``EventFeed`` follows the events as they commit; retention.

Every event is a row the store wrote in the transaction of its change, with
a ``seq`` one above the event committed before it. A reader keeps the last
``seq`` it handled and asks for what came after it: it misses nothing and
gets nothing twice, whatever happened between two reads (a crash, a Redis
outage), except what retention pruned meanwhile, which raises
``EventsPrunedError`` instead of leaving a silent gap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from .models import Event, utcnow
from .store import Store

__all__ = [
    "DEFAULT_EVENT_RETENTION",
    "DEFAULT_READ_LIMIT",
    "PRUNE_BATCH",
    "EventFeed",
    "EventNotifier",
    "prune_events",
]

#: How long events are kept by default.
DEFAULT_EVENT_RETENTION = timedelta(days=7)
#: Events read at once by default (``events(limit=...)``; a feed's page).
DEFAULT_READ_LIMIT = 1000
#: Events deleted by one retention transaction: small, so jobs' writes interleave.
PRUNE_BATCH = 500
#: Seconds closing waits for the feeds' reads in progress.
CLOSE_TIMEOUT = 5.0


class EventNotifier:
    """Tells waiting readers that events may have been committed: a counter and a condition.

    ``notify`` is called after each local commit that wrote events, and on
    each message from another process; ``close`` ends every wait for good.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._count = 0
        self._reading = 0
        self.closed = False

    @property
    def count(self) -> int:
        """How many notifications so far: read it before looking, pass it to ``wait``."""
        return self._count

    def notify(self) -> None:
        """Wake every reader waiting."""
        with self._condition:
            self._count += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float | None) -> bool:
        """Wait until a notification after ``seen`` (or ``close``); False on timeout."""
        with self._condition:
            return self._condition.wait_for(
                lambda: self._count != seen or self.closed, timeout=timeout
            )

    @contextmanager
    def reading(self) -> Iterator[bool]:
        """Around a reader's look at the store: False once closed (do not look);
        ``close`` waits for the looks in progress, so the store is never closed under one."""
        with self._condition:
            if self.closed:
                yield False
                return
            self._reading += 1
        try:
            yield True
        finally:
            with self._condition:
                self._reading -= 1
                self._condition.notify_all()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End every wait, now and later; wait up to ``timeout`` for the reads in progress."""
        with self._condition:
            self.closed = True
            self._condition.notify_all()
            self._condition.wait_for(lambda: self._reading == 0, timeout=timeout)


class EventFeed:
    """The events committed after a seq, as they commit: an iterator, or ``read`` steps.

    >>> for event in jobs.follow(after=last_seen):     # blocks for the next ones
    ...     handle(event)
    ...     last_seen = event.seq                     # store it: resume from it

    Woken by this process's commits and by ``notifier`` (Redis messages from
    other processes), it looks at the outbox every ``poll_interval`` seconds
    anyway. Iteration ends when the ``BatchJobs`` closes (or ``close()``).
    """

    def __init__(
        self,
        store: Store,
        notifier: EventNotifier,
        *,
        after: int | None = None,
        job_id: str | None = None,
        created_by: str | None = None,
        poll_interval: float = 1.0,
        limit: int = DEFAULT_READ_LIMIT,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.job_id = job_id
        self.created_by = created_by
        self.poll_interval = poll_interval
        self.limit = limit
        if after is None:
            after = store.last_seq()
        else:  # refuse a pruned or foreign position now, not at the first read
            store.events(after=after, limit=0)
        #: The seq of the last event read: the position to resume from.
        self.after: int = after
        self._closed = False

    def __iter__(self) -> Iterator[Event]:
        while not self.closed:
            yield from self.read()

    @property
    def closed(self) -> bool:
        """True once the feed or its ``BatchJobs`` was closed: iteration ends."""
        return self._closed or self.notifier.closed

    def close(self) -> None:
        """End the iteration (at its next wake-up)."""
        self._closed = True

    def read(self, timeout: float | None = None) -> list[Event]:
        """The next events after ``after`` (a page at most), waiting up to ``timeout``
        seconds for one (``None``: until one comes or the feed closes).

        The single step of every loop over a feed; ``[]`` when none came.
        ``EventsPrunedError`` if retention deleted events the feed had not read.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        filtered = self.job_id is not None or self.created_by is not None
        while True:
            seen = self.notifier.count
            with self.notifier.reading() as open_:
                if not open_:
                    return []
                # Filtered, the seq reached moves on past other jobs' events too, so
                # that a quiet feed does not fall behind retention.
                reached = self.store.last_seq() if filtered else 0
                events = self.store.events(
                    after=self.after,
                    limit=self.limit,
                    job_id=self.job_id,
                    created_by=self.created_by,
                )
            if events:
                self.after = events[-1].seq
                return events
            self.after = max(self.after, reached)
            if self.closed:
                return []
            wait = self.poll_interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                wait = min(wait, remaining)
            self.notifier.wait(seen, wait)


def prune_events(
    store: Store, retention: timedelta, now: datetime | None = None, *, batch: int = PRUNE_BATCH
) -> int:
    """Delete the events older than ``retention``, ``batch`` per transaction; how many.

    The workers call it every few minutes.
    """
    before = (now or utcnow()) - retention
    total = 0
    while True:
        deleted = store.prune_events(before=before, limit=batch)
        total += deleted
        if deleted < batch:
            return total
