"""The commands that run until stopped, stopped with Ctrl-C (SIGINT): exit status, no traceback.

Each test runs the real command in a subprocess, waits until it is doing
its long part (a line it printed says so), then sends SIGINT. A command
interrupted exits 130; a worker or a server, whose way to end is the
signal, shuts down gracefully and exits 0 (130 on a second signal).
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from click.testing import CliRunner

from batchjobs import BatchJobs, BatchJobStrategy, JobRun, Status
from batchjobs.cli import cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
INTERRUPTED = 130

Start = Callable[..., subprocess.Popen[str]]


class Terminal:
    """The reading end of a pty, read as a text stream; its end (EIO once the process
    is gone) reads as an empty string."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, size: int = -1) -> str:
        data = b""
        while size < 0 or len(data) < size:
            try:
                more = os.read(self.fd, 1 if size > 0 else 4096)
            except OSError:
                more = b""
            if not more:
                break
            data += more
        return data.decode(errors="replace")

    def readline(self) -> str:
        line = ""
        while not line.endswith("\n"):
            more = self.read(1)
            if not more:
                break
            line += more
        return line

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def start(db_path: Path, tmp_path: Path) -> Iterator[Start]:
    """Start ``batchjobs ARGS`` on the test's database, stdout and stderr piped (or
    stderr on a terminal, ``tty=True``, where a progress bar is drawn at once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHJOBS_")}
    env["BATCHJOBS_FILES_DIR"] = str(tmp_path / "jobs-files")
    started: list[subprocess.Popen[str]] = []

    def run(*args: str, tty: bool = False) -> subprocess.Popen[str]:
        controller, terminal = pty.openpty() if tty else (None, None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchjobs", "--db", str(db_path), "--app", "tests.strategies"]
            + list(args),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal if terminal is not None else subprocess.PIPE,
            text=True,
        )
        if controller is not None and terminal is not None:
            os.close(terminal)
            proc.stderr = Terminal(controller)  # type: ignore[assignment]
        started.append(proc)
        return proc

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def read_until(stream: IO[str] | None, text: str, *, chars: bool = False) -> str:
    """Read ``stream`` until ``text`` appears (by lines; by characters for a progress bar)."""
    assert stream is not None
    seen = ""
    while text not in seen:
        more = stream.read(1) if chars else stream.readline()
        assert more, f"the stream ended before {text!r}: {seen!r}"
        seen += more
    return seen


def stop_with_ctrl_c(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Send SIGINT; what the process printed after it on stdout and stderr."""
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout=30)
    return out, err


def assert_no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text and "Aborted!" not in text, text


def test_events_follow_stopped_by_ctrl_c_exits_130(jobs: BatchJobs, start: Start) -> None:
    first = jobs.create("words", {"words": ["a"]})
    proc = start("events", "--follow")
    seen = read_until(proc.stdout, first.id)
    second = jobs.create("words", {"words": ["b"]})
    seen += read_until(proc.stdout, second.id)  # it follows: a new event comes out
    out, err = stop_with_ctrl_c(proc)
    assert proc.returncode == INTERRUPTED, err
    assert out == ""
    assert err == "Stopped.\n"
    assert [line.split()[0] for line in seen.splitlines()] == ["1", "2"]
    assert_no_traceback(seen, out, err)


def test_events_follow_as_json_stopped_while_waiting_exits_130(
    jobs: BatchJobs, start: Start
) -> None:
    jobs.create("words", {"words": ["a"]})
    proc = start("events", "--follow", "--json", "--count", "5")
    seen = read_until(proc.stdout, '"batch.created"')
    out, err = stop_with_ctrl_c(proc)  # one of the five events came: cut short
    assert (proc.returncode, out, err) == (INTERRUPTED, "", "Stopped.\n")
    assert_no_traceback(seen)


