"""Publishing: ``RedisMirror`` queues each event off the job's path and writes them in batches."""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from .. import signals
from ..models import BatchJob, Status, utcnow
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
from ._subscription import EventListener

#: Events a worker wakes up for: a job became claimable.
WAKE_EVENTS = ("batch.created", "batch.confirmed")

#: Events held while Redis is slow or away; newer events are dropped and counted.
DEFAULT_QUEUE_SIZE = 10_000
#: Messages sent in one pipeline at most.
PIPELINE_SIZE = 500
#: Seconds between two writes while events keep coming: an event after a quiet
#: spell goes out at once, a burst goes out in batches (one write per LINGER).
LINGER = 0.01

def _timestamp_field(event: str) -> str:
    """The record's field holding when ``event`` happened."""
    if event == "batch.updated":
        return "updated_at"
    return Status(event.removeprefix("batch.")).timestamp_field


#: Publishes KEYS[i] (channels) with ARGV[i] (messages), in order. A batch is one
#: command and one reply: a pipeline costs the publisher thread (and so the job's
#: thread, through the GIL) a reply to parse per message (docs/benchmarks.md).
_PUBLISH_SCRIPT = "for i = 1, #KEYS do redis.call('PUBLISH', KEYS[i], ARGV[i]) end return #KEYS"
#: One encoder for every message (``json.dumps`` with options makes one per call).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


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
        self._client = _client(url)
        self._outages = _Outages("batch job events mirror", url)
        self._backoff = _Backoff()
        #: (channel, message), ready to send.
        self._queue: deque[tuple[str, str]] = deque()
        #: The publisher's batch: (channel, message) sent but not yet accepted by
        #: Redis (kept for the next attempt).
        self._sending: list[tuple[str, str]] = []
        #: False once Redis refused the publishing script (ACL, cluster): a pipeline then.
        self._scripting = True
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._closing = threading.Event()
        #: Cleared by ``close``: the receivers' cheap check (no lock, no call).
        self._accepting = True
        #: Set once ``close`` stopped waiting: the publisher thread ends at its next step.
        self._closed = threading.Event()
        #: Serialises disconnecting, which ``close`` may do while the thread fails.
        self._connection_lock = threading.Lock()
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
                queued=len(self._queue) + len(self._sending),
                outages=self._outages.count,
                down=self._outages.down,
            )

    def _receiver(self, event: str) -> Callable[..., None]:
        """The blinker receiver of ``event``: it encodes and queues, nothing more.

        It runs on the job's path, so it never touches the network. Encoding
        here (a few µs) snapshots the record as it was at the event, and keeps
        the publisher thread's turns with the GIL short: each turn it takes
        costs the job's thread a hand-over, whatever the thread does with it.
        """
        channel = f"{self.prefix}:{event}"
        timestamp = _timestamp_field(event)
        queue = self._queue
        size = self.queue_size
        wakeup = self._wakeup

        def receive(sender: Any, *, job: BatchJob, remote: bool = False, **extra: Any) -> None:
            if remote:
                return
            # No lock on this path: deque appends are atomic, and a bound that
            # concurrent receivers overrun by one or two is still a bound.
            if len(queue) >= size or not self._accepting:
                self._count_dropped()
                return
            try:
                item = (channel, self._message(event, job, getattr(job, timestamp)))
            except Exception:
                log.exception("could not encode %s of batch job %s", event, job.id)
                self._count_dropped()
                return
            queue.append(item)
            if not self._accepting:
                self._withdraw(item)  # close() began meanwhile: it may have emptied the queue
                return
            if self._thread is None:
                self._start_publisher()
            if not wakeup.is_set():
                wakeup.set()

        return receive

    def _count_dropped(self) -> None:
        with self._lock:
            self._dropped += 1

    def _withdraw(self, item: tuple[str, str]) -> None:
        """Count ``item`` dropped, unless the publisher has taken it already."""
        try:
            self._queue.remove(item)
        except ValueError:
            return  # the publisher's: it publishes or drops it, and counts it
        self._count_dropped()

    def _start_publisher(self) -> None:
        with self._lock:
            if self._thread is None and self._accepting:
                self._thread = threading.Thread(
                    target=self._run, name="batchjobs-redis-publisher", daemon=True
                )
                self._thread.start()

    def _message(self, event: str, job: BatchJob, at: datetime | None) -> str:
        """The JSON message for ``event``, its keys in ``MESSAGE_KEYS``' order."""
        values = (
            event,
            job.id,
            job.type,
            job.status.value,
            job.result,
            (at or utcnow()).isoformat(),
            self.origin,
        )
        return _ENCODE(dict(zip(MESSAGE_KEYS, values, strict=True)))

    def _fill_batch(self) -> list[tuple[str, str]]:
        """The batch to send: what the last attempt left, topped up from the queue."""
        batch = self._sending
        queue = self._queue
        while len(batch) < PIPELINE_SIZE and queue:
            batch.append(queue.popleft())
        return batch

    def publish_pending(self) -> bool:
        """Publish up to ``PIPELINE_SIZE`` queued events in one write.

        The single step of the publisher thread. Events move from the queue
        to the batch being sent, and leave it only once Redis took them;
        False if Redis could not be reached.
        """
        batch = self._fill_batch()
        if not batch:
            return True
        # A connection that went stale while idle (Redis restarted) fails once;
        # only a second failure in a row is an outage.
        attempts = 1 if self._outages.down else 2
        for attempt in range(attempts):
            try:
                self._send(batch)
                break
            except _REDIS_ERRORS as error:
                if self._closed.is_set():
                    return False  # close() cut the connection: no outage, no retry
                if self._scripting and isinstance(error, redis.ResponseError):
                    log.info("Redis refused the publishing script (%s): a pipeline instead", error)
                    self._scripting = False
                    return self.publish_pending()
                self._disconnect()
                if attempt + 1 == attempts or isinstance(error, redis.TimeoutError):
                    self._outages.failed("publish", error)
                    return False
        with self._lock:
            self._sending = []
            self._published += len(batch)
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
        for channel, message in batch:
            pipeline.publish(channel, message)
        pipeline.execute()

    def _disconnect(self) -> None:
        with self._connection_lock:
            self._client.connection_pool.disconnect()

    def _run(self) -> None:
        try:
            self._publish_until_closed()
        finally:
            # Here too, not only in close(): close() may have given up waiting for
            # this thread, which may have connected again since.
            self._drop_queued()
            self._disconnect()

    def _publish_until_closed(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            while (self._queue or self._sending) and not self._closed.is_set():
                full = len(self._queue) >= PIPELINE_SIZE
                try:
                    ok = self.publish_pending()
                except Exception:
                    if self._closed.is_set():
                        return  # the connection was cut under it
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
            # popleft, not clear(): a receiver may append meanwhile, and what it
            # appends must be counted once, here or later.
            dropped = len(self._sending)
            self._sending = []
            while True:
                try:
                    self._queue.popleft()
                except IndexError:
                    break
                dropped += 1
            self._dropped += dropped

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
        """Stop mirroring; publish what is queued, waiting up to ``timeout`` seconds.

        Then the connection is released, even if Redis has not answered: what
        is still queued is dropped (counted in ``stats.dropped``).
        """
        self.stop_listening()
        for event, receiver in self._receivers.items():
            signals.signal_for(event).disconnect(receiver, sender=self.sender)
        with self._lock:
            self._accepting = False
            self._closing.set()
            thread = self._thread
        self._wakeup.set()
        if thread is not None:
            thread.join(timeout)
        # A thread still waiting on a slow Redis fails on the cut connection and
        # ends, dropping what is left; the connection is released either way.
        self._closed.set()
        if thread is None or not thread.is_alive():
            self._drop_queued()
        self._disconnect()
        self._client.close()
