"""``batchjobs run`` as a person meets it: in a real terminal (a pty), and stopped with Ctrl-C."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from batchjobs import BatchJobs, Status

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def screen(output: str) -> list[str]:
    """What a terminal shows for ``output``: ``\\r`` goes back to column 0, text overwrites."""
    rows: list[list[str]] = [[]]
    col = 0
    for char in output:
        if char == "\r":
            col = 0
        elif char == "\n":
            rows.append([])
            col = 0
        else:
            row = rows[-1]
            row.extend(" " * (col - len(row) + 1))
            row[col] = char
            col += 1
    return [line for line in ("".join(row).rstrip() for row in rows) if line]


def run_in_a_terminal(args: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """Run ``batchjobs ARGS`` with stdout and stderr on a pty; its exit status and output."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHJOBS_")}
    env["COLUMNS"] = "100"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchjobs", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    data = os.read(controller, 4096)
                except OSError:  # the pty closed: the process is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), b"".join(chunks).decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)


def test_the_progress_line_makes_way_for_a_strategy_s_output(tmp_path: Path) -> None:
    status, output = run_in_a_terminal(
        [
            "--db",
            str(tmp_path / "tour.db"),
            "--app",
            "examples.shout",
            "run",
            "shout",
            "--set",
            'words=["batch", "jobs", "never", "lose", "work"]',
            "--set",
            "delay=0.2",  # the bar is on the terminal before the first chunk prints
        ],
        cwd=ROOT,
    )
    assert status == 0, output
    shown = screen(output)
    assert shown[:4] == [
        "BATCH JOBS",
        "NEVER LOSE",
        "WORK",
        "[####################] 100%  5/5  completed",
    ], shown
    assert re.fullmatch(r"batch_[0-9A-Z]{26}", shown[4]) and len(shown) == 5
    assert "[--------------------]   0%  0/5" in output  # the bar was drawn, then made way


@pytest.fixture
def start_run(db_path: Path) -> Callable[..., subprocess.Popen[str]]:
    def start(*args: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHJOBS_")}
        return subprocess.Popen(
            [sys.executable, "-m", "batchjobs", "--db", str(db_path), "--app", "tests.strategies"]
            + ["run", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


def wait_for_progress(jobs: BatchJobs, at_least: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running, _ = jobs.list_and_count(status="processing")
        if running and running[0].result.get("advancement_count", 0) >= at_least:
            return running[0].id
        time.sleep(0.02)
    raise AssertionError("the run did not get going")


def test_ctrl_c_stops_at_the_checkpoint_and_exits_130_with_the_id_on_stdout(
    jobs: BatchJobs, start_run: Callable[..., subprocess.Popen[str]]
) -> None:
    # 29 chunks of 0.3 s after the first checkpoint: the stop comes at the next one (with
    # five, the job could end first on a loaded machine, as a test beside this one did).
    proc = start_run("ledger", "--set", "n=300", "--set", "sleep=0.3")
    job_id = wait_for_progress(jobs, 10)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert out == f"{job_id}\n"
    assert f"Stopped; {job_id} resumes from its last checkpoint in a worker: batchjobs" in err
    job = jobs.retrieve(job_id)
    assert job.status == Status.PROCESSING and jobs.store.holder(job_id) is None  # handed over
    assert "Aborted!" not in err and "Traceback" not in err


def test_a_second_ctrl_c_stops_at_once_and_a_worker_resumes_at_once(
    jobs: BatchJobs, start_run: Callable[..., subprocess.Popen[str]], db_path: Path
) -> None:
    # Chunks of 5 s: both Ctrl-Cs come within the chunk after the first checkpoint (with
    # chunks of 2 s, one under load ended between them, and the run stopped at it).
    proc = start_run("ledger", "--set", "n=40", "--set", "sleep=5")
    job_id = wait_for_progress(jobs, 10)  # and the next 5 s chunk has begun
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)  # the first one is seen: a checkpoint is pending
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert out == f"{job_id}\n"
    assert f"Stopped at once; {job_id} resumes from its last checkpoint" in err
    assert "Aborted!" not in err and "Traceback" not in err
    left_at = jobs.retrieve(job_id).result["advancement_count"]
    # Its lease had 30 s to go; the run's process is gone, so a worker here takes it now.
    jobs.update(job_id, context={"sleep": 0})
    jobs.start()
    assert jobs.wait(job_id, timeout=10).status == Status.COMPLETED
    assert left_at < 40