def test_watch_stopped_by_ctrl_c_exits_130_and_leaves_the_job_alone(
    jobs: BatchJobs, start: Start
) -> None:
    job = jobs.create("ledger", {"n": 10})  # no worker: it stays created
    proc = start("watch", job.id, tty=True)
    shown = read_until(proc.stderr, "created", chars=True)  # the bar is drawn
    out, err = stop_with_ctrl_c(proc)
    assert proc.returncode == INTERRUPTED, shown + err
    assert out == f"{job.id}\n"  # as `run` interrupted: the id, for a script
    assert f"Stopped watching {job.id}; it goes on in a worker" in err
    assert_no_traceback(shown, out, err)
    assert jobs.retrieve(job.id).status == Status.CREATED


def test_create_wait_stopped_by_ctrl_c_exits_130_with_the_id_on_stdout(
    jobs: BatchJobs, start: Start
) -> None:
    proc = start("create", "ledger", "--set", "n=10", "--wait", tty=True)
    shown = read_until(proc.stderr, "created", chars=True)
    out, err = stop_with_ctrl_c(proc)
    assert proc.returncode == INTERRUPTED, shown + err
    (job,), count = jobs.list_and_count()
    assert count == 1 and out == f"{job.id}\n"
    assert job.status == Status.CREATED  # created, for a worker to run
    assert_no_traceback(shown, out, err)


def test_worker_stopped_by_ctrl_c_hands_over_and_exits_0(jobs: BatchJobs, start: Start) -> None:
    # 100 chunks of 50 ms: the stop comes at the next one. Ten (half a second) were once
    # all done under load before the Ctrl-C arrived, and the job completed.
    job = jobs.create("ledger", {"n": 1000, "sleep": 0.05})
    proc = start("worker", "--poll-interval", "0.1")
    seen = read_until(proc.stderr, f"{job.id} ledger processing")
    out, err = stop_with_ctrl_c(proc)
    assert proc.returncode == 0, seen + err
    assert "Stopping: running jobs save a checkpoint and hand over" in err
    assert err.rstrip().endswith("Stopped.") and out == ""
    assert_no_traceback(seen, err)
    stopped = jobs.retrieve(job.id)
    assert stopped.status == Status.PROCESSING and jobs.store.holder(job.id) is None


def test_a_second_ctrl_c_stops_a_worker_at_once_with_130(jobs: BatchJobs, start: Start) -> None:
    job = jobs.create("ledger", {"n": 100, "sleep": 30})  # a chunk outlasts the test
    proc = start("worker", "--poll-interval", "0.1")
    seen = read_until(proc.stderr, f"{job.id} ledger processing")
    proc.send_signal(signal.SIGINT)
    seen += read_until(proc.stderr, "Stopping: running jobs save a checkpoint")
    out, err = stop_with_ctrl_c(proc)  # the chunk is still running: no checkpoint yet
    assert proc.returncode == INTERRUPTED, seen + err
    assert "Stopping at once." in err
    assert_no_traceback(seen, err)
    assert jobs.retrieve(job.id).status == Status.PROCESSING  # its lease lets a worker resume


def test_serve_stopped_by_ctrl_c_exits_0(jobs: BatchJobs, start: Start) -> None:
    pytest.importorskip("waitress")
    proc = start("serve", "--port", "0", "--token", "s3cret=usr_1")
    seen = read_until(proc.stderr, "stop it with Ctrl-C.")
    out, err = stop_with_ctrl_c(proc)
    assert proc.returncode == 0, seen + err
    assert err.rstrip().endswith("Stopped.") and out == ""
    assert_no_traceback(seen, err)


def test_a_ctrl_c_no_command_handles_exits_130_without_a_traceback(jobs: BatchJobs) -> None:
    class Interrupted(BatchJobStrategy):
        batch_type = "interrupted"

        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            return 0

        def build_template(self) -> str:
            raise KeyboardInterrupt  # Ctrl-C while the command works

    jobs.register(Interrupted)
    result = CliRunner().invoke(cli, ["template", "interrupted"], obj=jobs)
    assert (result.exit_code, result.stdout, result.stderr) == (130, "", "Interrupted.\n")
