"""The ``batchjobs`` command line: the whole lifecycle from a terminal.

A thin client of ``BatchJobs``: each command makes one or two calls on it and
prints the result. Data goes to stdout (``--json``: exactly one JSON
document), progress bars and messages to stderr. Exit status: 0 success; 1
when a watched or run job ends failed or canceled; 2 for bad input and every
``BatchJobError``, with its message and no traceback.

The group mounts in a host application's click CLI::

    from batchjobs.cli import cli as batchjobs_cli
    host_cli.add_command(batchjobs_cli, "jobs")     # flask: app.cli.add_command(...)

Its commands use, in this order: a ``BatchJobs`` the host keeps in ``ctx.obj``
(``host_cli(obj=jobs)``), ``--app``/``BATCHJOBS_APP``, then ``--db``/``--redis``.
A new command is one function: ``@cli.command()`` above, ``@pass_jobs`` below.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import click

from . import signals
from .app import DEFAULT_DB, BatchJobs
from .errors import BatchJobError
from .models import RESTING_STATUSES, BatchJob, Status, utcnow
from .strategy import BatchJobStrategy

__all__ = ["EXIT_JOB_FAILED", "EXIT_USAGE", "CommandError", "cli", "main", "pass_jobs"]

#: A watched or run job ended ``failed`` or ``canceled`` (or did not rest in time).
EXIT_JOB_FAILED = 1
#: Bad input or a refused operation (every ``BatchJobError``).
EXIT_USAGE = 2
#: Seconds between two looks at a followed job.
FOLLOW_INTERVAL = 0.1
#: Seconds of history the records/s rate is measured over.
RATE_WINDOW = 10.0
#: When stderr is not a terminal, a progress line at most this often (seconds).
LOG_INTERVAL = 10.0
BAR_WIDTH = 20
#: Jobs fetched, deleted and forgotten at a time by ``prune``.
PRUNE_PAGE = 500
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RESULT_SHOWN = {
    "count",
    "advancement_count",
    "progress",
    "errors",
    "error_count",
    "stat_descriptors",
    "file_key",
    "file_size",
}

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """Bad input or a refused operation: the message on stderr, exit status 2."""

    exit_code = EXIT_USAGE


# -- the BatchJobs a command works on ------------------------------------------


class _Session:
    """The group's options; builds the ``BatchJobs`` on first use and closes what it built."""

    def __init__(self, db: str, redis_url: str | None, app: str | None, prog: str) -> None:
        self.db, self.redis_url, self.app, self.prog = db, redis_url, app, prog
        self.given: BatchJobs | None = None  # the host's or the --app MODULE:ATTR one
        self._jobs: BatchJobs | None = None
        self._owned = False

    @property
    def jobs(self) -> BatchJobs:
        if self._jobs is None:
            self._jobs = self.given or self._load()
        return self._jobs

    def _load(self) -> BatchJobs:
        if self.app and ":" in self.app:
            return _load_instance(self.app)
        module = _import(self.app) if self.app else None
        try:
            jobs = BatchJobs(self.db, redis_url=self.redis_url)
        except sqlite3.Error as error:
            raise CommandError(f"Cannot open the database {self.db}: {error}") from None
        self._owned = True
        if module is not None:
            strategies = _strategies_defined_in(module)
            if not strategies:
                raise click.BadParameter(
                    f"module {module.__name__!r} defines no BatchJobStrategy subclass "
                    "(name a BatchJobs with MODULE:ATTR)",
                    param_hint="'--app'",
                )
            for strategy in strategies:
                jobs.registry.register(strategy, origin=f"app module {module.__name__}")
        return jobs

    def close(self) -> None:
        if self._jobs is not None and self._owned:
            self._jobs.close()


def _import(name: str) -> ModuleType:
    # Like ``flask --app``: modules next to where the command runs are importable.
    if not {"", ".", os.getcwd()} & set(sys.path):
        sys.path.insert(0, os.getcwd())
    if name.endswith(".py"):
        name = name[:-3].replace(os.sep, ".").replace("/", ".")
    if not name or name.startswith("."):
        raise click.BadParameter(f"{name!r} is not a module name", param_hint="'--app'")
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise click.BadParameter(f"cannot import {name!r}: {error}", param_hint="'--app'") from None


def _load_instance(spec: str) -> BatchJobs:
    module_name, _, attr = spec.partition(":")
    value: Any = _import(module_name)
    try:
        for part in attr.split("."):
            value = getattr(value, part)
    except AttributeError:
        raise click.BadParameter(
            f"module {module_name!r} has no attribute {attr!r}", param_hint="'--app'"
        ) from None
    if callable(value) and not isinstance(value, BatchJobs):
        value = value()  # an application factory
    if not isinstance(value, BatchJobs):
        raise click.BadParameter(
            f"{spec} is a {type(value).__name__}, not a BatchJobs", param_hint="'--app'"
        )
    return value


