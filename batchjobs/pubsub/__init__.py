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

``_mirror`` publishes, ``_subscription`` follows, and ``_connection`` holds
what both share: the client's settings, the backoff, the outage reports.
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
)
from ._mirror import (  # noqa: F401
    DEFAULT_QUEUE_SIZE,
    LINGER,
    PIPELINE_SIZE,
    WAKE_EVENTS,
    MirrorStats,
    RedisMirror,
)
from ._subscription import (  # noqa: F401
    DEFAULT_PATTERN,
    LISTEN_STEP,
    SUBSCRIBE_TIMEOUT,
    EventListener,
    RemoteEvent,
    Subscription,
    relay_to_signals,
)

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
