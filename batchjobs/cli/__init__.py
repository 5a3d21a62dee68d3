"""The ``batchjobs`` command line: the whole lifecycle from a terminal.

A thin client of ``BatchJobs``: each command makes one or two calls on it and
prints the result. Data goes to stdout (``--json``: exactly one JSON
document), progress bars and messages to stderr. Exit status: 0 success; 1
when a watched or run job ends failed or canceled; 2 for bad input and every
``BatchJobError``, with its message and no traceback; 130 when Ctrl-C
interrupts a command (a worker or a server stops gracefully instead: 0).

The group mounts in a host application's click CLI::

    from batchjobs.cli import cli as batchjobs_cli
    host_cli.add_command(batchjobs_cli, "jobs")     # flask: app.cli.add_command(...)

Its commands use, in this order: a ``BatchJobs`` the host keeps in ``ctx.obj``
(``host_cli(obj=jobs)``), ``--app``/``BATCHJOBS_APP``, then ``--db``/``--redis``.
A new command is one function: ``@cli.command()`` above, ``@pass_jobs`` below.

The group and its error boundary are in ``_app``; the commands in ``_jobs``
(one job's lifecycle), ``_schedules`` (recurring jobs), ``_worker``
(long-running processes) and ``_admin`` (everything around the jobs), each
registered when imported here; what they read, print and show while
following a job in ``_input``, ``_output`` and ``_progress``.
"""

from __future__ import annotations

# Importing the command modules registers their commands on the group; the
# names stay importable from here, as when the CLI was one module.
from ._admin import (  # noqa: F401
    events,
    migrate,
    prune,
    show_version,
    strategies,
    template,
)
from ._app import EXIT_JOB_FAILED, EXIT_USAGE, CommandError, cli, main, pass_jobs
from ._jobs import (  # noqa: F401
    cancel,
    confirm,
    create,
    download,
    list_jobs,
    pause,
    resume,
    retry,
    run,
    show,
    watch,
)
from ._progress import (  # noqa: F401
    BAR_WIDTH,
    FOLLOW_INTERVAL,
    LOG_INTERVAL,
    RATE_WINDOW,
    _ProgressBar,
)
from ._schedules import schedule  # noqa: F401
from ._worker import serve, worker  # noqa: F401

__all__ = ["EXIT_JOB_FAILED", "EXIT_USAGE", "CommandError", "cli", "main", "pass_jobs"]
