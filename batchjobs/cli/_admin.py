"""Commands around the jobs: strategies, template, events, prune, migrate, version."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version

import click

from ..app import BatchJobs
from ..migrate import migrate as migrate_jobs
from ..models import RESTING_STATUSES
from ..store import SQLITE_VERSION, check_location
from ._app import EXIT_INTERRUPTED, CommandError, cli, pass_jobs
from ._input import _Duration, _json_option
from ._output import _event_line, _outbox_line, _print_json, _table, _when
from ._validators import Count, JobId, Text


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
@click.argument("batch_type", metavar="TYPE", type=Text())
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
    "--after",
    type=Count(),
    metavar="SEQ",
    help="Only events after this seq (the last one you handled) [default: every event kept].",
)
@click.option(
    "--follow", "-f", is_flag=True, help="Then wait for new events; Ctrl-C stops (exit 130)."
)
@click.option("--job", "job_id", type=JobId(), metavar="ID", help="Only this job's events.")
@click.option(
    "--user", "created_by", type=Text(), metavar="ID", help="Only the events of this user's jobs."
)
@click.option("--count", type=Count(min=1), help="Exit after this many events.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as JSON, one a line.")
@click.option(
    "--redis",
    "raw",
    is_flag=True,
    help="Tail the raw Redis mirror instead (live only; needs Redis).",
)
@click.option(
    "--pattern",
    default="batch.*",
    show_default=True,
    type=Text(),
    metavar="GLOB",
    help="With --redis: which events, a Redis glob over their names (batch.c*).",
)
@click.option(
    "--prefix", help="With --redis: the channel prefix [default: batchjobs, or the app's]."
)
@pass_jobs
def events(
    jobs: BatchJobs,
    after: int | None,
    follow: bool,
    job_id: str | None,
    created_by: str | None,
    count: int | None,
    as_json: bool,
    raw: bool,
    pattern: str,
    prefix: str | None,
) -> None:
    """Print the events of the outbox, in seq order, and follow new ones.

    Reads the database (no Redis needed): every event kept, or those after
    --after SEQ. Each line starts with the event's seq: a consumer that
    stores the last seq it handled and restarts with --after SEQ misses no
    event and gets none twice. --json: {"seq", "event", "at", "batch_job"}
    per line. Exits 2 if events after SEQ were pruned (the message gives
    the oldest kept), 130 when stopped by Ctrl-C. --redis tails the raw
    Redis mirror instead.

    \b
    Examples:
      batchjobs events --after 1041 --follow --json
      batchjobs events --job batch_01J... --json | jq -r .event
      batchjobs --redis redis://localhost:6379/0 events --redis --pattern 'batch.c*'
    """
    if raw:
        _tail_mirror(jobs, pattern, prefix or jobs.channel_prefix, count, as_json)
        return
    if after is None:  # from the oldest event kept
        last = jobs.last_seq()
        oldest = jobs.events(limit=1)
        after = oldest[0].seq - 1 if oldest else last
    feed = jobs.follow(after=after, job_id=job_id, created_by=created_by)
    printed = 0
    try:
        while True:
            page = feed.read(timeout=None if follow else 0)
            if not page and (not follow or feed.closed):
                break
            for event in page:
                click.echo(
                    json.dumps(event.to_dict(), ensure_ascii=False)
                    if as_json
                    else _outbox_line(event)
                )
                printed += 1
                if count is not None and printed >= count:
                    return
    except KeyboardInterrupt:
        click.echo("Stopped.", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    finally:
        feed.close()


def _tail_mirror(
    jobs: BatchJobs, pattern: str, prefix: str, count: int | None, as_json: bool
) -> None:
    """``events --redis``: follow what every process mirrors to Redis, live."""
    from ..pubsub import Subscription

    if not jobs.redis_url:
        raise CommandError(
            "events --redis needs Redis: pass --redis URL before the command or set "
            "BATCHJOBS_REDIS_URL"
        )
    try:
        subscription = Subscription(jobs.redis_url, prefix=prefix, pattern=pattern)
    except ValueError as error:  # names the URL
        raise CommandError(str(error)) from None
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
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    finally:
        subscription.close()


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
    pruned = jobs.prune(older_than, statuses=list(statuses) or None, dry_run=dry_run)
    for key, why in pruned.kept_files:
        click.echo(f"warning: file {key!r} not deleted: {why}", err=True)
    if as_json:
        deleted = [j.id for j in pruned.jobs]
        _print_json({"deleted": deleted, "files": list(pruned.files), "dry_run": dry_run})
    elif dry_run and pruned.jobs:
        rows = [[j.id, j.type, j.status.value, _when(j.updated_at)] for j in pruned.jobs]
        click.echo(_table(["ID", "TYPE", "STATUS", "UPDATED"], rows))
    verb = "Would delete" if dry_run else "Deleted"
    click.echo(f"{verb} {len(pruned.jobs)} job(s) and {len(pruned.files)} file(s).", err=True)


@cli.command()
@click.option(
    "--from",
    "source",
    required=True,
    metavar="DB",
    help="The database to copy from: a SQLite file or a URL.",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="DB",
    help="The database to copy into: a URL or a SQLite file.",
)
@_json_option
def migrate(source: str, target: str, as_json: bool) -> None:
    """Copy every job and schedule from one database into another.

    Active jobs resume on the new database from their last checkpoint. Stop
    the workers on the old one first (a job a worker holds is refused). The
    old database is left as it is; jobs the new one already has are skipped,
    so running it again finishes a migration that was cut short. Files are
    not copied: copy the files directory (beside a SQLite file) to the one
    the new database's workers use (--files-dir).

    \b
    Example:
      batchjobs migrate --from jobs.db --to postgresql://postgres@localhost/jobs
    """
    for location, option in ((source, "--from"), (target, "--to")):
        try:
            check_location(location)
            Text().convert(location, None, None)
        except (ValueError, click.BadParameter) as error:
            message = error.message if isinstance(error, click.BadParameter) else str(error)
            raise click.BadParameter(message, param_hint=f"'{option}'") from None
    done = migrate_jobs(source, target)
    if as_json:
        _print_json(
            {
                "jobs": done.jobs,
                "jobs_written": done.jobs_written,
                "schedules": done.schedules,
                "schedules_written": done.schedules_written,
            }
        )
    rest = done.jobs_written < done.jobs or done.schedules_written < done.schedules
    click.echo(
        f"Copied {done.jobs_written} of {done.jobs} job(s) and {done.schedules_written} of "
        f"{done.schedules} schedule(s){' (the rest were there already)' if rest else ''}.",
        err=True,
    )


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
        _print_json({"batchjobs": ours, "python": python, "sqlite": SQLITE_VERSION})
    else:
        click.echo(f"batchjobs {ours} (Python {python}, SQLite {SQLITE_VERSION})")
