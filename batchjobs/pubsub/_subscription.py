"""Following: ``Subscription`` reads mirrored events, ``EventListener`` calls back in a thread."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from .. import signals
from ..errors import NotFoundError
from ._connection import (
    _REDIS_ERRORS,
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    DEFAULT_PREFIX,
    MESSAGE_KEYS,
    SOCKET_TIMEOUT,
    _Backoff,
    _client,
    _display,
    _Outages,
    log,
)

#: Events subscribed to when no pattern is given: every batch job event.
DEFAULT_PATTERN = "batch.*"
#: Seconds a new subscription waits for the server's confirmation.
SUBSCRIBE_TIMEOUT = 1.0
#: Seconds a listener thread blocks on the socket between looks at its stop flag.
LISTEN_STEP = 0.1


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
    #: The event's seq in the outbox: ``BatchJobs.events(after=...)`` catches up from it.
    seq: int | None = None
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
        seq = message.get("seq")
        return cls(
            event=message["event"],
            id=message["id"],
            type=message.get("type"),
            status=message.get("status"),
            result=result if isinstance(result, dict) else {},
            at=message.get("at"),
            origin=message.get("origin"),
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
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
        #: Times the subscription was cut (each losing what was published until it was back).
        self.lost = 0
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
        except _REDIS_ERRORS as error:
            self._close_pubsub(self._pubsub)
            self._pubsub = None
            # Pub/sub keeps nothing for a subscriber that is gone: say what was lost.
            log.warning(
                "the subscription to %s on Redis at %s was cut (%s): Redis restarted, or it "
                "closed this subscriber for falling behind (client-output-buffer-limit pubsub, "
                "32 MB by default); events published until it is back are lost",
                self.pattern if not self.channels else ", ".join(self.channels),
                self.where,
                error,
            )
            self.lost += 1
            self.connect()  # at once: Redis is most likely there
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
    >>> listener.start()                 # again, on a new subscription

    Takes ``Subscription``'s options. The callback runs in the listener's
    thread; an exception it raises is logged and the listener goes on.
    """

    def __init__(self, url: str, callback: Callable[[RemoteEvent], Any], **options: Any) -> None:
        self.url = url
        self.callback = callback
        #: The current run's subscription; each ``start`` after ``stop`` makes a new one.
        self.subscription = Subscription(url, **options)
        self._options = options
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float | None = None) -> bool:
        """Start the thread; returns once subscribed (True) or Redis is found unreachable.

        ``timeout`` bounds the wait (default: long enough for one connection
        attempt). When False, the thread keeps trying in the background.
        Starting a running listener changes nothing; starting a stopped one
        (or one whose thread died) starts a new thread on a new subscription.
        """
        thread = self._thread
        if thread is None or self._stop.is_set() or not thread.is_alive():
            if thread is not None:
                # A thread still finishing a callback keeps its own subscription and
                # stop flag, and ends on its own.
                self.subscription = Subscription(self.url, **self._options)
                self._ready = threading.Event()
                self._stop = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(self.subscription, self._ready, self._stop),
                name="batchjobs-redis-listener",
                daemon=True,
            )
            self._thread = thread
            thread.start()
        if timeout is None:
            timeout = CONNECT_TIMEOUT + SUBSCRIBE_TIMEOUT + SOCKET_TIMEOUT
        self._ready.wait(timeout)
        return self.subscription.connected

    def _run(
        self, subscription: Subscription, ready: threading.Event, stop: threading.Event
    ) -> None:
        try:
            subscription.connect()
            ready.set()
            while not stop.is_set():
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
            ready.set()
            subscription.close()

    def stop(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the thread (within ``LISTEN_STEP`` seconds) and close its connection.

        Waits up to ``timeout`` seconds for the callback running, if any.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def relay_to_signals(sender: Any) -> Callable[[RemoteEvent], None]:
    """A listener callback that re-emits remote events as local blinker signals.

    ``sender`` is a ``BatchJobs`` on the same database: receivers get
    ``sender``, ``job`` (the record as it is in the store now, which may be
    further along than the event), ``seq`` and ``remote=True``. Events
    ``sender`` committed itself, and events for jobs not in its database,
    are skipped.

    >>> EventListener(url, relay_to_signals(jobs)).start()
    """

    own = getattr(sender, "origin", None)

    def relay(event: RemoteEvent) -> None:
        if own is not None and event.origin == own:
            return  # this process emitted it already
        try:
            job = sender.retrieve(event.id)
        except NotFoundError:
            log.debug("remote %s for unknown job %s skipped", event.event, event.id)
            return
        signals.emit(event.event, sender, job, seq=event.seq, remote=True)

    return relay
