"""Publishing: ``RedisMirror`` publishes the outbox to Redis, in seq order, from a cursor.

The events are already durable (the store wrote them with their changes);
the mirror only copies them to Redis. Its position is a cursor in the
database, leased to one process at a time: whichever process publishes,
each event goes out after the one before it, and an event committed while
Redis was away is published once it is back, from where the cursor stopped.
The publishing process keeps the cursor leased while events keep coming and
writes its position at most every ``STORE_SECONDS`` (and when it goes idle,
gives the cursor up, or closes): a process that dies while publishing
leaves what it published since its last write (at most ``STORE_SECONDS`` of
events, plus the round in flight) to be published again by the next mirror,
once the lease has expired: at least once, in order. While it holds the
cursor and its own process is quiet, it publishes what other processes
commit (they cannot take the cursor meanwhile), until it gives the cursor up.

This process's own events come to the publisher in memory (``wake(events)``,
after each commit); they are published from there only while they continue
the cursor exactly (seq = the last published + 1). Anything else (another
process's events in between, a restart, events noted out of order, a
dropped hand-over) is read from the outbox, so nothing committed is skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from ..errors import EventsPrunedError
from ..models import Event
from ..store import Store
from ._connection import CLOSE_TIMEOUT, DEFAULT_PREFIX, _Backoff, _display, _Outages, log
from ._cursor import CursorLease
from ._handover import Handover
from ._sender import MessageSender
from ._wakeups import WakeListeners

#: Events read from the outbox and published in one pipeline at most.
PIPELINE_SIZE = 500
#: Seconds between two publishing rounds while events keep coming: an event
#: after a quiet spell goes out at once, a burst goes out in batches.
LINGER = 0.005
#: Seconds without a commit here after which the publisher writes its position and
#: gives the cursor up, so that another process may publish (until then, it looks
#: for other processes' events every LINGER and publishes them). Also how long a
#: process that found the cursor held waits before it tries to take it again.
IDLE_SECONDS = 0.1
#: Commits whose events may wait in memory for the publisher; beyond, they are left
#: to the outbox (Redis down: the publisher backs off while jobs go on).
HANDOFF_LIMIT = 1000
#: Seconds between two looks at the outbox for events nobody published (a
#: process that died before publishing them, a process without a mirror).
SWEEP_SECONDS = 1.0


class _Round(Enum):
    """How a publishing round ended."""

    DONE = "every event known was published"
    MORE = "more events wait"
    HELD = "another process holds the cursor"
    DOWN = "Redis could not be reached"


@dataclass(frozen=True)
class MirrorStats:
    """Counters of a ``RedisMirror``."""

    #: Messages this mirror had Redis accept.
    published: int
    #: Events committed but not yet published (by any process), as last seen.
    behind: int
    #: Times Redis was found unreachable (each logged one warning).
    outages: int
    #: True while Redis is known to be unreachable.
    down: bool


class CursorPublisher:
    """Publishes the events after the cursor, a round at a time, in seq order.

    A round takes the cursor's lease if this process does not hold it, then
    publishes what follows the cursor: from the hand-over (this process's
    events, in memory) while it continues the cursor exactly, else from the
    outbox. ``RedisMirror`` decides when rounds run.
    """

    def __init__(self, store: Store, lease: CursorLease, sender: MessageSender) -> None:
        self.store = store
        self.lease = lease
        self.sender = sender
        self.handover = Handover()
        #: Paces the rounds after Redis was found unreachable; a publish resets it.
        self.backoff = _Backoff()
        #: Before this (monotonic), another process was found holding the cursor.
        self.held_until = 0.0
        #: The last seq committed, as last read or handed over.
        self.head = 0
        #: Set when a commit's events were not handed over: the next round reads the outbox.
        self.look = False

    @property
    def behind(self) -> int:
        """Events committed but not yet published, as last seen."""
        return max(self.head - self.lease.seq, 0)

    def offer(self, events: Sequence[Event] | None) -> None:
        """Hand over a commit's events; the outbox is read instead if there are none or
        too many wait."""
        if not (events and self.handover.offer(events, limit=HANDOFF_LIMIT)):
            self.look = True

    def reset_after_fork(self) -> None:
        """In a forked child: no lease held, nothing handed over; the outbox is read."""
        self.lease.holding = False
        self.held_until = 0.0
        self.handover = Handover()
        self.look = True
        self.sender.reset_after_fork()

    def round(self, *, look: bool) -> _Round:
        """Publish the next events after the cursor, taking its lease first if needed.

        Events come from the hand-over while they continue the cursor, else
        from the outbox; with nothing handed over, ``look`` reads the outbox
        for events of other processes (or handed over to nobody).
        """
        lease = self.lease
        if not lease.holding:
            if time.monotonic() < self.held_until:
                return _Round.HELD
            self.head = self.store.last_seq()
            if self.head <= lease.seq:
                self.handover.forget(lease.seq)
                return _Round.DONE
            if not lease.take():
                self.held_until = time.monotonic() + IDLE_SECONDS
                return _Round.HELD
        elif lease.write_due and not self._write(keep=True):
            return _Round.HELD  # (the position written, the lease renewed) lost it meanwhile
        look, self.look = look or self.look, False
        events = self.handover.take(lease.seq + 1, size=PIPELINE_SIZE, keep=HANDOFF_LIMIT * 10)
        self.head = max(self.head, self.handover.newest)
        if events is None:
            if not self.handover.waiting:
                # Nothing handed over: only other processes' events (or those handed
                # over to nobody) may wait, and only a look at the last seq says.
                if not look:
                    return _Round.DONE
                self.head = max(self.head, self.store.last_seq())
                if self.head <= lease.seq:
                    return _Round.DONE
            events = self._outbox_events()
            if events is None:
                return _Round.MORE
        if not events:
            return _Round.DONE
        if not self.sender.publish(events):
            self.give_up()
            self.look = True  # those events left the hand-over: the outbox has them
            return _Round.DOWN
        self.backoff.reset()
        lease.seq = events[-1].seq
        self.head = max(self.head, lease.seq)
        if len(events) == PIPELINE_SIZE or self.handover.pending:
            return _Round.MORE
        return _Round.DONE

    def _outbox_events(self) -> list[Event] | None:
        """The events after the cursor read from the outbox, or None if some were pruned
        (the cursor then moves past them)."""
        try:
            return self.store.events(after=self.lease.seq, limit=PIPELINE_SIZE)
        except EventsPrunedError as pruned:
            log.warning(
                "events %d to %d were pruned before they were published to Redis",
                self.lease.seq + 1,
                pruned.oldest - 1,
            )
            self.lease.seq = pruned.oldest - 1
            self._write(keep=True)
            return None

    def _write(self, *, keep: bool) -> bool:
        """Write the cursor's position, renewing the lease if ``keep``, else giving it
        up. False if this process no longer holds it (another took over)."""
        if not self.lease.write(keep=keep):
            self.held_until = time.monotonic() + IDLE_SECONDS
        return self.lease.holding

    def give_up(self) -> None:
        """Write the cursor's position and give the cursor up, if this process holds it."""
        if self.lease.holding:
            self._write(keep=False)


