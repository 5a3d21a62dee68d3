"""Running jobs: claiming them (``claims``), running one (``job``), their leases (``leases``),
whether a lease's holder still lives (``holders``).

Imports flow one way inside: ``claims`` → ``job`` → ``leases``; ``claims`` → ``holders``.
"""

from __future__ import annotations

from .claims import CLAIM_BATCH, DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, SHORT_JOB, JobRunner
from .job import DEFAULT_MAX_RETRY, JobExecution, retry_backoff
from .leases import Heartbeat, Leases, LeaseState

__all__ = [
    "CLAIM_BATCH",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_RETRY",
    "SHORT_JOB",
    "Heartbeat",
    "JobExecution",
    "JobRunner",
    "LeaseState",
    "Leases",
    "retry_backoff",
]
