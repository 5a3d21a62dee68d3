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

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

import redis

from ..errors import EventsPrunedError
from ..models import Event, utcnow
from ..store import Store
from ._connection import (
    _REDIS_ERRORS,
    CLOSE_TIMEOUT,
    DEFAULT_PREFIX,
    MESSAGE_KEYS,
    _Backoff,
    _client,
    _display,
    _Outages,
    log,
)
from ._subscription import DEFAULT_PATTERN, EventListener

#: Events a worker wakes up for: a job became claimable.
WAKE_EVENTS = ("batch.created", "batch.confirmed")

#: Events read from the outbox and published in one pipeline at most.
PIPELINE_SIZE = 500
#: Seconds between two publishing rounds while events keep coming: an event
#: after a quiet spell goes out at once, a burst goes out in batches.
LINGER = 0.005
#: How long the cursor stays leased to the process publishing (renewed each time
#: its position is written).
CURSOR_LEASE = timedelta(seconds=10)
#: Seconds between two writes of the cursor's position while publishing: what a
#: process that dies mid-stream leaves to be published again (a write transaction
#: per round would compete with the jobs' own for the database's write lock).
STORE_SECONDS = 0.5
#: Seconds without a commit here after which the publisher writes its position and
#: gives the cursor up, so that another process may publish (until then, it looks
#: for other processes' events every LINGER and publishes them).
IDLE_SECONDS = 0.1
#: Commits whose events may wait in memory for the publisher; beyond, they are left
#: to the outbox (Redis down: the publisher backs off while jobs go on).
HANDOFF_LIMIT = 1000
#: Seconds between two looks at the outbox for events nobody published (a
#: process that died before publishing them, a process without a mirror).
SWEEP_SECONDS = 1.0

#: Publishes KEYS[i] (channels) with ARGV[i] (messages), in order. A batch is one
#: command and one reply: a pipeline costs the publisher thread (and so the job's
#: thread, through the GIL) a reply to parse per message (docs/benchmarks.md).
_PUBLISH_SCRIPT = "for i = 1, #KEYS do redis.call('PUBLISH', KEYS[i], ARGV[i]) end return #KEYS"
#: One encoder for every message (``json.dumps`` with options makes one per call).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def message(event: Event) -> str:
    """The JSON message for ``event``, its keys in ``MESSAGE_KEYS``' order."""
    job = event.job
    values = (
        event.event,
        job.id,
        job.type,
        job.status.value,
        job.result,
        event.at.isoformat(),
        event.origin,
        event.seq,
    )
    return _ENCODE(dict(zip(MESSAGE_KEYS, values, strict=True)))


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


