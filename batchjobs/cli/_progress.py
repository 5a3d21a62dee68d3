"""Following a job until it rests: the progress bar, and running a job in this process."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TextIO

import click

from ..app import BatchJobs
from ..models import BatchJob, Status
from ._app import EXIT_INTERRUPTED, EXIT_JOB_FAILED, _session
from ._output import _count_text, _print_json, _report_end

#: Seconds between two looks at a followed job.
FOLLOW_INTERVAL = 0.1
#: Seconds of history the records/s rate is measured over.
RATE_WINDOW = 10.0
#: When stderr is not a terminal, a progress line at most this often (seconds).
LOG_INTERVAL = 10.0
BAR_WIDTH = 20


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
        #: Where the bar is drawn: stderr as it was when the bar was made.
        self.stream: TextIO = sys.stderr
        #: Whether the bar's line is on the terminal now (not cleared for other output).
        self.shown = False
        self.lock = threading.RLock()

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
            click.echo(self.line(job), file=self.stream)

    def finish(self, job: BatchJob) -> None:
        line = self.line(job)
        with self.lock:
            if self.tty:
                self._draw(line)
                click.echo(file=self.stream)
                self.shown = False
            else:
                click.echo(line, file=self.stream)

    def _draw(self, line: str) -> None:
        width = max(shutil.get_terminal_size().columns - 1, 20)
        line = line[:width]
        with self.lock:
            old = len(self.last_line) if self.shown else 0
            click.echo("\r" + line.ljust(old), nl=False, file=self.stream)
            self.last_line, self.shown = line, True

    def clear(self) -> None:
        """Take the bar's line off the terminal, for other output to start at its column 0."""
        with self.lock:
            if self.shown:
                self.stream.write("\r" + " " * len(self.last_line) + "\r")
                self.stream.flush()
                self.shown = False

    def redraw(self) -> None:
        """Draw the bar's last line again, after other output ended its line."""
        with self.lock:
            if not self.shown and self.last_line:
                self._draw(self.last_line)

    @contextlib.contextmanager
    def sharing_the_terminal(self) -> Iterator[None]:
        """While it lasts, whatever this process prints on the bar's terminal (a
        strategy's own output, logs) clears the bar first; the bar comes back after."""
        if not self.tty:
            yield
            return
        saved = sys.stdout, sys.stderr
        if _is_tty(sys.stdout):
            sys.stdout = _SharedTerminal(sys.stdout, self)  # type: ignore[assignment]
        sys.stderr = _SharedTerminal(sys.stderr, self)  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


class _SharedTerminal:
    """A stream on the terminal a progress bar is drawn on: a write clears the bar,
    and a write that ends its line draws the bar again below it."""

    def __init__(self, stream: TextIO, bar: _ProgressBar) -> None:
        self._stream, self._bar = stream, bar

    def write(self, text: str) -> int:
        with self._bar.lock:
            self._bar.clear()
            written = self._stream.write(text)
            if text.endswith("\n"):
                self._stream.flush()
                self._bar.redraw()
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _stderr_is_tty() -> bool:
    return _is_tty(sys.stderr)


def _follow(
    jobs: BatchJobs,
    job_id: str,
    *,
    timeout: float | None = None,
    finished: threading.Event | None = None,
    tick: Callable[[], None] | None = None,
) -> BatchJob:
    """Show job ``job_id``'s progress until it rests (or ``finished`` is set).

    Ctrl-C stops following, not the job: the command exits 130 with the
    job's id on stdout, as ``run`` does.
    """
    bar = _ProgressBar(tty=_stderr_is_tty())
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = finished or threading.Event()
    try:
        with bar.sharing_the_terminal():
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
    except KeyboardInterrupt:
        job = jobs.retrieve(job_id)
        bar.finish(job)
        click.echo(job_id)  # on stdout, for a script to follow it again
        click.echo(
            f"Stopped watching {job_id}; it goes on in a worker: {_session().prog} watch {job_id}",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    bar.finish(job)
    return job


def _end(job: BatchJob, as_json: bool, stdout: str | None) -> None:
    """Print a followed job's outcome; exit 1 if it failed, was canceled or is paused."""
    if as_json:
        _print_json(job.to_dict())
    elif stdout is not None:
        click.echo(stdout)
    _report_end(job)
    if job.status in (Status.FAILED, Status.CANCELED, Status.PAUSED):
        raise click.exceptions.Exit(EXIT_JOB_FAILED)


def _run_here(jobs: BatchJobs, job_id: str) -> BatchJob:
    """Run job ``job_id`` in this process, with a progress bar, until it rests.

    Ctrl-C stops it at its next checkpoint (a second one at once): the
    command then exits 130 with the job's id on stdout, so that a worker resumes it.
    """
    bar = _ProgressBar(tty=_stderr_is_tty())
    stop = threading.Event()
    restore = _trap_interrupt(stop)
    try:
        with bar.sharing_the_terminal():
            job = jobs.run(job_id, on_progress=bar.update, stop=stop)
        at_once = False
    except KeyboardInterrupt:  # the second Ctrl-C: the lease is left, the chunk redone
        job, at_once = jobs.retrieve(job_id), True
    finally:
        restore()
    bar.finish(job)
    if not job.is_resting:
        click.echo(job.id)  # on stdout, for a script to resume it
        prog = _session().prog
        if at_once:
            click.echo(
                f"Stopped at once; {job_id} resumes from its last checkpoint (the chunk "
                f"that was running is done again): {prog} worker",
                err=True,
            )
        else:
            click.echo(
                f"Stopped; {job_id} resumes from its last checkpoint in a worker: {prog} worker",
                err=True,
            )
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    return job


def _trap_interrupt(stop: threading.Event) -> Callable[[], None]:
    """The first SIGINT sets ``stop``, the next raises ``KeyboardInterrupt``; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # mounted in a host that runs commands off the main thread
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        # Set before saying so: a second Ctrl-C may come as soon as the line shows.
        stop.set()
        click.echo("\nStopping at the next checkpoint (Ctrl-C again: at once)...", err=True)

    signal.signal(signal.SIGINT, on_interrupt)

    def restore() -> None:
        signal.signal(signal.SIGINT, previous)

    return restore
