"""The long-running commands: ``worker`` runs jobs, ``serve`` the admin HTTP API (and jobs)."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from .. import signals
from ..app import BatchJobs
from ..limits import MAX_INTEGER
from ..models import BatchJob, Status
from ._app import EXIT_INTERRUPTED, CommandError, cli, pass_jobs
from ._input import _TokenUser
from ._output import _count_text
from ._validators import PositiveInt, PositiveSeconds, Text


@cli.command()
@click.option(
    "--concurrency", type=PositiveInt(), help="Jobs run at once [default: 2, or the app's]."
)
@click.option(
    "--poll-interval",
    type=PositiveSeconds(),
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
    and hand over; a second signal stops at once (its jobs resume from their
    last checkpoint: at once in a worker on this host, on another host once
    their lease expires).

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
    stop = threading.Event()
    previous = _trap_signals(stop)
    events = _echo_events(jobs)
    try:
        # Said before the workers start, so that it is the first line whatever they print.
        ending = "exits when no job is left" if until_idle else "stop it with Ctrl-C"
        click.echo(
            f"Worker on {jobs.location} (types: {', '.join(types)}; concurrency "
            f"{concurrency or jobs.concurrency}); {ending}.",
            err=True,
        )
        jobs.start(concurrency=concurrency, poll_interval=poll_interval)
        if until_idle:
            jobs.wait_until_idle(stop=stop)
        else:
            while not stop.wait(0.5):
                pass
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
            os._exit(EXIT_INTERRUPTED)
        # Set before saying so: a second signal may come as soon as the line shows.
        stop.set()
        click.echo("Stopping: running jobs save a checkpoint and hand over...", err=True)

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
        "batch.paused",
    ]
    for event in events:
        signals.signal_for(event).connect(echo, sender=jobs)

    def stop() -> None:
        for event in events:
            signals.signal_for(event).disconnect(echo, sender=jobs)

    return stop


class _EchoHandler(logging.Handler):
    """Log records as lines on stderr, stamped as the job lines are."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)


def _echo_log(name: str) -> Callable[[], None]:
    """Print logger ``name``'s records (INFO and up) on stderr; returns the undo."""
    logger = logging.getLogger(name)
    handler = _EchoHandler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def stop() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return stop


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    type=Text(),
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
@click.option(
    "--threads",
    type=PositiveInt(),
    help="Threads answering API requests [default: 8].",
)
@click.option(
    "--streams",
    type=PositiveInt(),
    help="Event streams (SSE) open at once, on threads of their own [default: 4].",
)
@click.option(
    "--request-timeout",
    type=PositiveSeconds(),
    metavar="SECONDS",
    help="Time a client has to send a whole request; then 408 [default: 30].",
)
@click.option(
    "--idle-timeout",
    type=PositiveSeconds(),
    metavar="SECONDS",
    help="Time a keep-alive connection may wait for its next request [default: 60].",
)
@click.option(
    "--read-only", is_flag=True, help="The dashboard shows jobs but offers no action on them."
)
@click.option(
    "--max-upload",
    type=PositiveInt(max=MAX_INTEGER),
    metavar="BYTES",
    help="The largest body of an upload (POST /admin/uploads); then 413 [default: 104857600, "
    "100 MiB].",
)
@click.option(
    "--secret-key",
    envvar="BATCHJOBS_SECRET_KEY",
    help="Signs download links, so that they outlive a restart (16 characters or more); "
    "without it, a random key for this process. Prefer the environment "
    "[env: BATCHJOBS_SECRET_KEY].",
)
@pass_jobs
def serve(
    jobs: BatchJobs,
    host: str,
    port: int,
    tokens: tuple[tuple[str, str], ...],
    no_worker: bool,
    threads: int | None,
    streams: int | None,
    request_timeout: float | None,
    idle_timeout: float | None,
    read_only: bool,
    max_upload: int | None,
    secret_key: str | None,
) -> None:
    """Serve the dashboard and the admin HTTP API, and run jobs, until SIGINT or SIGTERM.

    The dashboard is at the URL printed (sign in with a token); Medusa's
    routes are under /admin/batch-jobs and /admin/uploads, where a request
    sends "Authorization: Bearer TOKEN". Either way a user sees only the jobs
    and files of that user. The server is waitress: it reads each request
    whole before a thread answers it, so slow and idle clients hold no
    thread; one log line per request on stderr. On the signal the server
    stops taking requests, those in progress finish, and running jobs save a
    checkpoint and hand over.

    \b
    Examples:
      batchjobs --app myapp.jobs:jobs serve --token s3cret=usr_1
      BATCHJOBS_TOKENS='s3cret=usr_1 t0k3n=usr_2' batchjobs serve --port 8080 --no-worker
      curl -H 'Authorization: Bearer s3cret' http://127.0.0.1:9000/admin/batch-jobs
    """
    try:
        from ..http import (
            PREFIX,
            AdminServer,
            ServerLimits,
            UploadSettings,
            create_app,
            dashboard,
        )
    except ImportError as error:
        if error.name not in ("flask", "werkzeug", "waitress"):
            raise
        raise CommandError(
            "serve needs Flask and waitress: pip install 'batchjobs[http]'"
        ) from None
    users: dict[str, str] = {}
    for token, user in tokens:
        if users.setdefault(token, user) != user:
            raise CommandError("One --token is given for two users")
    if not users:
        raise CommandError(
            "Name the API's users: --token TOKEN=USER (repeatable) or BATCHJOBS_TOKENS"
        )
    try:
        uploads = UploadSettings(secret_key=secret_key or None)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--secret-key'") from None
    given: dict[str, Any] = {
        "threads": threads,
        "streams": streams,
        "request_seconds": request_timeout,
        "idle_seconds": idle_timeout,
        "upload_bytes": max_upload,
    }
    limits = ServerLimits(**{name: value for name, value in given.items() if value is not None})
    uploads = dataclasses.replace(uploads, max_bytes=limits.upload_bytes)
    app = create_app(jobs, tokens=users, uploads=uploads)
    # A new key per run: signing in again after a restart is the price of keeping none on disk.
    app.secret_key = secrets.token_bytes(32)
    feed = dashboard.SignalFeed(jobs)
    app.register_blueprint(
        dashboard.create_blueprint(
            jobs,
            tokens=users,
            read_only=read_only,
            feed=feed,
            max_streams=limits.streams,
            max_upload_bytes=limits.upload_bytes,
        )
    )
    try:
        server = AdminServer(app, host=host, port=port, limits=limits)
    except OSError as error:
        raise CommandError(f"Cannot listen on {host}:{port}: {error.strerror or error}") from None
    stop = threading.Event()
    previous = _trap_signals(stop)
    events = (lambda: None) if no_worker else _echo_events(jobs)
    request_log = _echo_log("batchjobs.http")
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
            f"Dashboard on {server.url}/ and admin API on {server.url}{PREFIX} "
            f"({len(users)} token(s); {work}; {jobs.location}; waitress, {limits.threads} "
            f"threads and {limits.streams} streams); stop it with Ctrl-C.",
            err=True,
        )
        while not stop.wait(0.5) and thread.is_alive():
            pass
    finally:
        feed.close()  # live pages end their streams, so the server can stop
        jobs.stop_following()  # and so do the event streams
        server.shutdown()
        jobs.shutdown()
        events()
        request_log()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not stop.is_set():
        raise click.ClickException("The HTTP server stopped unexpectedly")
    click.echo("Stopped.", err=True)
