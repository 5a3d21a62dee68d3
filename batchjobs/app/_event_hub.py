"""Where a ``BatchJobs``'s committed events go, and what wakes its readers of the outbox."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import signals
from ..events import EventFeed, EventNotifier
from ..models import Event
from ..store import Store

if TYPE_CHECKING:
    from ..pubsub import RedisMirror


class EventHub:
    """The events of ``sender``'s commits, passed on; its ``follow`` feeds, woken.

    ``committed`` runs after each commit that wrote events, in the committing
    thread: it wakes this process's feeds and the Redis mirror, then sends the
    blinker signals, in seq order. ``follow`` makes a feed; the first one also
    starts listening for other processes' commits (PostgreSQL's ``NOTIFY``,
    the mirror's messages), which wake the feeds too.
    """

    def __init__(self, sender: object, store: Store, mirror: RedisMirror | None) -> None:
        self.sender = sender
        self.store = store
        self.mirror = mirror
        self._notifier = EventNotifier()
        #: Whether the listeners waking this process's feeds (Redis, NOTIFY) are on.
        self._watching = False
        self._unwatch: list[Callable[[], None]] = []

    def committed(self, events: Sequence[Event]) -> None:
        """After a commit that wrote ``events``: wake the feeds and the mirror, then the
        receivers, in the committing thread, in seq order."""
        self._notifier.notify()
        if self.mirror is not None:
            self.mirror.wake(events)
        for event in events:
            signals.emit(event.event, self.sender, event.job, seq=event.seq)

    def follow(
        self,
        after: int | None,
        *,
        job_id: str | None,
        created_by: str | None,
        poll_interval: float,
    ) -> EventFeed:
        """A feed of the events committed after seq ``after`` (see ``BatchJobs.follow``)."""
        if not self._watching:  # other processes' commits wake the feeds too
            self._watching = True
            stop = self.store.watch(self._notifier.notify)
            if stop is not None:
                self._unwatch.append(stop)
            if self.mirror is not None:
                self.mirror.watch(self._notifier.notify)
        return EventFeed(
            self.store,
            self._notifier,
            after=after,
            job_id=job_id,
            created_by=created_by,
            poll_interval=poll_interval,
        )

    def close(self) -> None:
        """End every feed, at once and for good, and stop listening for other processes."""
        self._notifier.close()
        while self._unwatch:
            self._unwatch.pop()()

    def reset_after_fork(self) -> None:
        """In a forked child: the listeners waking the parent's feeds (Redis, NOTIFY) do
        not run here, and stopping them is the parent's business: the child's first
        ``follow`` starts its own."""
        self._watching = False
        self._unwatch = []
