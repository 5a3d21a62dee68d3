"""Sending: ``MessageSender`` puts batches of events on their Redis channels as JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import redis

from ..models import Event
from ._connection import _REDIS_ERRORS, MESSAGE_KEYS, _client, _Outages, log

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


class MessageSender:
    """Publishes batches of events on channel ``{prefix}:{event}``, and counts them.

    A batch is one EVAL of a loop of PUBLISHes, or a pipeline where Redis
    refuses scripts (ACL, cluster). A failure is reported to ``outages`` (one
    warning an outage), unless ``closing()`` says the mirror cut the
    connection itself; a success ends the outage.
    """

    def __init__(
        self, url: str, *, prefix: str, outages: _Outages, closing: Callable[[], bool]
    ) -> None:
        self.prefix = prefix
        self._client = _client(url)
        self._outages = outages
        self._closing = closing
        self._channels: dict[str, str] = {}
        #: False once Redis refused the publishing script (ACL, cluster): a pipeline.
        self._scripting = True
        self._lock = threading.Lock()
        self._published = 0

    @property
    def published(self) -> int:
        """Messages Redis accepted from this sender."""
        with self._lock:
            return self._published

    def publish(self, events: list[Event]) -> bool:
        """Publish ``events``, in order; False if Redis could not be reached."""
        batch = [(self._channel(event.event), message(event)) for event in events]
        # A connection that went stale while idle (Redis restarted) fails once;
        # only a second failure in a row is an outage.
        attempts = 1 if self._outages.down else 2
        for attempt in range(attempts):
            try:
                self._send(batch)
                break
            except _REDIS_ERRORS as error:
                if self._closing():
                    return False  # close() cut the connection: no outage, no retry
                if self._scripting and isinstance(error, redis.ResponseError):
                    log.info("Redis refused the publishing script (%s): a pipeline instead", error)
                    self._scripting = False
                    return self.publish(events)
                if attempt + 1 == attempts or isinstance(error, redis.TimeoutError):
                    self._outages.failed("publish", error)
                    return False
        with self._lock:
            self._published += len(events)
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

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock (the parent's publisher may have held its own)."""
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection."""
        self._client.close()
