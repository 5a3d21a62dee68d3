"""Commands on one job: create, run, list, show, confirm, cancel, retry, pause, resume,
watch, download."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import click

from ..app import BatchJobs
from ..models import BatchJob, Status, utcnow
from ._app import CommandError, _session, cli, pass_jobs
from ._input import _date_filters, _DateFilter, _job_input, _json_option, _key_option
from ._output import _count_text, _describe, _print_json, _table, _when
from ._progress import _end, _follow, _run_here
from ._validators import Count, FilePath, JobId, Seconds, Text


def _create(
    jobs: BatchJobs,
    batch_type: str,
    context: dict[str, Any] | None,
    settings: tuple[tuple[str, Any], ...],
    dry_run: bool,
    user: str | None,
    key: str | None = None,
) -> tuple[BatchJob, bool]:
    """The job created, or found by ``key``; and whether it was found."""
    merged = {**(context or {}), **dict(settings)}
    before = utcnow()
    job = jobs.create(batch_type, merged, dry_run=dry_run, created_by=user, key=key)
    found = key is not None and job.created_at is not None and job.created_at < before
    if found:
        click.echo(f"Found {job.type} job {job.id} by its key ({job.status.value}).", err=True)
    return job, found


@cli.command()
@click.argument("batch_type", metavar="TYPE", type=Text())
@_job_input
@_key_option
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
    key: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Create a job of TYPE; a worker processes it. Prints its id.

    With --key, a job of --user that has that key already is printed
    instead, whatever its status, and nothing is created.

    \b
    Examples:
      batchjobs create shout --set words='["a", "b"]'
      batchjobs create csv-import --context @import.json --dry-run --user usr_1
      ID=$(batchjobs create shout --context '{"words": ["a"]}')
      batchjobs create csv-export --set table=products --key export-2026-12-01
    """
    job, found = _create(jobs, batch_type, context, settings, dry_run, user, key)
    if not wait:
        if as_json:
            _print_json(job.to_dict())
        else:
            click.echo(job.id)
        if not found:
            click.echo(
                f"Created {job.type} job {job.id}; a worker processes it "
                f"({_session().prog} worker).",
                err=True,
            )
        return
    _end(_follow(jobs, job.id), as_json, job.id)


@cli.command()
@click.argument("batch_type", metavar="TYPE", type=Text())
@_job_input
@_key_option
@_json_option
@pass_jobs
def run(
    jobs: BatchJobs,
    batch_type: str,
    context: dict[str, Any] | None,
    settings: tuple[tuple[str, Any], ...],
    dry_run: bool,
    user: str | None,
    key: str | None,
    as_json: bool,
) -> None:
    """Create a job of TYPE and process it here, with a progress bar. Prints its id.

    A dry run stops once pre-processed and shows what would happen. With
    --key, a job of --user that has that key already is resumed here instead
    (or, if it rests, reported), and nothing is created: run the same command
    again after a crash and it goes on where the job stopped.

    Ctrl-C stops the job at its next checkpoint, a second Ctrl-C at once (the
    chunk that was running is done again); either way the job stays
    processing, for a worker (or this command with --key) to resume.

    \b
    Exit status:
      0    the job completed (a dry run: it is pre-processed)
      1    the job failed, was canceled or paused
      2    bad input or a refused operation (the message says which)
      130  interrupted by Ctrl-C; the job's id is still printed on stdout

    \b
    Examples:
      batchjobs run shout --set words='["a", "b"]'
      batchjobs run csv-export --context @export.json --dry-run
      batchjobs run csv-export --set table=products --key export-2026-12-01
    """
    job, _ = _create(jobs, batch_type, context, settings, dry_run, user, key)
    _end(job if job.is_resting else _run_here(jobs, job.id), as_json, job.id)