def _strategies_defined_in(module: ModuleType) -> list[type[BatchJobStrategy]]:
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BatchJobStrategy)
        and value is not BatchJobStrategy
        and value.__module__ == module.__name__  # not one imported from elsewhere
        and value.batch_type  # abstract bases leave it empty
    ]


def _session() -> _Session:
    session = click.get_current_context().find_object(_Session)
    if session is None:  # pragma: no cover - only when a command is used outside the group
        raise RuntimeError("batchjobs commands run inside the batchjobs group")
    return session


def pass_jobs(f: F) -> F:
    """Decorate a command so that its first argument is the ``BatchJobs`` to work on."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(_session().jobs, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _Group(click.Group):
    """The command group; turns ``BatchJobError`` into exit status 2 at the boundary."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchJobError as error:
            raise CommandError(error.message) from None


@click.group(name="batchjobs", cls=_Group)
@click.option(
    "--db",
    envvar="BATCHJOBS_DB",
    default=f"./{DEFAULT_DB}",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The SQLite file [env: BATCHJOBS_DB].",
)
@click.option(
    "--redis",
    "redis_url",
    envvar="BATCHJOBS_REDIS_URL",
    metavar="URL",
    help="Mirror events to Redis [env: BATCHJOBS_REDIS_URL].",
)
@click.option(
    "--app",
    envvar="BATCHJOBS_APP",
    metavar="MODULE[:ATTR]",
    help="MODULE: register the strategies it defines; MODULE:ATTR: use that BatchJobs "
    "and its settings [env: BATCHJOBS_APP].",
)
@click.pass_context
def cli(ctx: click.Context, db: str, redis_url: str | None, app: str | None) -> None:
    """Medusa-style batch jobs in one SQLite file.

    \b
    Examples:
      batchjobs --app examples.shout run shout --set words='["a", "b"]'
      export BATCHJOBS_APP=examples.shout
      batchjobs create shout --dry-run --set words='["a"]'
      batchjobs list --status pre_processed
      batchjobs worker
    """
    host_jobs = ctx.find_object(BatchJobs)
    session = _Session(db, redis_url or None, app or None, ctx.command_path)
    session.given = host_jobs
    ctx.obj = session
    ctx.call_on_close(session.close)


def main() -> None:
    """The ``batchjobs`` console script."""
    cli(prog_name="batchjobs")


# -- input ----------------------------------------------------------------------


