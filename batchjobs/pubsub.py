"""The Redis mirror of batch job events, and listeners for other processes.

``RedisMirror`` connects one blinker receiver per event; each receiver only
encodes the message and appends it to a bounded in-memory queue, and a
background thread publishes whatever has piled up in one write, as JSON on
channel ``{prefix}:{event}``::

    {"event": "batch.completed", "id": "batch_01J...", "type": "csv-export",
     "status": "completed", "result": {...}, "at": "2024-...+00:00",
     "origin": "host:1234:ab12cd34"}

``origin`` (beyond the documented keys) names the ``BatchJobs`` that
published the message, so that a process can skip its own messages.

Redis is an observer, never a dependency of a job: a job pays for encoding
its messages, never for a round trip. When Redis is down, slow or restarted
the queue fills up (then drops, counting what it dropped), one warning is
logged per outage, and the threads reconnect with a jittered exponential
backoff; polling, not Redis, stays the scheduler's source of truth.

Other processes follow the events with ``Subscription`` (an iterator) or
``EventListener`` (a callback thread); ``relay_to_signals`` re-emits them as
local blinker signals marked ``remote=True``, which the mirror never
publishes back.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import signals
from .errors import NotFoundError
from .models import BatchJob, utcnow

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_PATTERN",
    "DEFAULT_PREFIX",
    "DEFAULT_QUEUE_SIZE",
    "MESSAGE_KEYS",
    "WAKE_EVENTS",
    "EventListener",
    "MirrorStats",
    "RedisMirror",
    "RemoteEvent",
    "Subscription",
    "relay_to_signals",
]

log = logging.getLogger("batchjobs.pubsub")

DEFAULT_PREFIX = "batchjobs"
#: Events subscribed to when no pattern is given: every batch job event.
DEFAULT_PATTERN = "batch.*"
#: Events a worker wakes up for: a job became claimable.
WAKE_EVENTS = ("batch.created", "batch.confirmed")
#: The keys of a mirrored message (``origin`` is ours, beyond the contract).
MESSAGE_KEYS = ("event", "id", "type", "status", "result", "at", "origin")

#: Events held while Redis is slow or away; newer events are dropped and counted.
DEFAULT_QUEUE_SIZE = 10_000
#: Messages sent in one pipeline at most.
PIPELINE_SIZE = 500
#: Seconds between two writes while events keep coming: an event after a quiet
#: spell goes out at once, a burst goes out in batches (one write per LINGER).
LINGER = 0.01
#: Seconds to open a connection: an unreachable Redis must not hold ``start()`` up.
CONNECT_TIMEOUT = 0.5
#: Seconds one command may take before Redis counts as down.
SOCKET_TIMEOUT = 2.0
#: Seconds a new subscription waits for the server's confirmation.
SUBSCRIBE_TIMEOUT = 1.0
#: Idle seconds after which a connection is pinged before use (catches dead peers).
HEALTH_CHECK_INTERVAL = 10
#: Reconnect backoff: the first retry after this many seconds, doubling up to the max.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 5.0
#: Seconds ``close`` waits for the queue to be published.
CLOSE_TIMEOUT = 2.0
#: Seconds a listener thread blocks on the socket between looks at its stop flag.
LISTEN_STEP = 0.1

#: What a lost or refused connection raises (redis-py wraps most, not all, socket errors).
_REDIS_ERRORS = (redis.RedisError, OSError)


def _client(url: str) -> redis.Redis:
    # redis-py retries a failed command ten times with backoff by default: far too
    # long for an observer. Reconnecting is this module's job, paced by _Backoff.
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=Retry(NoBackoff(), 0),
    )


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
_MESSAGE = '{"event":"%s","id":%s,"type":%s,"status":"%s","result":%s,"at":"%s","origin":%s}'
_quote = json.encoder.encode_basestring_ascii

#: Publishes KEYS[i] (channels) with ARGV[i] (messages), in order: one reply per batch.
_PUBLISH_SCRIPT = b"for i = 1, #KEYS do redis.call('PUBLISH', KEYS[i], ARGV[i]) end return #KEYS"


def _bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _pack_publish(batch: list[tuple[bytes, bytes]], *, script: bool) -> bytes:
    """The RESP commands publishing ``batch`` (bulk channel, bulk message pairs).

    Packed by hand: redis-py spends tens of µs of CPU per command, under the
    GIL that the job's thread needs. With ``script``, one EVAL of a loop of
    PUBLISHes, answered by one reply instead of one per message.
    """
    if not script:
        return b"".join(b"*3\r\n$7\r\nPUBLISH\r\n%s%s" % pair for pair in batch)
    count = len(batch)
    head = b"*%d\r\n$4\r\nEVAL\r\n%s%s" % (
        3 + 2 * count,
        _bulk(_PUBLISH_SCRIPT),
        _bulk(b"%d" % count),
    )
    return b"".join([head, *(channel for channel, _ in batch), *(msg for _, msg in batch)])


def _display(url: str) -> str:
    """The URL without credentials, for log messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