class RedisMirror:
    """Publishes the outbox of ``store`` to Redis, off the jobs' path, in seq order.

    ``BatchJobs(redis_url=...)`` builds one and calls ``wake()`` after each
    commit; ``jobs.mirror.stats`` shows its counters. Messages go on channel
    ``{prefix}:{event}`` as JSON (``message``). ``listen(wake)`` (called by
    ``BatchJobs.start``) also follows other processes' ``batch.created``/
    ``batch.confirmed`` messages and calls ``wake()`` for each, so a worker
    claims their jobs at once instead of at its next poll; ``watch(callback)``
    calls back on every other process's message (``follow`` wakes on it).

    The mirror runs the publishing thread, which decides when a round of its
    ``CursorPublisher`` runs; the listeners are its ``WakeListeners``.
    """

    def __init__(
        self,
        store: Store,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        origin: str,
        sweep_seconds: float = SWEEP_SECONDS,
    ) -> None:
        self.store = store
        self.url = url
        self.prefix = prefix
        self.sweep_seconds = sweep_seconds
        #: The cursor's name in the database: one per Redis server and prefix.
        self.cursor = f"redis {_display(url)} {prefix}"
        self._outages = _Outages("batch job events mirror", url)
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        sender = MessageSender(
            url, prefix=prefix, outages=self._outages, closing=lambda: self._closing.is_set()
        )
        # If no mirror ever published this database to this Redis, the cursor starts
        # at the last event: what was committed before this mirror existed is not published.
        lease = CursorLease(store, self.cursor, owner=origin, start=store.last_seq())
        self._publisher = CursorPublisher(store, lease, sender)
        self._wakeups = WakeListeners(url, prefix=prefix, origin=origin, outages=self._outages)

    def __repr__(self) -> str:
        return f"<RedisMirror {_display(self.url)!r} prefix={self.prefix!r}>"

    @property
    def origin(self) -> str:
        """Names the ``BatchJobs`` whose events these are (``"origin"``): its listeners
        skip them, and it holds the cursor under this name."""
        return self._publisher.lease.owner

    @origin.setter
    def origin(self, origin: str) -> None:
        self._publisher.lease.owner = self._wakeups.origin = origin

    @property
    def stats(self) -> MirrorStats:
        """A snapshot of the counters."""
        return MirrorStats(
            published=self._publisher.sender.published,
            behind=self._publisher.behind,
            outages=self._outages.count,
            down=self._outages.down,
        )

    def wake(self, events: Sequence[Event] | None = None) -> None:
        """Publish what was committed: called after each commit (cheap, never blocks).

        ``events`` (this process's events of that commit, as the store handed
        them over) spare the publisher a read of the outbox while they
        continue exactly from the cursor.
        """
        self._publisher.offer(events)
        if self._thread is None:
            self.start()
        self._wakeup.set()

    def start(self) -> None:
        """Start the publishing thread (``wake`` does on the first commit)."""
        with self._lock:
            if self._thread is None and not self._closing.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="batchjobs-redis-publisher", daemon=True
                )
                self._thread.start()

    def reset_after_fork(self, origin: str) -> None:
        """In a forked child: publish as ``origin`` (the child's own name) from now on.

        The parent's publisher and listeners do not run here. The child starts
        a publisher of its own at its first commit (it holds no cursor); what
        the parent had been handed is the parent's to publish, or is in the
        outbox. ``BatchJobs`` calls it from its fork hook.
        """
        self.origin = origin
        closing = self._closing.is_set()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._closing = threading.Event()
        if closing:
            self._closing.set()
        self._thread = None
        self._outages.reset_after_fork()
        self._publisher.reset_after_fork()
        self._wakeups.reset_after_fork(origin)

    # -- publishing ------------------------------------------------------------

    def publish_pending(self) -> bool | None:
        """Publish up to ``PIPELINE_SIZE`` events after the cursor, then move it past them.

        One step, as the publishing thread takes them, except that the
        cursor's position is written (and the cursor given up) once every
        event committed so far is published. True then; None while more
        remain or another process holds the cursor; False if Redis could not
        be reached (the cursor stays where it was, for the next attempt).
        """
        self._publisher.held_until = 0.0
        ended = self._publisher.round(look=True)
        if ended is _Round.DONE:
            self._publisher.give_up()
            return True
        return False if ended is _Round.DOWN else None

    def _run(self) -> None:
        publisher = self._publisher
        active_at = 0.0  # when this process's own events last came (monotonic)
        try:
            while not self._closing.is_set():
                if not publisher.lease.holding:
                    self._wakeup.wait(self.sweep_seconds)
                    self._wakeup.clear()
                    active_at = time.monotonic()
                    self._publish_until_done(look=True)
                elif self._wakeup.wait(LINGER):
                    self._wakeup.clear()
                    active_at = time.monotonic()
                    self._publish_until_done(look=False)
                else:
                    # No commit here for a while: publish what other processes committed
                    # meanwhile (they cannot while this one holds the cursor); once quiet
                    # for IDLE_SECONDS, write the position and give the cursor up.
                    self._publish_until_done(look=True)
                    quiet = time.monotonic() - active_at >= IDLE_SECONDS
                    if quiet and not self._wakeup.is_set():
                        publisher.give_up()
                    continue
                # While events keep coming, let them gather: a round per LINGER at most
                # (the commits meanwhile wake nobody), an event after a quiet spell at once.
                if publisher.lease.holding and self._closing.wait(LINGER):
                    break
        finally:
            try:
                publisher.give_up()
            except Exception:
                log.debug("could not release the mirror's cursor", exc_info=True)
                publisher.lease.holding = False

    def _publish_until_done(self, *, look: bool) -> None:
        publisher = self._publisher
        while not self._closing.is_set():
            try:
                ended = publisher.round(look=look)
            except Exception:
                if self._closing.is_set():
                    return  # the store was closed under it
                log.exception("could not publish batch job events; trying again")
                publisher.lease.holding = False
                publisher.look = True
                ended = _Round.DOWN
            if ended is _Round.DONE or ended is _Round.HELD:
                return
            wait = publisher.backoff.next() if ended is _Round.DOWN else LINGER
            if self._closing.wait(wait):
                return

    # -- wake-ups from other processes ----------------------------------------

    def listen(self, wake: Callable[[], None], timeout: float | None = None) -> bool:
        """Call ``wake()`` whenever another process creates or confirms a job.

        Returns once the subscription is made (True), or once Redis is found
        unreachable (False: the listener keeps retrying in the background and
        polling covers the gap). Also wakes after every reconnection, for the
        messages missed meanwhile.
        """
        return self._wakeups.listen(wake, timeout)

    def watch(self, callback: Callable[[], None], timeout: float | None = None) -> bool:
        """Call ``callback()`` on every other process's event (and on each reconnection).

        For readers of the outbox (``follow``): a message says "read again".
        Stops with ``close``. Returns as ``listen`` does.
        """
        return self._wakeups.watch(callback, timeout)

    def stop_listening(self) -> None:
        """Stop the listener started by ``listen``, if any."""
        self._wakeups.stop_listening()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop mirroring: publish what is committed, waiting up to ``timeout`` seconds.

        What is left stays in the outbox, for the next mirror on this database
        to publish.
        """
        self._wakeups.close()
        with self._lock:
            thread = self._thread
            if thread is None:
                self._closing.set()
        if thread is not None:
            self._publisher.held_until = 0.0  # another process may have given it up since
            self._wakeup.set()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not self._outages.down:
                if self.store.last_seq() <= self._publisher.lease.seq:
                    break
                time.sleep(LINGER)
            self._closing.set()
            self._wakeup.set()
            thread.join(max(deadline - time.monotonic(), LINGER))
        self._publisher.sender.close()