class _JsonObject(click.ParamType):
    name = "JSON"

    def convert(self, value: Any, param: Any, ctx: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        text = value
        if value.startswith("@"):
            try:
                if value == "@-":
                    text = click.get_text_stream("stdin").read()
                else:
                    text = Path(value[1:]).read_text(encoding="utf-8")
            except OSError as error:
                self.fail(f"cannot read {value[1:]}: {error.strerror}", param, ctx)
        try:
            data = json.loads(text)
        except ValueError as error:
            self.fail(f"not valid JSON: {error}", param, ctx)
        if not isinstance(data, dict):
            self.fail(f"must be a JSON object, not {type(data).__name__}", param, ctx)
        return data


class _Setting(click.ParamType):
    name = "KEY=VALUE"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        key, sep, text = value.partition("=")
        if not sep or not key:
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        try:
            return key, json.loads(text)
        except ValueError:
            return key, text  # not JSON: a plain string


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        number, unit = value[:-1], value[-1:]
        if unit not in _DURATION_UNITS or not number.isdigit():
            self.fail(f"{value!r} is not a duration like 30d, 12h, 15m, 2w or 90s", param, ctx)
        return timedelta(seconds=int(number) * _DURATION_UNITS[unit])


def _job_input(f: F) -> F:
    """The options ``create`` and ``run`` share."""
    for option in reversed(
        [
            click.option(
                "--context",
                type=_JsonObject(),
                metavar="JSON|@FILE",
                help="The job's context: a JSON object, @file.json, or @- for stdin.",
            ),
            click.option(
                "--set",
                "settings",
                type=_Setting(),
                multiple=True,
                help="Set one context key (repeatable); VALUE is JSON, else a string.",
            ),
            click.option(
                "--dry-run", is_flag=True, help="Stop after pre-processing, until confirmed."
            ),
            click.option("--user", help="The user the job is created by (created_by)."),
        ]
    ):
        f = option(f)
    return f


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(f)


def _create(
    jobs: BatchJobs,
    batch_type: str,
    context: dict[str, Any] | None,
    settings: tuple[tuple[str, Any], ...],
    dry_run: bool,
    user: str | None,
) -> BatchJob:
    merged = {**(context or {}), **dict(settings)}
    return jobs.create(batch_type, merged, dry_run=dry_run, created_by=user)


# -- output ---------------------------------------------------------------------


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _count_text(job: BatchJob) -> str:
    done = job.result.get("advancement_count", 0)
    count = job.result.get("count")
    return f"{done}" if count is None else f"{done}/{count}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _short_json(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(job: BatchJob) -> Iterator[str]:
    """The ``show`` view: one field a line, stat descriptors and errors spelled out."""
    result = job.result
    fields: list[tuple[str, str]] = [
        ("id", job.id),
        ("type", job.type),
        ("status", job.status.value),
        ("dry_run", "yes" if job.dry_run else "no"),
        ("created_by", job.created_by or "-"),
        (
            "progress",
            _count_text(job) + (f" ({result['progress']:.0%})" if "progress" in result else ""),
        ),
        ("context", _short_json(job.context)),
    ]
    for name in (
        "created_at",
        "pre_processed_at",
        "confirmed_at",
        "processing_at",
        "completed_at",
        "canceled_at",
        "failed_at",
    ):
        if getattr(job, name) is not None:
            fields.append((name, _when(getattr(job, name))))
    if "file_key" in result:
        size = f" ({result['file_size']} bytes)" if "file_size" in result else ""
        fields.append(("file", f"{result['file_key']}{size}"))
    fields.extend(
        (key, _short_json(value)) for key, value in result.items() if key not in _RESULT_SHOWN
    )
    stats = result.get("stat_descriptors") or []
    if stats:
        fields.append(("stat_descriptors", str(len(stats))))
    errors = result.get("errors") or []
    if errors:
        fields.append(("errors", str(result.get("error_count", len(errors)))))
    for name, value in fields:
        yield f"{name:<17} {value}"
        if name == "stat_descriptors":
            yield from (f"  {_stat_text(s)}" for s in stats)
        elif name == "errors":
            yield from (f"  {_error_text(e)}" for e in errors)


def _stat_text(stat: dict[str, Any]) -> str:
    return f"{stat.get('name') or stat.get('key')}: {stat.get('message', '')}"


def _error_text(error: dict[str, Any]) -> str:
    details = {k: v for k, v in error.items() if k not in ("message", "code")}
    extra = f" {_short_json(details)}" if details else ""
    return f"{error.get('message')} [{error.get('code')}]{extra}"


def _report_end(job: BatchJob) -> None:
    """What a person needs to know once a followed job rests (stderr)."""
    prog = _session().prog
    if job.status == Status.PRE_PROCESSED:
        for stat in job.result.get("stat_descriptors") or []:
            click.echo(f"  {_stat_text(stat)}", err=True)
        click.echo(
            f"Dry run: nothing was changed. Process it with: {prog} confirm {job.id}", err=True
        )
    elif job.status == Status.FAILED:
        errors = job.result.get("errors") or []
        for error in errors[-3:]:
            click.echo(f"error: {_error_text(error)}", err=True)
        click.echo(
            f"{job.id} failed; resume it from its checkpoint with: {prog} retry {job.id}", err=True
        )


# -- following a job ------------------------------------------------------------


class _ProgressBar:
    """One line on stderr: a bar, records done, records/s and ETA, the status.

    Redrawn in place on a terminal; elsewhere (logs, pipes) printed at most
    every ``LOG_INTERVAL`` seconds, and once at the end.
    """

    def __init__(self, *, tty: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.tty, self.clock = tty, clock
        self.samples: deque[tuple[float, int]] = deque()
        self.last_line = ""
        self.last_print = clock()

    def rate(self) -> float | None:
        """Records per second over the last ``RATE_WINDOW`` seconds, if measurable."""
        if len(self.samples) < 2:
            return None
        (t0, done0), (t1, done1) = self.samples[0], self.samples[-1]
        return (done1 - done0) / (t1 - t0) if t1 > t0 and done1 > done0 else None

    def line(self, job: BatchJob) -> str:
        done = job.result.get("advancement_count", 0)
        count = job.result.get("count")
        parts = []
        if count is not None:
            fraction = min(done / count, 1.0) if count else float(job.status == Status.COMPLETED)
            filled = int(BAR_WIDTH * fraction)
            parts.append(f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {fraction:4.0%}")
        parts.append(_count_text(job))
        rate = self.rate()
        if rate and job.status == Status.PROCESSING:
            parts.append(f"{rate:.1f} rec/s")
            if count is not None:
                parts.append(f"ETA {timedelta(seconds=round(max(count - done, 0) / rate))}")
        parts.append(job.status.value)
        return "  ".join(parts)

    def update(self, job: BatchJob) -> None:
        now = self.clock()
        self.samples.append((now, job.result.get("advancement_count", 0)))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()
        if self.tty:
            self._draw(self.line(job))
        elif now - self.last_print >= LOG_INTERVAL:
            self.last_print = now
            click.echo(self.line(job), err=True)

    def finish(self, job: BatchJob) -> None:
        line = self.line(job)
        if self.tty:
            self._draw(line)
            click.echo(err=True)
        else:
            click.echo(line, err=True)

    def _draw(self, line: str) -> None:
        width = max(shutil.get_terminal_size().columns - 1, 20)
        line = line[:width]
        click.echo("\r" + line.ljust(len(self.last_line)), nl=False, err=True)
        self.last_line = line


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _follow(
    jobs: BatchJobs,
    job_id: str,
    *,
    timeout: float | None = None,
    finished: threading.Event | None = None,
    tick: Callable[[], None] | None = None,
) -> BatchJob:
    """Show job ``job_id``'s progress until it rests (or ``finished`` is set)."""
    bar = _ProgressBar(tty=_stderr_is_tty())
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = finished or threading.Event()
    while True:
        ended = pause.is_set()
        job = jobs.retrieve(job_id)
        if job.is_resting or ended:
            break
        bar.update(job)
        if deadline is not None and time.monotonic() >= deadline:
            bar.finish(job)
            raise click.ClickException(
                f"{job_id} is still {job.status.value} after {timeout:g} seconds"
            )
        if tick is not None:
            tick()
        pause.wait(FOLLOW_INTERVAL)
    bar.finish(job)
    return job


def _end(job: BatchJob, as_json: bool, stdout: str | None) -> None:
    """Print a followed job's outcome; exit 1 if it failed or was canceled."""
    if as_json:
        _print_json(job.to_dict())
    elif stdout is not None:
        click.echo(stdout)
    _report_end(job)
    if job.status in (Status.FAILED, Status.CANCELED):
        raise click.exceptions.Exit(EXIT_JOB_FAILED)


def _run_here(jobs: BatchJobs, job_id: str) -> BatchJob:
    """Run job ``job_id`` in this process, with a progress bar, until it rests."""
    runner = jobs.runner
    finished = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            while not runner.stopping.is_set():
                runner.run_next(ids=[job_id])
                if jobs.retrieve(job_id).is_resting:
                    return
                # Leased by a worker elsewhere, or waiting out a retry backoff.
                runner.stopping.wait(FOLLOW_INTERVAL)
        except BaseException as error:  # re-raised in the calling thread
            failure.append(error)
        finally:
            finished.set()

    renew_every = runner.lease.total_seconds() / 3
    renewed = [time.monotonic()]

    def heartbeat() -> None:  # keep the lease while one chunk runs long
        if time.monotonic() - renewed[0] >= renew_every:
            renewed[0] = time.monotonic()
            runner.renew_leases()

    thread = threading.Thread(target=work, name="batchjobs-run", daemon=True)
    thread.start()
    try:
        job = _follow(jobs, job_id, finished=finished, tick=heartbeat)
    except KeyboardInterrupt:
        click.echo(
            f"\nStopping at the next checkpoint; {job_id} resumes from it "
            f"in a worker: {_session().prog} worker",
            err=True,
        )
        runner.stopping.set()
        thread.join()
        raise click.exceptions.Exit(130) from None
    thread.join()
    if failure:
        raise failure[0]
    return job


# -- commands -------------------------------------------------------------------


@cli.command()
@click.argument("batch_type", metavar="TYPE")
@_job_input
@click.option("--wait", is_flag=True, help="Follow the job until it rests (a worker runs it).")
@_json_option
@pass_jobs
def create(
    jobs: BatchJobs,
    batch_type: str,
    context: dict[str, Any] | None,
    settings: tuple[tuple[str, Any], ...],
    dry_run: bool,
    user: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Create a job of TYPE; a worker processes it. Prints its id.

    \b
    Examples:
      batchjobs create shout --set words='["a", "b"]'
      batchjobs create csv-import --context @import.json --dry-run --user usr_1
      ID=$(batchjobs create shout --context '{"words": ["a"]}')
    """
    job = _create(jobs, batch_type, context, settings, dry_run, user)
    if not wait:
        if as_json:
            _print_json(job.to_dict())
        else:
            click.echo(job.id)
        click.echo(
            f"Created {job.type} job {job.id}; a worker processes it ({_session().prog} worker).",
            err=True,
        )
        return
    _end(_follow(jobs, job.id), as_json, job.id)


@cli.command()
@click.argument("batch_type", metavar="TYPE")
@_job_input
@_json_option
@pass_jobs
def run(
    jobs: BatchJobs,
    batch_type: str,
    context: dict[str, Any] | None,
    settings: tuple[tuple[str, Any], ...],
    dry_run: bool,
    user: str | None,
    as_json: bool,
) -> None:
    """Create a job of TYPE and process it here, with a progress bar. Prints its id.

    A dry run stops once pre-processed and shows what would happen. Exits 1
    if the job fails or is canceled; Ctrl-C stops it at its next checkpoint.

    \b
    Examples:
      batchjobs run shout --set words='["a", "b"]'
      batchjobs run csv-export --context @export.json --dry-run
    """
    job = _create(jobs, batch_type, context, settings, dry_run, user)
    _end(_run_here(jobs, job.id), as_json, job.id)


@cli.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="Repeatable.",
)
@click.option("--type", "types", multiple=True, help="Repeatable.")
@click.option("--user", "users", multiple=True, help="created_by; repeatable.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=0))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@_json_option
@pass_jobs
def list_jobs(
    jobs: BatchJobs,
    statuses: tuple[str, ...],
    types: tuple[str, ...],
    users: tuple[str, ...],
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List jobs, newest first.

    \b
    Examples:
      batchjobs list
      batchjobs list --status failed --status canceled --type csv-export
      batchjobs list --user usr_1 --limit 50 --offset 50 --json
    """
    filters: dict[str, Any] = {
        name: list(values)
        for name, values in (("status", statuses), ("type", types), ("created_by", users))
        if values
    }
    page, count = jobs.list_and_count(limit=limit, offset=offset, **filters)
    if as_json:
        _print_json(
            {
                "batch_jobs": [j.to_dict() for j in page],
                "count": count,
                "offset": offset,
                "limit": limit,
            }
        )
        return
    if page:
        rows = [
            [j.id, j.type, j.status.value, _count_text(j), j.created_by or "-", _when(j.created_at)]
            for j in page
        ]
        click.echo(_table(["ID", "TYPE", "STATUS", "PROGRESS", "USER", "CREATED"], rows))
    more = f"; next page: --offset {offset + len(page)}" if offset + len(page) < count else ""
    click.echo(f"{len(page)} of {count} job(s){more}", err=True)


@cli.command()
@click.argument("job_id", metavar="ID")
@_json_option
@pass_jobs
def show(jobs: BatchJobs, job_id: str, as_json: bool) -> None:
    """Show a job: progress, timestamps, stat descriptors, errors.

    \b
    Example:
      batchjobs show batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E
    """
    job = jobs.retrieve(job_id)
    if as_json:
        _print_json(job.to_dict())
    else:
        click.echo("\n".join(_describe(job)))


def _changed(job: BatchJob, as_json: bool) -> None:
    if as_json:
        _print_json(job.to_dict())
    else:
        click.echo(f"{job.id} {job.status.value}")


@cli.command()
@click.argument("job_id", metavar="ID")
@_json_option
@pass_jobs
def confirm(jobs: BatchJobs, job_id: str, as_json: bool) -> None:
    """Confirm a pre-processed dry run; a worker then processes it.

    \b
    Example:
      batchjobs confirm batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E
    """
    _changed(jobs.confirm(job_id), as_json)


@cli.command()
@click.argument("job_id", metavar="ID")
@_json_option
@pass_jobs
def cancel(jobs: BatchJobs, job_id: str, as_json: bool) -> None:
    """Cancel a job; a running one stops at its next checkpoint.

    \b
    Example:
      batchjobs cancel batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E
    """
    _changed(jobs.cancel(job_id), as_json)


@cli.command()
@click.argument("job_id", metavar="ID")
@_json_option
@pass_jobs
def retry(jobs: BatchJobs, job_id: str, as_json: bool) -> None:
    """Resume a failed job from its checkpoint (in a worker).

    \b
    Example:
      batchjobs retry batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E
    """
    _changed(jobs.retry(job_id), as_json)


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Give up (exit 1) after this long.",
)
@_json_option
@pass_jobs
def watch(jobs: BatchJobs, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Follow a job's progress until it rests.

    A progress bar with records/s and ETA, on stderr. Exits 0 when it
    completes (or rests pre-processed), 1 when it fails or is canceled.

    \b
    Example:
      batchjobs watch batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E --timeout 600
    """
    job = _follow(jobs, job_id, timeout=timeout)
    _end(job, as_json, f"{job.id} {job.status.value}")


@cli.command()
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="Jobs run at once [default: 2, or the app's]."
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="How often to look for jobs [default: 1, or the app's].",
)
@click.option("--until-idle", is_flag=True, help="Exit once every job of a registered type rests.")
@pass_jobs
def worker(
    jobs: BatchJobs, concurrency: int | None, poll_interval: float | None, until_idle: bool
) -> None:
    """Run jobs in the foreground until SIGINT or SIGTERM.

    On the signal, running jobs finish their chunk, save their checkpoint
    and hand over; a second signal stops at once (jobs resume from their
    last checkpoint when their lease expires).

    \b
    Examples:
      batchjobs --app myapp.jobs:jobs worker --concurrency 4
      batchjobs worker --until-idle
    """
    types = jobs.registry.types
    if not types:
        raise CommandError(
            "No strategies are registered: pass --app MODULE[:ATTR] "
            "or install a package with batchjobs.strategies entry points"
        )
    if concurrency is not None:
        jobs.concurrency = concurrency
    if poll_interval is not None:
        jobs.poll_interval = poll_interval
    stop = threading.Event()
    previous = _trap_signals(stop)
    events = _echo_events(jobs)
    ending = "exits when no job is left" if until_idle else "stop it with Ctrl-C"
    click.echo(
        f"Worker on {jobs.db_path} (types: {', '.join(types)}; concurrency "
        f"{jobs.concurrency}); {ending}.",
        err=True,
    )
    try:
        jobs.start()
        active = [s.value for s in Status if s not in RESTING_STATUSES]
        while not stop.wait(FOLLOW_INTERVAL if until_idle else 0.5):
            if until_idle and not jobs.list_and_count(status=active, type=types, limit=0)[1]:
                break
    finally:
        jobs.shutdown()
        events()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo("Stopped.", err=True)


def _trap_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGINT/SIGTERM set ``stop``; a second one exits at once. Returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # mounted in a host that runs commands off the main thread

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            click.echo("Stopping at once.", err=True)
            os._exit(130)
        click.echo("Stopping: running jobs save a checkpoint and hand over...", err=True)
        stop.set()

    # A worker started in the background of a script ignores SIGINT (Ctrl-C): keep it so.
    trapped = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    return {s: signal.signal(s, on_signal) for s in trapped}


def _echo_events(jobs: BatchJobs) -> Callable[[], None]:
    """Print a line on stderr as jobs start and end; returns the function that stops it."""

    def echo(sender: Any, *, job: BatchJob, **extra: Any) -> None:
        if job.status == Status.PRE_PROCESSED and not job.dry_run:
            return
        note = ""
        if job.status == Status.FAILED and job.result.get("errors"):
            note = f": {job.result['errors'][-1].get('message')}"
        elif job.status in (Status.COMPLETED, Status.PROCESSING):
            note = f" {_count_text(job)}"
        stamp = datetime.now().strftime("%H:%M:%S")
        click.echo(f"{stamp} {job.id} {job.type} {job.status.value}{note}", err=True)

    events = [
        "batch.pre_processed",
        "batch.processing",
        "batch.completed",
        "batch.canceled",
        "batch.failed",
    ]
    for event in events:
        signals.signal_for(event).connect(echo, sender=jobs)

    def stop() -> None:
        for event in events:
            signals.signal_for(event).disconnect(echo, sender=jobs)

    return stop


class _TokenUser(click.ParamType):
    name = "TOKEN=USER"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        # At the last "=": a base64 token may end with "=" padding, a user id has none.
        token, sep, user = value.rpartition("=")
        if not sep or not token or not user:
            self.fail("expected TOKEN=USER (the value is not shown: it holds a secret)", param, ctx)
        return token, user


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on; 0.0.0.0 for every interface.",
)
@click.option(
    "--port", default=9000, show_default=True, type=click.IntRange(0, 65535), help="0: any free."
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    type=_TokenUser(),
    envvar="BATCHJOBS_TOKENS",
    help="A bearer token and the user id it stands for; repeatable. Prefer the environment: "
    "a command line is visible to the machine's other users [env: BATCHJOBS_TOKENS, "
    "space-separated].",
)
@click.option(
    "--no-worker", is_flag=True, help="Serve the API only; a `batchjobs worker` runs the jobs."
)
@pass_jobs
def serve(
    jobs: BatchJobs, host: str, port: int, tokens: tuple[tuple[str, str], ...], no_worker: bool
) -> None:
    """Serve the admin HTTP API, and run jobs, until SIGINT or SIGTERM.

    Medusa's routes under /admin/batch-jobs; a request sends "Authorization:
    Bearer TOKEN" and sees only the jobs of that token's user. The server is
    werkzeug's with a fixed pool of threads: enough for an admin API that a
    few clients call; for public traffic, serve batchjobs.http.create_app
    with gunicorn (see the README). On the signal the server stops taking
    requests, those in progress finish, and running jobs save a checkpoint
    and hand over.

    \b
    Examples:
      batchjobs --app myapp.jobs:jobs serve --token s3cret=usr_1
      BATCHJOBS_TOKENS='s3cret=usr_1 t0k3n=usr_2' batchjobs serve --port 8080 --no-worker
      curl -H 'Authorization: Bearer s3cret' http://127.0.0.1:9000/admin/batch-jobs
    """
    try:
        from .http import PREFIX, AdminServer, create_app
    except ImportError as error:
        if error.name not in ("flask", "werkzeug"):
            raise
        raise CommandError("serve needs Flask: pip install 'batchjobs[http]'") from None
    users: dict[str, str] = {}
    for token, user in tokens:
        if users.setdefault(token, user) != user:
            raise CommandError("One --token is given for two users")
    if not users:
        raise CommandError(
            "Name the API's users: --token TOKEN=USER (repeatable) or BATCHJOBS_TOKENS"
        )
    try:
        server = AdminServer(create_app(jobs, tokens=users), host=host, port=port)
    except OSError as error:
        raise CommandError(f"Cannot listen on {host}:{port}: {error.strerror or error}") from None
    stop = threading.Event()
    previous = _trap_signals(stop)
    events = (lambda: None) if no_worker else _echo_events(jobs)
    thread = threading.Thread(target=server.serve_forever, name="batchjobs-serve", daemon=True)
    try:
        if not no_worker:
            jobs.start()
        thread.start()
        work = (
            "no worker"
            if no_worker
            else f"workers for {', '.join(jobs.registry.types) or 'no type'} "
            f"(concurrency {jobs.concurrency})"
        )
        click.echo(
            f"Admin API on {server.url}{PREFIX} ({len(users)} token(s); {work}; "
            f"{jobs.db_path}); stop it with Ctrl-C.",
            err=True,
        )
        while not stop.wait(0.5) and thread.is_alive():
            pass
    finally:
        server.shutdown()
        jobs.shutdown()
        events()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not stop.is_set():
        raise click.ClickException("The HTTP server stopped unexpectedly")
    click.echo("Stopped.", err=True)


@cli.command()
@_json_option
@pass_jobs
def strategies(jobs: BatchJobs, as_json: bool) -> None:
    """List job types with their strategy class and origin.

    \b
    Examples:
      batchjobs --app examples.shout strategies
      batchjobs strategies --json
    """
    rows = []
    for batch_type in jobs.registry.types:
        cls = type(jobs.strategy(batch_type))
        rows.append(
            [batch_type, f"{cls.__module__}.{cls.__qualname__}", jobs.registry.origin(batch_type)]
        )
    if as_json:
        keys = ("type", "class", "origin")
        _print_json({"strategies": [dict(zip(keys, row, strict=True)) for row in rows]})
    elif rows:
        click.echo(_table(["TYPE", "CLASS", "ORIGIN"], rows))
    else:
        click.echo("No strategies are registered: pass --app MODULE[:ATTR].", err=True)


@cli.command()
@click.argument("batch_type", metavar="TYPE")
@pass_jobs
def template(jobs: BatchJobs, batch_type: str) -> None:
    """Print the template file of TYPE's strategy.

    What its build_template() returns, for users to fill in.

    \b
    Example:
      batchjobs template csv-import > import.csv
    """
    strategy = jobs.strategy(batch_type)
    text = strategy.build_template()
    if text is None:
        raise CommandError(f"The {batch_type} strategy ({type(strategy).__name__}) has no template")
    click.echo(text, nl=not text.endswith("\n"))


@cli.command()
@click.option(
    "--pattern",
    default="batch.*",
    show_default=True,
    metavar="GLOB",
    help="Which events: a Redis glob over their names (batch.completed, batch.c*).",
)
@click.option("--prefix", help="The channel prefix [default: batchjobs, or the app's].")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many events.")
@click.option("--json", "as_json", is_flag=True, help="Print each message as JSON, one a line.")
@pass_jobs
def events(
    jobs: BatchJobs, pattern: str, prefix: str | None, count: int | None, as_json: bool
) -> None:
    """Follow the events that every process mirrors to Redis, live.

    Needs Redis: --redis, BATCHJOBS_REDIS_URL or the app's redis_url. One
    line per event (--json: the message as published); reconnects by
    itself when Redis comes back. Ctrl-C stops.

    \b
    Examples:
      batchjobs --redis redis://localhost:6379/0 events
      batchjobs events --pattern 'batch.c*' --json | jq -r .id
    """
    from .pubsub import Subscription

    if not jobs.redis_url:
        raise CommandError("events needs Redis: pass --redis URL or set BATCHJOBS_REDIS_URL")
    try:
        subscription = Subscription(
            jobs.redis_url, prefix=prefix or jobs.channel_prefix, pattern=pattern
        )
    except ValueError as error:
        raise CommandError(f"Bad Redis URL: {error}") from None
    try:
        if not subscription.connect(report=False):
            raise CommandError(
                f"Cannot reach Redis at {subscription.where}: {subscription.last_error}"
            )
        click.echo(
            f"Following {subscription.pattern} on {subscription.where}; stop it with Ctrl-C.",
            err=True,
        )
        for seen, event in enumerate(subscription, start=1):
            if as_json:
                click.echo(json.dumps(event.to_dict(), ensure_ascii=False))
            else:
                click.echo(_event_line(event))
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        click.echo("Stopped.", err=True)
    finally:
        subscription.close()


def _event_line(event: Any) -> str:
    """One mirrored event (a ``RemoteEvent``) as a line: time, event, id, type, status, count."""
    try:
        stamp = datetime.fromisoformat(event.at).astimezone().strftime("%H:%M:%S")
    except (TypeError, ValueError):
        stamp = "--:--:--"
    done, total = event.result.get("advancement_count"), event.result.get("count")
    progress = "" if done is None and total is None else f" {done or 0}"
    if total is not None:
        progress += f"/{total}"
    return f"{stamp} {event.event:<19} {event.id} {event.type} {event.status}{progress}"


@cli.command()
@click.option(
    "--older-than",
    required=True,
    type=_Duration(),
    help="Age of the last change (updated_at): 30d, 12h, 15m, 2w, 90s.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(sorted(s.value for s in RESTING_STATUSES)),
    help="Only these resting statuses (repeatable) [default: all resting].",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@_json_option
@pass_jobs
def prune(
    jobs: BatchJobs, older_than: timedelta, statuses: tuple[str, ...], dry_run: bool, as_json: bool
) -> None:
    """Delete old resting jobs and their files.

    Deletes the jobs unchanged (updated_at) for longer than --older-than.
    Resting: pre_processed (a dry run never confirmed), completed, canceled,
    failed. Active jobs are never pruned.

    \b
    Examples:
      batchjobs prune --older-than 30d
      batchjobs prune --older-than 12h --status failed --status canceled --dry-run
    """
    cutoff = utcnow() - older_than
    filters = {
        "status": list(statuses) or [s.value for s in RESTING_STATUSES],
        "updated_at": {"lt": cutoff},
    }
    deleted: list[BatchJob] = []
    files: list[str] = []
    while True:
        offset = len(deleted) if dry_run else 0
        page, _ = jobs.list_and_count(
            limit=PRUNE_PAGE, offset=offset, order="created_at", **filters
        )
        if not page:
            break
        if not dry_run:
            # Only jobs still resting go; rows first: a crash in between leaves
            # a stray file, never a job without its file.
            gone = set(jobs.store.delete([j.id for j in page], statuses=RESTING_STATUSES))
            page = [job for job in page if job.id in gone]
            for job in page:
                key = job.result.get("file_key")
                if isinstance(key, str) and _delete_file(jobs, key):
                    files.append(key)
        deleted.extend(page)
    if as_json:
        _print_json({"deleted": [j.id for j in deleted], "files": files, "dry_run": dry_run})
    elif dry_run and deleted:
        rows = [[j.id, j.type, j.status.value, _when(j.updated_at)] for j in deleted]
        click.echo(_table(["ID", "TYPE", "STATUS", "UPDATED"], rows))
    verb = "Would delete" if dry_run else "Deleted"
    click.echo(f"{verb} {len(deleted)} job(s) and {len(files)} file(s).", err=True)


def _delete_file(jobs: BatchJobs, key: str) -> bool:
    try:
        return jobs.files.delete(key)
    except BatchJobError as error:  # a key the file store refuses: leave it, say so
        click.echo(f"warning: file {key!r} not deleted: {error.message}", err=True)
        return False


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Where to write it; - for stdout [default: the file's name, in this directory].",
)
@pass_jobs
def download(jobs: BatchJobs, job_id: str, output: str | None) -> None:
    """Copy the file a completed job made (its result.file_key) out of the file store.

    \b
    Examples:
      batchjobs download batch_01JDV3T0F6B8C2D4E6G8H0J2K4 -o products.csv
      batchjobs download batch_01JDV3T0F6B8C2D4E6G8H0J2K4 -o - | head
    """
    job = jobs.retrieve(job_id)
    key = job.result.get("file_key")
    if not isinstance(key, str) or not key:
        raise CommandError(f"Batch job {job.id} ({job.type}) has no file")
    if job.status != Status.COMPLETED:
        raise CommandError(
            f"Batch job {job.id} is {job.status.value}: its file is whole once it is completed"
        )
    try:
        source = jobs.files.open_read(key)
    except FileNotFoundError:
        raise CommandError(f"The file of batch job {job.id} ({key}) is gone") from None
    with source:  # opened first: a missing file leaves no empty one behind
        size = os.fstat(source.fileno()).st_size
        if output == "-":
            shutil.copyfileobj(source, click.get_binary_stream("stdout"))
            target = "stdout"
        else:
            path = Path(output or key.rsplit("/", 1)[-1])
            with path.open("wb") as out:
                shutil.copyfileobj(source, out)
            target = str(path)
    click.echo(f"Wrote {size} bytes to {target}.", err=True)


@cli.command("version")
@_json_option
def show_version(as_json: bool) -> None:
    """Print the versions of batchjobs, Python and SQLite.

    \b
    Example:
      batchjobs version
    """
    try:
        ours = version("batchjobs")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled checkout
        ours = "unknown"
    python = sys.version.split()[0]
    if as_json:
        _print_json({"batchjobs": ours, "python": python, "sqlite": sqlite3.sqlite_version})
    else:
        click.echo(f"batchjobs {ours} (Python {python}, SQLite {sqlite3.sqlite_version})")


if __name__ == "__main__":
    main()