@cli.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="Repeatable.",
)
@click.option("--type", "types", multiple=True, type=Text(), help="Repeatable.")
@click.option("--user", "users", multiple=True, type=Text(), help="created_by; repeatable.")
@click.option("--id", "ids", multiple=True, type=JobId(), help="A job id; repeatable.")
@click.option(
    "--filter",
    "dates",
    multiple=True,
    type=_DateFilter(),
    help="A date filter: created_at[gte]=ISO (gt, gte, lt, lte; any *_at field) "
    "or completed_at=null; repeatable.",
)
@click.option(
    "--order",
    default="-created_at",
    show_default=True,
    type=Text(),
    help="A field (id, type, status, created_by or any *_at); - first for descending.",
)
@click.option(
    "--limit", default=20, show_default=True, type=Count(), help="At most 1000; page with --offset."
)
@click.option("--offset", default=0, show_default=True, type=Count())
@_json_option
@pass_jobs
def list_jobs(
    jobs: BatchJobs,
    statuses: tuple[str, ...],
    types: tuple[str, ...],
    users: tuple[str, ...],
    ids: tuple[str, ...],
    dates: tuple[tuple[str, str | None, str | None], ...],
    order: str,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List jobs, newest first unless --order says otherwise.

    \b
    Examples:
      batchjobs list
      batchjobs list --status failed --status canceled --type csv-export
      batchjobs list --user usr_1 --limit 50 --offset 50 --json
      batchjobs list --filter completed_at=null --filter 'created_at[gte]=2026-01-01'
      batchjobs list --order created_at --id batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E
    """
    filters: dict[str, Any] = {
        name: list(values)
        for name, values in (
            ("status", statuses),
            ("type", types),
            ("created_by", users),
            ("id", ids),
        )
        if values
    }
    filters.update(_date_filters(dates))
    page, count = jobs.list_and_count(limit=limit, offset=offset, order=order, **filters)
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
@click.argument("job_id", metavar="ID", type=JobId())
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
@click.argument("job_id", metavar="ID", type=JobId())
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
@click.argument("job_id", metavar="ID", type=JobId())
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
@click.argument("job_id", metavar="ID", type=JobId())
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
@click.argument("job_id", metavar="ID", type=JobId())
@_json_option
@pass_jobs
def pause(jobs: BatchJobs, job_id: str, as_json: bool) -> None:
    """Pause a confirmed or processing job; its worker stops at the next checkpoint.

    \b
    Example:
      batchjobs pause batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E
    """
    _changed(jobs.pause(job_id), as_json)


@cli.command()
@click.argument("job_id", metavar="ID", type=JobId())
@_json_option
@pass_jobs
def resume(jobs: BatchJobs, job_id: str, as_json: bool) -> None:
    """Resume a paused job from its checkpoint (in a worker).

    \b
    Example:
      batchjobs resume batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E
    """
    _changed(jobs.resume(job_id), as_json)


@cli.command()
@click.argument("job_id", metavar="ID", type=JobId())
@click.option(
    "--timeout",
    type=Seconds(),
    metavar="SECONDS",
    help="Give up (exit 1) after this long.",
)
@_json_option
@pass_jobs
def watch(jobs: BatchJobs, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Follow a job's progress until it rests.

    A progress bar with records/s and ETA, on stderr. Exits 0 when it
    completes (or rests pre-processed), 1 when it fails or is canceled, 130
    when Ctrl-C stops watching it (the job goes on; its id on stdout).

    \b
    Example:
      batchjobs watch batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E --timeout 600
    """
    job = _follow(jobs, job_id, timeout=timeout)
    _end(job, as_json, f"{job.id} {job.status.value}")


@cli.command()
@click.argument("job_id", metavar="ID", type=JobId())
@click.option(
    "-o",
    "--output",
    type=FilePath(dir_okay=False, allow_dash=True),
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
            with click.open_file("-", "wb") as stdout:  # leaves stdout open
                shutil.copyfileobj(source, stdout)
            target = "stdout"
        else:
            path = Path(output or key.rsplit("/", 1)[-1])
            try:
                with path.open("wb") as out:
                    shutil.copyfileobj(source, out)
            except OSError as error:  # a missing folder, no permission, a full disk
                raise CommandError(f"Cannot write {path}: {error.strerror or error}") from None
            target = str(path)
    click.echo(f"Wrote {size} bytes to {target}.", err=True)
