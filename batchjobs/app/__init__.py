"""``BatchJobs``: the one object an application holds.

``_batch_jobs`` holds the façade, which hands each call to the part that
does it: ``service`` (lifecycle), ``runner`` (running jobs), ``schedules``,
``events`` and the parts of its own here: ``_settings`` (the settings'
defaults and checks), ``_workers`` (the background workers and what wakes
them), ``_event_hub`` (where committed events go, what wakes the feeds) and
``_calling_thread`` (waiting for a job, or running one, in the caller's thread).
"""

from __future__ import annotations

# Beyond __all__, the tuning constants stay importable from here.
from ._batch_jobs import BatchJobs, StrategyT  # noqa: F401
from ._calling_thread import WAIT_POLL_SECONDS  # noqa: F401
from ._settings import (  # noqa: F401
    DEFAULT_CHANNEL_PREFIX,
    DEFAULT_CONCURRENCY,
    DEFAULT_DB,
    DEFAULT_FILES_DIR,
    DEFAULT_POLL_INTERVAL,
)
from ._workers import DEFAULT_GIVE_UP_AFTER, IDLE_POLL_SECONDS  # noqa: F401

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DB",
    "DEFAULT_FILES_DIR",
    "DEFAULT_POLL_INTERVAL",
    "BatchJobs",
]
