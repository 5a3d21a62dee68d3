"""What commands print: JSON, tables, a job's fields, a followed job's ending."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import click

from ..models import TIMESTAMP_FIELDS, BatchJob, Status
from ._app import _session

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
    for name in TIMESTAMP_FIELDS:
        if name not in ("updated_at", "deleted_at") and getattr(job, name) is not None:
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


#: A failed job's last errors printed when a command followed it to its end.
ERRORS_SHOWN = 5


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
        shown = errors[-ERRORS_SHOWN:]
        more = job.result.get("error_count", len(errors)) - len(shown)
        if more > 0:
            click.echo(f"({more} earlier error(s): {prog} show {job.id})", err=True)
        for error in shown:
            click.echo(f"error: {_error_text(error)}", err=True)
        if job.is_retryable:
            hint = f"resume it from its checkpoint with: {prog} retry {job.id}"
        else:
            hint = "its input was refused: fix the input and create a new job"
        click.echo(f"{job.id} failed; {hint}", err=True)
    elif job.status == Status.PAUSED:
        click.echo(
            f"{job.id} is paused at its checkpoint; continue it with: {prog} resume {job.id}",
            err=True,
        )


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


def _outbox_line(event: Any) -> str:
    """One event of the outbox (an ``Event``) as a line: seq, then as ``_event_line``."""
    job = event.job
    stamp = event.at.astimezone().strftime("%H:%M:%S")
    done, total = job.result.get("advancement_count"), job.result.get("count")
    progress = "" if done is None and total is None else f" {done or 0}"
    if total is not None:
        progress += f"/{total}"
    return f"{event.seq} {stamp} {event.event:<19} {job.id} {job.type} {job.status.value}{progress}"