class _Backoff:
    """Jittered exponential delays between reconnection attempts."""

    def __init__(self) -> None:
        self.delay = RECONNECT_FIRST

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, RECONNECT_MAX)
        # Jitter: workers that lost the same server do not all come back at once.
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.delay = RECONNECT_FIRST


class _Outages:
    """One warning when a connection to Redis is lost, one line when all are back.

    Several parts (the publisher, a listener) report to one tracker, so an
    outage that each of them notices still logs a single warning.
    """

    def __init__(self, what: str, url: str) -> None:
        self.what = what
        self.where = _display(url)
        self.count = 0
        self._down: set[str] = set()
        self._since = 0.0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return bool(self._down)

    def failed(self, part: str, error: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down.add(part)
            if first:
                self.count += 1
                self._since = time.monotonic()
        if first:
            log.warning(
                "Redis at %s is unreachable (%s): %s paused until it is back; jobs go on",
                self.where,
                error,
                self.what,
            )

    def recovered(self, part: str, *, quiet: bool = False) -> None:
        with self._lock:
            was_down = bool(self._down)
            self._down.discard(part)
            back = was_down and not self._down
            since = self._since
        if back and not quiet:
            log.info(
                "Redis at %s is back after %.1f s: %s resumed",
                self.where,
                time.monotonic() - since,
                self.what,
            )


# -- publishing ---------------------------------------------------------------


@dataclass(frozen=True)
class MirrorStats:
    """Counters of a ``RedisMirror``."""

    #: Messages Redis accepted.
    published: int
    #: Events lost: queue full, or still queued when the mirror closed with Redis away.
    dropped: int
    #: Events waiting to be published.
    queued: int
    #: Times Redis was found unreachable (each logged one warning).
    outages: int
    #: True while Redis is known to be unreachable.
    down: bool


class RedisMirror:
    """Publishes every batch job event of ``sender`` to Redis, off the job's path.

    ``BatchJobs(redis_url=...)`` builds one; ``jobs.mirror.stats`` shows its
    counters. ``listen(wake)`` (called by ``BatchJobs.start``) also follows
    other processes' ``batch.created``/``batch.confirmed`` messages and calls
    ``wake()`` for each, so a worker claims their jobs at once instead of at
    its next poll.
    """

    def __init__(
        self,
        sender: Any,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        origin: str | None = None,
    ) -> None:
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, not {queue_size!r}")
        self.sender = sender
        self.url = url
        self.prefix = prefix
        self.queue_size = queue_size
        #: Names this mirror's messages (``"origin"``), so its own listener skips them.
        self.origin: str = origin or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._origin_json = _quote(self.origin)
        self._last_result: tuple[Any, str] = (None, "{}")
        self._client = _client(url)
        # The publisher thread's own connection: its commands go out packed, in one write.
        self._connection = self._client.connection_pool.make_connection()
        self._outages = _Outages("batch job events mirror", url)
        self._backoff = _Backoff()
        #: (channel, message) as RESP bulk strings, ready to send.
        self._queue: deque[tuple[bytes, bytes]] = deque()
        #: False once Redis refused the publishing script (ACL, cluster): one command each.
        self._scripting = True
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._published = 0
        self._dropped = 0
        self._listener: EventListener | None = None
        # Kept here because blinker holds receivers weakly: they go when the mirror goes.
        self._receivers = {event: self._receiver(event) for event in signals.EVENTS}
        for event, receiver in self._receivers.items():
            signals.signal_for(event).connect(receiver, sender=sender)

    def __repr__(self) -> str:
        return f"<RedisMirror {_display(self.url)!r} prefix={self.prefix!r}>"

    @property
    def stats(self) -> MirrorStats:
        """A snapshot of the counters."""
        with self._lock:
            return MirrorStats(
                published=self._published,
                dropped=self._dropped,
                queued=len(self._queue),
                outages=self._outages.count,
                down=self._outages.down,
            )

    def _receiver(self, event: str) -> Callable[..., None]:
        """The blinker receiver of ``event``: it encodes and queues, nothing more.

        It runs on the job's path, so it never touches the network; encoding
        here also snapshots the record as it was when the event happened.
        """
        channel = _bulk(f"{self.prefix}:{event}".encode())
        timestamp = "updated_at" if event == "batch.updated" else f"{event[6:]}_at"

        def receive(sender: Any, *, job: BatchJob, remote: bool = False, **extra: Any) -> None:
            if remote:
                return
            try:
                message = _bulk(self._message(event, job, getattr(job, timestamp, None)))
            except Exception:
                log.exception("could not encode %s of batch job %s", event, job.id)
                message = None
            with self._lock:
                if message is None or len(self._queue) >= self.queue_size or self._closing.is_set():
                    self._dropped += 1
                    return
                self._queue.append((channel, message))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="batchjobs-redis-publisher", daemon=True
                    )
                    self._thread.start()
            if not self._wakeup.is_set():
                self._wakeup.set()

        return receive

    def _message(self, event: str, job: BatchJob, at: datetime | None) -> bytes:
        """The JSON message for ``event``, built by hand: this runs on the job's path."""
        # The events of one checkpoint share one result dict: encode it once.
        cached = self._last_result
        if cached[0] is job.result:
            result = cached[1]
        else:
            result = _ENCODER.encode(job.result)
            self._last_result = (job.result, result)
        text = _MESSAGE % (
            event,
            _quote(job.id),
            _quote(job.type),
            job.status.value,
            result,
            (at or utcnow()).isoformat(),
            self._origin_json,
        )
        return text.encode()

    def publish_pending(self) -> bool:
        """Publish up to ``PIPELINE_SIZE`` queued events in one write.

        The single step of the publisher thread. Events leave the queue only
        once Redis took them; False if Redis could not be reached.
        """
        with self._lock:
            batch = list(itertools.islice(self._queue, PIPELINE_SIZE))
        if not batch:
            return True
        scripting = self._scripting
        packed = _pack_publish(batch, script=scripting)
        connection = self._connection
        # A connection that went stale while idle (Redis restarted) fails once;
        # only a second failure in a row is an outage.
        attempts = 1 if self._outages.down else 2
        for attempt in range(attempts):
            try:
                connection.send_packed_command([packed])
                for _ in range(1 if scripting else len(batch)):
                    connection.read_response()
                break
            except _REDIS_ERRORS as error:
                connection.disconnect()
                if scripting and isinstance(error, redis.ResponseError):
                    log.info("Redis refused the publishing script (%s): one PUBLISH each", error)
                    self._scripting = False
                    return self.publish_pending()
                if attempt + 1 == attempts or isinstance(error, redis.TimeoutError):
                    self._outages.failed("publish", error)
                    return False
        with self._lock:
            for _ in batch:
                self._queue.popleft()
            self._published += len(batch)
        self._backoff.reset()
        self._outages.recovered("publish")
        return True

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                full = len(self._queue) >= PIPELINE_SIZE
                try:
                    ok = self.publish_pending()
                except Exception:
                    log.exception("could not publish batch job events; dropping them")
                    self._drop_queued()
                    ok = True
                if not ok:
                    if self._closing.is_set():
                        self._drop_queued()
                        return
                    self._closing.wait(self._backoff.next())
                elif not full:
                    # Each write costs the job's thread GIL hand-overs: batch what follows.
                    self._closing.wait(LINGER)
            if self._closing.is_set():
                return

    def _drop_queued(self) -> None:
        with self._lock:
            self._dropped += len(self._queue)
            self._queue.clear()

    # -- wake-ups from other processes ----------------------------------------

    def listen(self, wake: Callable[[], None], timeout: float | None = None) -> bool:
        """Call ``wake()`` whenever another process creates or confirms a job.

        Returns once the subscription is made (True), or once Redis is found
        unreachable (False: the listener keeps retrying in the background and
        polling covers the gap). Also wakes after every reconnection, for the
        messages missed meanwhile.
        """
        self.stop_listening()
        self._listener = EventListener(
            self.url,
            lambda event: wake(),
            prefix=self.prefix,
            events=WAKE_EVENTS,
            ignore_origin=self.origin,
            on_connect=wake,
            _outages=self._outages,
        )
        return self._listener.start(timeout)

    def stop_listening(self) -> None:
        """Stop the listener started by ``listen``, if any."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop mirroring; publish what is queued, waiting up to ``timeout`` seconds."""
        self.stop_listening()
        for event, receiver in self._receivers.items():
            signals.signal_for(event).disconnect(receiver, sender=self.sender)
        with self._lock:
            self._closing.set()
            thread = self._thread
        self._wakeup.set()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                # Redis is slow: leave the daemon thread to finish or fail on its own.
                return
        self._drop_queued()
        self._connection.disconnect()
        self._client.close()


