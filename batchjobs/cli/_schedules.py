"""``schedule add|list|remove|pause|resume``: recurring jobs from a terminal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from ..app import BatchJobs
from ..errors import NotFoundError
from ..models import Schedule
from ..schedules import MISFIRE_POLICIES
from ._app import cli, pass_jobs
from ._input import _Duration, _job_input, _json_option
from ._output import _print_json, _table, _when
from ._validators import Text

_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def _every_text(every: timedelta) -> str:
    seconds = every.total_seconds()
    for unit, size in _UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _timing_text(schedule: Schedule) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron}"
    assert schedule.every is not None
    return f"every {_every_text(schedule.every)}"


def _last_status(jobs: BatchJobs, schedule: Schedule) -> str:
    if schedule.last_job_id is None:
        return "-"
    try:
        return jobs.retrieve(schedule.last_job_id).status.value
    except NotFoundError:
        return "pruned"


def _changed(schedule: Schedule, as_json: bool, what: str) -> None:
    if as_json:
        _print_json(schedule.to_dict())
    else:
        click.echo(f"{schedule.name} {what}")


@cli.group()
def schedule() -> None:
    """Recurring jobs: each fire time of a schedule creates one job.

    Running workers (worker, serve) fire the schedules: each fire time makes
    its job once, however many workers share the database.

    \b
    Examples:
      batchjobs schedule add nightly csv-export --cron '0 2 * * *' --tz Europe/Paris
      batchjobs schedule add feed csv-import --every 15m --context @feed.json
      batchjobs schedule list
    """


@schedule.command("add")
@click.argument("name", type=Text())
@click.argument("batch_type", metavar="TYPE", type=Text())
@click.option(
    "--cron", type=Text(), metavar="'M H DOM MON DOW'", help="A 5-field crontab, e.g. '0 2 * * *'."
)
@click.option("--every", type=_Duration(), help="An interval instead: 90s, 15m, 2h, 1d, 1w.")
@click.option(
    "--tz",
    "timezone",
    default="UTC",
    show_default=True,
    type=Text(),
    metavar="ZONE",
    help="The IANA time zone the crontab is read in, e.g. Europe/Paris.",
)
@click.option(
    "--misfire",
    type=click.Choice(MISFIRE_POLICIES),
    default="coalesce",
    show_default=True,
    help="Fire times missed while no worker ran: one job for the latest, none, or one each.",
)
@_job_input
@_json_option
@pass_jobs
def schedule_add(
    jobs: BatchJobs,
    name: str,
    batch_type: str,
    cron: str | None,
    every: timedelta | None,
    timezone: str,
    misfire: str,
    context: dict[str, Any] | None,
    settings: tuple[tuple[str, Any], ...],
    dry_run: bool,
    user: str | None,
    as_json: bool,
) -> None:
    """Add (or redefine) the schedule NAME: a job of TYPE at each fire time.

    Each job's context is the schedule's plus scheduled_for, its fire time.
    Prints the name; exits 2 with the reason for a bad crontab or time zone.

    \b
    Examples:
      batchjobs schedule add nightly csv-export --cron '0 2 * * *' --tz Europe/Paris \\
          --context '{"database": "shop", "table": "orders"}'
      batchjobs schedule add feed csv-import --every 15m --context @feed.json --misfire skip
    """
    stored = jobs.schedule(
        name,
        batch_type,
        {**(context or {}), **dict(settings)},
        cron=cron,
        every=every,
        timezone=timezone,
        dry_run=dry_run,
        created_by=user,
        misfire=misfire,
    )
    if as_json:
        _print_json(stored.to_dict())
    else:
        click.echo(stored.name)
    click.echo(
        f"Scheduled {stored.name}: {stored.type}, {_timing_text(stored)} ({stored.timezone}); "
        f"next fire at {_when(stored.next_fire_at)}.",
        err=True,
    )


@schedule.command("list")
@_json_option
@pass_jobs
def schedule_list(jobs: BatchJobs, as_json: bool) -> None:
    """List the schedules: next fire time, last job and its status.

    \b
    Examples:
      batchjobs schedule list
      batchjobs schedule list --json
    """
    schedules = jobs.schedules()
    if as_json:
        _print_json(
            {
                "schedules": [
                    {**s.to_dict(), "last_job_status": _last_status(jobs, s)} for s in schedules
                ]
            }
        )
        return
    rows = [
        [
            s.name,
            s.type,
            _timing_text(s),
            s.timezone,
            "paused" if s.is_paused else _when(s.next_fire_at),
            s.last_job_id or "-",
            _last_status(jobs, s),
        ]
        for s in schedules
    ]
    if rows:
        headers = ["NAME", "TYPE", "WHEN", "TZ", "NEXT", "LAST JOB", "STATUS"]
        click.echo(_table(headers, rows))
    for s in schedules:
        if s.last_error:
            click.echo(f"warning: {s.name}: its last fire made no job: {s.last_error}", err=True)
    click.echo(f"{len(schedules)} schedule(s)", err=True)


@schedule.command("remove")
@click.argument("name", type=Text())
@_json_option
@pass_jobs
def schedule_remove(jobs: BatchJobs, name: str, as_json: bool) -> None:
    """Remove the schedule NAME; the jobs it made stay.

    \b
    Example:
      batchjobs schedule remove nightly
    """
    _changed(jobs.unschedule(name), as_json, "removed")


@schedule.command("pause")
@click.argument("name", type=Text())
@_json_option
@pass_jobs
def schedule_pause(jobs: BatchJobs, name: str, as_json: bool) -> None:
    """Stop the schedule NAME from firing until resumed.

    \b
    Example:
      batchjobs schedule pause nightly
    """
    _changed(jobs.pause_schedule(name), as_json, "paused")


@schedule.command("resume")
@click.argument("name", type=Text())
@_json_option
@pass_jobs
def schedule_resume(jobs: BatchJobs, name: str, as_json: bool) -> None:
    """Let the paused schedule NAME fire again, from its next fire time.

    Fire times that passed while it was paused make no job.

    \b
    Example:
      batchjobs schedule resume nightly
    """
    _changed(jobs.resume_schedule(name), as_json, "resumed")
