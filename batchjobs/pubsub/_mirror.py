"""Publishing: ``RedisMirror`` publishes the outbox to Redis, in seq order, from a cursor.

The events are already durable (the store wrote them with their changes);
the mirror only copies them to Redis. Its position is a cursor in the
database, leased to one process at a time: whichever process publishes,
each event goes out after the one before it, and an event committed while
Redis was away is published once it is back, from where the cursor stopped.
A process that dies between publishing and moving the cursor leaves those
events to be published again: at least once, in order.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

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
#: How long the cursor stays leased to the process publishing (renewed each round).
CURSOR_LEASE = timedelta(seconds=10)
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
        #: The cursor as last seen, and whether (and until when) this mirror holds it.
        self._seen = 0
        self._holding = False
        #: Where the cursor starts if no mirror ever published this database to this
        #: Redis: what was committed before this mirror existed is not published.
        self._start = store.last_seq()
        #: The last seq committed, as last read.
        self._head = 0
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

    def wake(self) -> None:
        """Publish what was committed: called after each commit (cheap, never blocks)."""
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

    # -- publishing ------------------------------------------------------------

    def publish_pending(self) -> bool | None:
        """Publish up to ``PIPELINE_SIZE`` events after the cursor, then move it past them.

        The single step of the publishing thread. True once every event
        committed so far is published; None while more remain or another
        process holds the cursor; False if Redis could not be reached (the
        cursor stays where it was, for the next attempt).
        """
        now = utcnow()
        if not self._holding:
            self._head = self.store.last_seq()
            if self._head <= self._seen:
                return True
            self._seen, self._holding = self.store.take_cursor(
                self.cursor,
                owner=self.origin,
                now=now,
                until=now + CURSOR_LEASE,
                start=self._start,
            )
            if not self._holding:
                return None
        try:
            events = self.store.events(after=self._seen, limit=PIPELINE_SIZE)
        except EventsPrunedError as pruned:
            log.warning(
                "events %d to %d were pruned before they were published to Redis",
                self._seen + 1,
                pruned.oldest - 1,
            )
            self._move(pruned.oldest - 1, keep=True)
            return None
        if not events:
            self._move(self._seen, keep=False)
            return True
        if not self._publish(events):
            self._move(self._seen, keep=False)
            return False
        more = len(events) == PIPELINE_SIZE
        self._move(events[-1].seq, keep=more)
        return None if more else self._caught_up()

    def _caught_up(self) -> bool | None:
        # Committed while we published: another round, before anyone waits a sweep.
        self._head = self.store.last_seq()
        return True if self._head <= self._seen else None

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

    def _move(self, seq: int, *, keep: bool) -> None:
        until = utcnow() + CURSOR_LEASE if keep else None
        held = self.store.move_cursor(self.cursor, owner=self.origin, seq=seq, until=until)
        if held:
            self._seen = seq
        self._holding = held and keep

    def _run(self) -> None:
        try:
            while not self._closing.is_set():
                self._wakeup.wait(self.sweep_seconds)
                self._wakeup.clear()
                self._publish_until_done()
        finally:
            self._release()

    def _publish_until_done(self) -> None:
        while not self._closing.is_set():
            try:
                done = self.publish_pending()
            except Exception:
                if self._closing.is_set():
                    return  # the store was closed under it
                log.exception("could not publish batch job events; trying again")
                self._holding = False
                done = False
            if done:
                return
            wait = self._backoff.next() if done is False else LINGER
            if self._closing.wait(wait):
                return

    def _release(self) -> None:
        if self._holding:
            try:
                self.store.move_cursor(self.cursor, owner=self.origin, seq=self._seen)
            except Exception:
                log.debug("could not release the mirror's cursor", exc_info=True)
            self._holding = False

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
            self._wakeup.set()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not self._outages.down:
                if not self._holding and self.store.last_seq() <= self._seen:
                    break
                time.sleep(LINGER)
            self._closing.set()
            self._wakeup.set()
            thread.join(max(deadline - time.monotonic(), LINGER))
        self._client.close()
