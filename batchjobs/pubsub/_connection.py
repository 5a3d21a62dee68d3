"""What both sides share: the message's keys, the Redis client's settings, backoff, outages."""

from __future__ import annotations

# A thread's first connection to Redis by name makes socket.getaddrinfo import this
# codec. A fork while another thread (the publisher, a listener) holds that import's
# lock leaves the lock held in the child, whose own first connection then waits for it
# forever: imported here, before any of those threads runs.
import encodings.idna  # noqa: F401
import logging
import os
import random
import threading
import time
import weakref
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("batchjobs.pubsub")

DEFAULT_PREFIX = "batchjobs"
#: The keys of a mirrored message, in the order published (``origin`` is ours,
#: beyond the contract; ``seq`` is the event's in the outbox). The mirror's
#: message template is built from them.
MESSAGE_KEYS = ("event", "id", "type", "status", "result", "at", "origin", "seq")
#: Seconds to open a connection: an unreachable Redis must not hold ``start()`` up.
CONNECT_TIMEOUT = 0.5
#: Seconds one command may take before Redis counts as down.
SOCKET_TIMEOUT = 2.0
#: Idle seconds after which a connection is pinged before use (catches dead peers).
HEALTH_CHECK_INTERVAL = 10
#: Reconnect backoff: the first retry after this many seconds, doubling up to the max.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 5.0
#: Seconds ``close`` waits for the queue to be published.
CLOSE_TIMEOUT = 2.0

#: What a lost or refused connection raises (redis-py wraps most, not all, socket errors).
_REDIS_ERRORS = (redis.RedisError, OSError)


def _client(url: str) -> redis.Redis:
    """A client for ``url`` (no connection yet); ``ValueError`` naming a malformed URL."""
    # redis-py retries a failed command ten times with backoff by default: far too
    # long for an observer. Reconnecting is this package's job, paced by _Backoff.
    options: dict[str, Any] = {}
    # TCP keepalive is a TCP option: a unix:// socket's connection takes none.
    if not url.lower().startswith("unix:"):
        options["socket_keepalive"] = True
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            health_check_interval=HEALTH_CHECK_INTERVAL,
            retry=Retry(NoBackoff(), 0),
            **options,
        )
    except ValueError as error:
        raise ValueError(f"{_display(url)!r} is not a Redis URL: {error}") from error
    _CLIENTS.add(client)
    return client


#: Every client ``_client`` made that is still alive, for the fork hooks.
_CLIENTS: weakref.WeakSet[redis.Redis] = weakref.WeakSet()
#: The pools' locks the forking thread holds across a fork.
_held: list[Any] = []


def _before_fork() -> None:
    # A forked child gets a copy of each pool's locks as they were. redis-py resets
    # a pool in the child (new connections) but keeps its lock: one that another
    # thread (the publisher, a listener) held at the fork stays held in the child
    # for good, and the child's first command, or its close, waits forever. Taking
    # them here makes the fork wait until no other thread is in a pool.
    for client in list(_CLIENTS):
        pool = client.connection_pool
        for name in ("_fork_lock", "_lock"):  # redis-py's order, in _checkpid
            lock = getattr(pool, name, None)
            if lock is not None:
                lock.acquire()
                _held.append(lock)


def _after_fork() -> None:
    while _held:
        _held.pop().release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork
    )


def check_url(url: str) -> None:
    """``ValueError`` naming ``url`` (without credentials) if it is not a Redis URL."""
    _client(url).close()


def _display(url: str) -> str:
    """The URL without credentials, query or fragment, for messages; even a malformed one."""
    # By hand, not urlsplit: that raises on a bad port or IPv6 literal, which are
    # exactly the URLs an error message has to show.
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, slash, path = rest.rpartition("@")[2].partition("/")
    return f"{scheme}{sep}{netloc}{slash}{path}"


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

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock (a thread of the parent's may have held this one)."""
        self._lock = threading.Lock()

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
