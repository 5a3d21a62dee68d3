"""The Redis mirror of batch job events, and listeners for other processes.

``RedisMirror`` publishes the outbox (every event, written by the store in
the transaction of its change) to Redis, in seq order, as JSON on channel
``{prefix}:{event}``::

    {"event": "batch.completed", "id": "batch_01J...", "type": "csv-export",
     "status": "completed", "result": {...}, "at": "2024-...+00:00",
     "origin": "host:1234:ab12cd34", "seq": 1042}

``origin`` (beyond the documented keys) names the ``BatchJobs`` that
committed the event, so that a process can skip its own messages; ``seq`` is
the event's place in the outbox: a subscriber that sees a seq jump catches up
with ``BatchJobs.events(after=last_seen)``.

Redis is an observer, never a dependency of a job: a job never waits for
Redis. When Redis is down, slow or restarted, the events wait in the outbox,
one warning is logged per outage, and publishing resumes from the mirror's
cursor (kept in the database, its position written at most every
``STORE_SECONDS`` while publishing) when Redis is back; polling, not Redis, stays
the scheduler's source of truth.

Other processes follow the events with ``Subscription`` (an iterator) or
``EventListener`` (a callback thread); ``relay_to_signals`` re-emits them as
local blinker signals marked ``remote=True``.

``_mirror`` publishes, with its parts: ``_cursor`` (its position in the
database, leased), ``_handover`` (this process's events, in memory),
``_sender`` (the messages and their sending) and ``_wakeups`` (its listeners
on other processes); ``_subscription`` follows, and ``_connection`` holds
what both sides share: the client's settings, the backoff, the outage reports.
"""

from __future__ import annotations

# Beyond __all__, the tuning constants stay importable from here.
from ._connection import (  # noqa: F401
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    DEFAULT_PREFIX,
    HEALTH_CHECK_INTERVAL,
    MESSAGE_KEYS,
    RECONNECT_FIRST,
    RECONNECT_MAX,
    SOCKET_TIMEOUT,
    check_url,
)
from ._cursor import CURSOR_LEASE, STORE_SECONDS  # noqa: F401
from ._mirror import (  # noqa: F401
    HANDOFF_LIMIT,
    IDLE_SECONDS,
    LINGER,
    PIPELINE_SIZE,
    SWEEP_SECONDS,
    MirrorStats,
    RedisMirror,
)
from ._sender import message  # noqa: F401
from ._subscription import (  # noqa: F401
    DEFAULT_PATTERN,
    LISTEN_STEP,
    SUBSCRIBE_TIMEOUT,
    EventListener,
    RemoteEvent,
    Subscription,
    relay_to_signals,
)
from ._wakeups import WAKE_EVENTS

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_PATTERN",
    "DEFAULT_PREFIX",
    "MESSAGE_KEYS",
    "WAKE_EVENTS",
    "check_url",
    "EventListener",
    "MirrorStats",
    "RedisMirror",
    "RemoteEvent",
    "Subscription",
    "relay_to_signals",
]