class RedisMirror:
    """Publishes the outbox of ``store`` to Redis, off the jobs' path, in seq order.

    ``BatchJobs(redis_url=...)`` builds one and calls ``wake()`` after each
    commit; ``jobs.mirror.stats`` shows its counters. Messages go on channel
    ``{prefix}:{event}`` as JSON (``message``). ``listen(wake)`` (called by
    ``BatchJobs.start``) also follows other processes' ``batch.created``/
    ``batch.confirmed`` messages and calls ``wake()`` for each, so a worker
    claims their jobs at once instead of at its next poll; ``watch(callback)``
    calls back on every other process's message (``follow`` wakes on it).
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
        #: Names the ``BatchJobs`` whose events these are (``"origin"``): its listeners skip them.
        self.origin = origin
        self.sweep_seconds = sweep_seconds
        #: The cursor's name in the database: one per Redis server and prefix.
        self.cursor = f"redis {_display(url)} {prefix}"
        self._client = _client(url)
        self._outages = _Outages("batch job events mirror", url)
        self._backoff = _Backoff()
        self._channels: dict[str, str] = {}
        #: False once Redis refused the publishing script (ACL, cluster): a pipeline.
        self._scripting = True
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._published = 0
        #: The last seq published (or the cursor as taken), and whether this mirror
        #: holds the cursor's lease.
        self._seen = 0
        self._holding = False
        #: When this mirror last wrote the cursor's position (monotonic).
        self._stored_at = 0.0
        #: Before this (monotonic), another process was found holding the cursor.
        self._held_until = 0.0
        #: Where the cursor starts if no mirror ever published this database to this
        #: Redis: what was committed before this mirror existed is not published.
        self._start = store.last_seq()
        #: The last seq committed, as last read or handed over.
        self._head = 0
        #: This process's committed events, as handed over by ``wake`` (one list per
        #: commit), and those taken from there that wait for their turn, by seq.
        self._handed: deque[Sequence[Event]] = deque()
        self._waiting: list[Event] = []
        #: Set when a commit's events were not handed over: the next round reads the outbox.
        self._look = False
        self._listeners: list[EventListener] = []
        self._listener: EventListener | None = None

    def __repr__(self) -> str:
        return f"<RedisMirror {_display(self.url)!r} prefix={self.prefix!r}>"

    @property
    def stats(self) -> MirrorStats:
        """A snapshot of the counters."""
        behind = max(self._head - self._seen, 0)
        with self._lock:
            return MirrorStats(
                published=self._published,
                behind=behind,
                outages=self._outages.count,
                down=self._outages.down,
            )

    def wake(self, events: Sequence[Event] | None = None) -> None:
        """Publish what was committed: called after each commit (cheap, never blocks).

        ``events`` (this process's events of that commit, as the store handed
        them over) spare the publisher a read of the outbox while they
        continue exactly from the cursor.
        """
        if events and len(self._handed) < HANDOFF_LIMIT:
            self._handed.append(events)
        else:
            self._look = True  # nothing handed over: the next round reads the outbox
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

    def _after_fork(self) -> None:
        """In a forked child: the parent's publisher and listeners are not running here.

        The child starts a publisher of its own at its first commit (its origin
        is its own: it holds no cursor); what the parent had been handed is the
        parent's to publish, or is in the outbox.
        """
        closing = self._closing.is_set()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._closing = threading.Event()
        if closing:
            self._closing.set()
        self._thread = None
        self._holding = False
        self._held_until = 0.0
        self._handed = deque()
        self._waiting = []
        self._look = True
        self._listeners = []
        self._listener = None

    # -- publishing ------------------------------------------------------------

    def publish_pending(self) -> bool | None:
        """Publish up to ``PIPELINE_SIZE`` events after the cursor, then move it past them.

        One step, as the publishing thread takes them, except that the
        cursor's position is written (and the cursor given up) once every
        event committed so far is published. True then; None while more
        remain or another process holds the cursor; False if Redis could not
        be reached (the cursor stays where it was, for the next attempt).
        """
        self._held_until = 0.0
        ended = self._round(look=True)
        if ended is _Round.DONE:
            self._give_up()
            return True
        return False if ended is _Round.DOWN else None

    def _round(self, *, look: bool) -> _Round:
        """Publish the next events after the cursor, taking its lease first if needed.

        Events come from the hand-over while they continue the cursor, else
        from the outbox; with nothing handed over, ``look`` reads the outbox
        for events of other processes (or handed over to nobody).
        """
        if not self._holding:
            if time.monotonic() < self._held_until:
                return _Round.HELD
            self._head = self.store.last_seq()
            if self._head <= self._seen:
                self._forget_handed()
                return _Round.DONE
            now = utcnow()
            self._seen, self._holding = self.store.take_cursor(
                self.cursor,
                owner=self.origin,
                now=now,
                until=now + CURSOR_LEASE,
                start=self._start,
            )
            self._stored_at = time.monotonic()
            if not self._holding:
                self._held_until = time.monotonic() + IDLE_SECONDS
                return _Round.HELD
        elif time.monotonic() - self._stored_at >= STORE_SECONDS and not self._store(keep=True):
            return _Round.HELD  # (the position written, the lease renewed) lost it meanwhile
        look, self._look = look or self._look, False
        events = self._handed_events()
        if events is None:
            if not self._waiting:
                # Nothing handed over: only other processes' events (or those handed
                # over to nobody) may wait, and only a look at the last seq says.
                if not look:
                    return _Round.DONE
                self._head = max(self._head, self.store.last_seq())
                if self._head <= self._seen:
                    return _Round.DONE
            events = self._outbox_events()
            if events is None:
                return _Round.MORE
        if not events:
            return _Round.DONE
        if not self._publish(events):
            self._give_up()
            self._look = True  # those events left the hand-over: the outbox has them
            return _Round.DOWN
        self._seen = events[-1].seq
        self._head = max(self._head, self._seen)
        if len(events) == PIPELINE_SIZE or self._handed or self._waiting:
            return _Round.MORE
        return _Round.DONE

    def _handed_events(self) -> list[Event] | None:
        """The events handed over that continue the cursor (at most ``PIPELINE_SIZE``),
        or None if those waiting do not (a gap: the outbox has what is missing)."""
        waiting = self._waiting
        while self._handed:
            events = self._handed.popleft()
            if waiting and events[0].seq < waiting[-1].seq:
                waiting.extend(events)
                waiting.sort(key=lambda event: event.seq)  # noted by threads out of order
            else:
                waiting.extend(events)
        if len(waiting) > HANDOFF_LIMIT * 10:
            waiting.clear()  # Redis away for a while: the outbox has them all
        if waiting:
            self._head = max(self._head, waiting[-1].seq)
        expect, skipped = self._seen + 1, 0
        taken: list[Event] = []
        for event in waiting:
            if event.seq < expect:
                skipped += 1  # published already (read from the outbox)
                continue
            if event.seq != expect or len(taken) == PIPELINE_SIZE:
                break
            taken.append(event)
            expect += 1
        del waiting[: skipped + len(taken)]
        if not taken and waiting:
            return None
        return taken or None

    def _outbox_events(self) -> list[Event] | None:
        """The events after the cursor read from the outbox, or None if some were pruned
        (the cursor then moves past them)."""
        try:
            return self.store.events(after=self._seen, limit=PIPELINE_SIZE)
        except EventsPrunedError as pruned:
            log.warning(
                "events %d to %d were pruned before they were published to Redis",
                self._seen + 1,
                pruned.oldest - 1,
            )
            self._seen = pruned.oldest - 1
            self._store(keep=True)
            return None

    def _forget_handed(self) -> None:
        """Drop the events handed over that were published already (read from the outbox)."""
        waiting = self._waiting
        while self._handed:
            waiting.extend(self._handed.popleft())
        self._waiting = sorted(
            (event for event in waiting if event.seq > self._seen), key=lambda event: event.seq
        )

    def _publish(self, events: list[Event]) -> bool:
        batch = [(self._channel(event.event), message(event)) for event in events]
        # A connection that went stale while idle (Redis restarted) fails once;
        # only a second failure in a row is an outage.
        attempts = 1 if self._outages.down else 2
        for attempt in range(attempts):
            try:
                self._send(batch)
                break
            except _REDIS_ERRORS as error:
                if self._closing.is_set():
                    return False  # close() cut the connection: no outage, no retry
                if self._scripting and isinstance(error, redis.ResponseError):
                    log.info("Redis refused the publishing script (%s): a pipeline instead", error)
                    self._scripting = False
                    return self._publish(events)
                if attempt + 1 == attempts or isinstance(error, redis.TimeoutError):
                    self._outages.failed("publish", error)
                    return False
        with self._lock:
            self._published += len(events)
        self._backoff.reset()
        self._outages.recovered("publish")
        return True

    def _send(self, batch: list[tuple[str, str]]) -> None:
        """Publish ``batch`` with redis-py: one EVAL of a loop of PUBLISHes (one
        reply for the batch), or a pipeline of PUBLISHes where scripts are refused."""
        if self._scripting:
            channels, messages = zip(*batch, strict=True)
            self._client.execute_command("EVAL", _PUBLISH_SCRIPT, len(batch), *channels, *messages)
            return
        pipeline = self._client.pipeline(transaction=False)
        for channel, text in batch:
            pipeline.publish(channel, text)
        pipeline.execute()

    def _channel(self, event: str) -> str:
        channel = self._channels.get(event)
        if channel is None:
            channel = self._channels[event] = f"{self.prefix}:{event}"
        return channel

    def _store(self, *, keep: bool) -> bool:
        """Write the cursor's position (``_seen``), renewing the lease if ``keep``, else
        giving it up. False if this mirror no longer holds it (another took over)."""
        until = utcnow() + CURSOR_LEASE if keep else None
        held = self.store.move_cursor(self.cursor, owner=self.origin, seq=self._seen, until=until)
        if held:
            self._stored_at = time.monotonic()
        else:
            self._held_until = time.monotonic() + IDLE_SECONDS
        self._holding = held and keep
        return self._holding

    def _give_up(self) -> None:
        """Write the cursor's position and give the cursor up, if this mirror holds it."""
        if self._holding:
            self._store(keep=False)

    def _run(self) -> None:
        active_at = 0.0  # when this process's own events last came (monotonic)
        try:
            while not self._closing.is_set():
                if not self._holding:
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
                        self._give_up()
                    continue
                # While events keep coming, let them gather: a round per LINGER at most
                # (the commits meanwhile wake nobody), an event after a quiet spell at once.
                if self._holding and self._closing.wait(LINGER):
                    break
        finally:
            try:
                self._give_up()
            except Exception:
                log.debug("could not release the mirror's cursor", exc_info=True)
                self._holding = False

    def _publish_until_done(self, *, look: bool) -> None:
        while not self._closing.is_set():
            try:
                ended = self._round(look=look)
            except Exception:
                if self._closing.is_set():
                    return  # the store was closed under it
                log.exception("could not publish batch job events; trying again")
                self._holding = False
                self._look = True
                ended = _Round.DOWN
            if ended is _Round.DONE or ended is _Round.HELD:
                return
            wait = self._backoff.next() if ended is _Round.DOWN else LINGER
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
        self.stop_listening()
        self._listener = self._listen(lambda event: wake(), WAKE_EVENTS, wake)
        return self._listener.start(timeout)

    def watch(self, callback: Callable[[], None], timeout: float | None = None) -> bool:
        """Call ``callback()`` on every other process's event (and on each reconnection).

        For readers of the outbox (``follow``): a message says "read again".
        Stops with ``close``. Returns as ``listen`` does.
        """
        listener = self._listen(lambda event: callback(), None, callback)
        self._listeners.append(listener)
        return listener.start(timeout)

    def _listen(
        self,
        callback: Callable[..., None],
        events: tuple[str, ...] | None,
        on_connect: Callable[[], None],
    ) -> EventListener:
        return EventListener(
            self.url,
            callback,
            prefix=self.prefix,
            events=events,
            pattern=None if events else DEFAULT_PATTERN,
            ignore_origin=self.origin,
            on_connect=on_connect,
            _outages=self._outages,
        )

    def stop_listening(self) -> None:
        """Stop the listener started by ``listen``, if any."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop mirroring: publish what is committed, waiting up to ``timeout`` seconds.

        What is left stays in the outbox, for the next mirror on this database
        to publish.
        """
        self.stop_listening()
        for listener in self._listeners:
            listener.stop()
        self._listeners = []
        with self._lock:
            thread = self._thread
            if thread is None:
                self._closing.set()
        if thread is not None:
            self._held_until = 0.0  # another process may have given the cursor up since
            self._wakeup.set()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not self._outages.down:
                if self.store.last_seq() <= self._seen:
                    break
                time.sleep(LINGER)
            self._closing.set()
            self._wakeup.set()
            thread.join(max(deadline - time.monotonic(), LINGER))
        self._client.close()