# -- following ------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteEvent:
    """One event read from the mirror: the message's fields and its channel."""

    event: str
    id: str
    type: str | None
    status: str | None
    result: dict[str, Any] = field(default_factory=dict)
    at: str | None = None
    origin: str | None = None
    channel: str = ""

    @classmethod
    def parse(cls, channel: str, data: bytes | str) -> RemoteEvent | None:
        """The event in a mirrored message; None if it is not one."""
        try:
            message = json.loads(data)
        except ValueError:
            return None
        if (
            not isinstance(message, dict)
            or message.get("event") not in signals.EVENTS
            or not isinstance(message.get("id"), str)
        ):
            return None
        result = message.get("result")
        return cls(
            event=message["event"],
            id=message["id"],
            type=message.get("type"),
            status=message.get("status"),
            result=result if isinstance(result, dict) else {},
            at=message.get("at"),
            origin=message.get("origin"),
            channel=channel,
        )

    def to_dict(self) -> dict[str, Any]:
        """The message as it was published (without the channel)."""
        return {key: getattr(self, key) for key in MESSAGE_KEYS}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Subscription:
    """Mirrored events, read one at a time (``get``) or iterated.

    >>> with Subscription("redis://localhost:6379/0", pattern="batch.c*") as events:
    ...     for event in events:                 # reconnects by itself
    ...         print(event.event, event.id, event.status)

    Subscribes to ``{prefix}:{pattern}`` (a glob over event names, default
    every event), or to exactly the given ``events``. Messages whose
    ``origin`` is ``ignore_origin`` are skipped. ``on_connect()`` runs after
    each (re)subscription.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        pattern: str | None = None,
        events: Iterable[str] | None = None,
        ignore_origin: str | None = None,
        on_connect: Callable[[], None] | None = None,
        _outages: _Outages | None = None,
    ) -> None:
        if pattern is not None and events is not None:
            raise ValueError("give a pattern or a list of events, not both")
        self.url = url
        #: The server, without credentials: for messages.
        self.where = _display(url)
        self.prefix = prefix
        #: Why the last connection attempt failed, if it did.
        self.last_error: BaseException | None = None
        names = list(events or ())
        for event in names:
            signals.signal_for(event)  # refuses unknown names
        self.channels = [f"{prefix}:{event}" for event in names]
        self.pattern = None if self.channels else f"{prefix}:{pattern or DEFAULT_PATTERN}"
        self.ignore_origin = ignore_origin
        self.on_connect = on_connect
        self._client = _client(url)
        # A mirror's listener shares the mirror's tracker: one warning per outage.
        self._outages = _outages or _Outages("following batch job events", url)
        self._backoff = _Backoff()
        self._pubsub: Any = None
        self._backlog: deque[dict[str, Any]] = deque()
        self._retry_at = 0.0
        self._closed = threading.Event()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[RemoteEvent]:
        while not self._closed.is_set():
            event = self.get(timeout=1.0)
            if event is not None:
                yield event

    @property
    def connected(self) -> bool:
        """True while subscribed."""
        return self._pubsub is not None

    def connect(self, *, report: bool = True) -> bool:
        """Subscribe now unless already subscribed; False if Redis is unreachable.

        A failure is logged (one warning per outage) unless ``report`` is
        False; ``last_error`` says what it was.
        """
        if self._pubsub is not None:
            return True
        pubsub = self._client.pubsub()
        try:
            if self.channels:
                pubsub.subscribe(*self.channels)
            else:
                pubsub.psubscribe(self.pattern)
            self._await_confirmation(pubsub, len(self.channels) or 1)
        except _REDIS_ERRORS as error:
            self._close_pubsub(pubsub)
            self.last_error = error
            if report:
                self._outages.failed("listen", error)
            self._retry_at = time.monotonic() + self._backoff.next()
            return False
        self._pubsub = pubsub
        self.last_error = None
        self._backoff.reset()
        self._outages.recovered("listen")
        if self.on_connect is not None:
            try:
                self.on_connect()
            except Exception:
                log.exception("on_connect callback failed")
        return True

    def _await_confirmation(self, pubsub: Any, expected: int) -> None:
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
        while expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise redis.TimeoutError("no subscription confirmation from Redis")
            message = pubsub.get_message(timeout=remaining)
            if message is None:
                continue
            if message["type"] in ("subscribe", "psubscribe"):
                expected -= 1
            else:
                self._backlog.append(message)

    def get(self, timeout: float = 1.0) -> RemoteEvent | None:
        """The next event, waiting up to ``timeout`` seconds; None if none came.

        The single step of every loop over a subscription: reconnects when
        its backoff says so, and never raises because of Redis.
        """
        if self._backlog:
            return self._event(self._backlog.popleft())
        if self._pubsub is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                self._closed.wait(min(wait, timeout))
                return None
            if not self.connect():
                return None
        try:
            message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        except _REDIS_ERRORS:
            self._close_pubsub(self._pubsub)
            self._pubsub = None
            # Reconnect at once: if Redis merely restarted, nobody needs a warning.
            self.connect()
            return None
        return None if message is None else self._event(message)

    def _event(self, message: dict[str, Any]) -> RemoteEvent | None:
        if message.get("type") not in ("message", "pmessage"):
            return None
        event = RemoteEvent.parse(_text(message["channel"]), message["data"])
        if event is None:
            log.debug("ignored a message that is not a batch job event on %s", message["channel"])
            return None
        if self.ignore_origin is not None and event.origin == self.ignore_origin:
            return None
        return event

    @staticmethod
    def _close_pubsub(pubsub: Any) -> None:
        try:
            pubsub.close()
        except Exception:
            log.debug("error while closing a Redis subscription", exc_info=True)

    def close(self) -> None:
        """Unsubscribe and close the connection; iteration ends."""
        self._closed.set()
        if self._pubsub is not None:
            self._close_pubsub(self._pubsub)
            self._pubsub = None
        self._outages.recovered("listen", quiet=True)
        self._client.close()


class EventListener:
    """Calls ``callback(event)`` for each mirrored event, in a background thread.

    >>> listener = EventListener("redis://localhost:6379/0", print)
    >>> listener.start()                 # True once subscribed
    >>> listener.stop()

    Takes ``Subscription``'s options. The callback runs in the listener's
    thread; an exception it raises is logged and the listener goes on.
    """

    def __init__(self, url: str, callback: Callable[[RemoteEvent], Any], **options: Any) -> None:
        self.callback = callback
        self.subscription = Subscription(url, **options)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float | None = None) -> bool:
        """Start the thread; returns once subscribed (True) or Redis is found unreachable.

        ``timeout`` bounds the wait (default: long enough for one connection
        attempt). When False, the thread keeps trying in the background.
        """
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="batchjobs-redis-listener", daemon=True
            )
            self._thread.start()
        if timeout is None:
            timeout = CONNECT_TIMEOUT + SUBSCRIBE_TIMEOUT + SOCKET_TIMEOUT
        self._ready.wait(timeout)
        return self.subscription.connected

    def _run(self) -> None:
        subscription = self.subscription
        try:
            subscription.connect()
            self._ready.set()
            while not self._stop.is_set():
                event = subscription.get(timeout=LISTEN_STEP)
                if event is None:
                    continue
                try:
                    self.callback(event)
                except Exception:
                    log.exception("listener callback failed for %s %s", event.event, event.id)
        except Exception:
            log.exception("batch job event listener stopped by an unexpected error")
        finally:
            self._ready.set()
            subscription.close()

    def stop(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the thread (within ``LISTEN_STEP`` seconds) and close its connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def relay_to_signals(sender: Any) -> Callable[[RemoteEvent], None]:
    """A listener callback that re-emits remote events as local blinker signals.

    ``sender`` is a ``BatchJobs`` on the same database: receivers get
    ``sender``, ``job`` (the record as it is in the store now, which may be
    further along than the event) and ``remote=True``; a ``RedisMirror``
    never publishes such events back. Events ``sender`` published itself,
    and events for jobs not in its database, are skipped.

    >>> EventListener(url, relay_to_signals(jobs)).start()
    """

    own = getattr(getattr(sender, "mirror", None), "origin", None)

    def relay(event: RemoteEvent) -> None:
        if own is not None and event.origin == own:
            return  # this process emitted it already
        try:
            job = sender.retrieve(event.id)
        except NotFoundError:
            log.debug("remote %s for unknown job %s skipped", event.event, event.id)
            return
        signals.emit(event.event, sender, job, remote=True)

    return relay
