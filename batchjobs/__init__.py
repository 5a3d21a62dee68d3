"""batchjobs: Medusa-style batch jobs in one process, with no infrastructure."""

from ._checkout import find_strategies as _find_strategies
from .app import BatchJobs
from .errors import (
    BatchJobError,
    InvalidDataError,
    MissingContextKeyError,
    NotAllowedError,
    NotFoundError,
)
from .migrate import Migration, migrate
from .models import BatchJob, Schedule, Status
from .strategy import BatchJobStrategy, JobDraft, JobRun

_find_strategies(__path__[0])

__version__ = "0.1.0"

__all__ = [
    # the façade
    "BatchJobs",
    # records
    "BatchJob",
    "Schedule",
    "Status",
    # strategies
    "BatchJobStrategy",
    "JobDraft",
    "JobRun",
    # moving jobs between databases
    "Migration",
    "migrate",
    # errors
    "BatchJobError",
    "InvalidDataError",
    "MissingContextKeyError",
    "NotAllowedError",
    "NotFoundError",
    "__version__",
]
