"""The command line when things go wrong: a broken database, a failed job, Ctrl-C.

A broken database is one line naming it and exit 2, never a traceback; a job
that fails is its errors and exit 1, with a ``retry`` hint only when a retry
can help; Ctrl-C never prints a traceback either.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from batchjobs import BatchJobs, Status
from batchjobs.cli import cli

ROOT = Path(__file__).resolve().parent.parent
ENV = {"BATCHJOBS_DB": None, "BATCHJOBS_APP": None, "BATCHJOBS_REDIS_URL": None}


def batchjobs(db: str | Path, *args: str, app: str = "tests.strategies") -> Result:
    return CliRunner(env=ENV).invoke(cli, ["--db", str(db), "--app", app, *args])


def one_line(result: Result, code: int, message: str) -> None:
    """Exit ``code``, the message as the last line on stderr, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == f"Error: {message}", result.stderr


@pytest.fixture
def read_only(jobs: BatchJobs, db_path: Path) -> Callable[..., Result]:
    """Run a command on the test's database, opened read-only."""
    return lambda *args: batchjobs(f"sqlite:///{db_path}?mode=ro", *args)


def test_every_write_to_a_read_only_database_is_one_line_and_exit_2(
    read_only: Callable[..., Result], jobs: BatchJobs, db_path: Path
) -> None:
    preview = jobs.create("words", {"words": ["a"]}, dry_run=True)
    broken = jobs.create("broken")
    jobs.run_until_idle(timeout=10)
    waiting = jobs.create("ledger", {"n": 5})
    message = f"Cannot write to the database {db_path}: it is read-only"
    for args in (
        ["create", "ledger", "--set", "n=1"],
        ["run", "ledger", "--set", "n=1"],
        ["confirm", preview.id],
        ["cancel", waiting.id],
        ["retry", broken.id],
        ["prune", "--older-than", "0s"],
    ):
        result = read_only(*args)
        one_line(result, 2, message)
        assert result.stdout == "", args
    assert jobs.list_and_count()[1] == 3  # nothing was written
    listed = read_only("list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)["count"] == 3


def test_a_worker_until_idle_on_a_read_only_database_gives_up_with_one_line(
    read_only: Callable[..., Result], jobs: BatchJobs, db_path: Path
) -> None:
    jobs.create("ledger", {"n": 5})
    result = read_only("worker", "--until-idle", "--poll-interval", "0.05")
    one_line(result, 2, f"Cannot write to the database {db_path}: it is read-only")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "the workers retry with a backoff" in warnings[0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: p / "missing" / "jobs.db",
            "Cannot open the database {p}: unable to open database file",
        ),
        (
            lambda p: (p / "notes.db").write_text("my notes\n" * 500) and p / "notes.db",
            "The database {p} is damaged or is not a database: file is not a database",
        ),
    ],
)
def test_a_database_that_cannot_be_used_is_one_line_and_exit_2(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    one_line(batchjobs(path, "list"), 2, message.format(p=path))


def test_a_job_whose_input_is_refused_is_reported_without_a_retry_hint(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "picky_app.py").write_text(
        "from batchjobs import BatchJobStrategy, InvalidDataError\n\n"
        "class Picky(BatchJobStrategy):\n"
        "    batch_type = 'picky'\n\n"
        "    def pre_process(self, run):\n"
        "        raise InvalidDataError('row 3: price is not a number')\n\n"
        "    def process_chunk(self, run, start, size):\n"
        "        return 0\n"
    )
    result = batchjobs(db_path, "run", "picky", app="picky_app")
    assert result.exit_code == 1 and result.stdout.startswith("batch_")
    assert "error: row 3: price is not a number [invalid_data]" in result.stderr
    assert "failed; its input was refused: fix the input and create a new job" in result.stderr
    assert "retry" not in result.stderr and "Traceback" not in result.stderr


def test_a_job_whose_context_lacks_a_key_is_refused_input_without_a_retry_hint(
    db_path: Path,
) -> None:
    result = batchjobs(db_path, "run", "ledger")  # no context.n: pre_process reads it
    assert result.exit_code == 1
    assert "error: The job's context has no 'n' [invalid_data]" in result.stderr
    assert "failed; its input was refused: fix the input and create a new job" in result.stderr
    assert "retry" not in result.stderr and "Traceback" not in result.stderr
    verbose = CliRunner(env=ENV).invoke(
        cli, ["--db", str(db_path), "--app", "tests.strategies", "-v", "run", "ledger"]
    )
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr and "MissingContextKeyError" in verbose.stderr


def test_a_failed_job_prints_its_errors_and_a_traceback_only_when_verbose(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "flaky_app.py").write_text(
        "from batchjobs import BatchJobStrategy\n\n"
        "class Flaky(BatchJobStrategy):\n"
        "    batch_type = 'flaky'\n\n"
        "    def pre_process(self, run):\n"
        "        {}['n']  # a KeyError of the strategy's own, not of the context\n\n"
        "    def process_chunk(self, run, start, size):\n"
        "        return 0\n"
    )
    result = batchjobs(db_path, "run", "flaky", app="flaky_app")
    assert result.exit_code == 1
    job_id = result.stdout.strip()
    assert "error: 'n' [KeyError]" in result.stderr
    assert f"failed; resume it from its checkpoint with: batchjobs retry {job_id}" in result.stderr
    assert "Traceback" not in result.stderr
    verbose = CliRunner(env=ENV).invoke(
        cli, ["--db", str(db_path), "--app", "flaky_app", "-v", "run", "flaky"]
    )
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr and "KeyError: 'n'" in verbose.stderr


def test_run_reports_progress_and_the_job_as_it_ends(db_path: Path) -> None:
    result = batchjobs(db_path, "run", "ledger", "--set", "n=35", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["result"]["advancement_count"] == 35
    assert "[####################] 100%  35/35  completed" in result.stderr


@pytest.mark.slow
def test_sigint_on_a_worker_whose_database_is_read_only_prints_no_traceback(
    jobs: BatchJobs, db_path: Path
) -> None:
    jobs.create("ledger", {"n": 5})
    command = str(Path(sysconfig.get_path("scripts")) / "batchjobs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHJOBS_")}
    worker = subprocess.Popen(
        [command, "--db", f"sqlite:///{db_path}?mode=ro", "--app", "tests.strategies", "worker"],
        cwd=ROOT,
        env=env,
        text=True,
        stderr=subprocess.PIPE,
    )
    assert worker.stderr is not None
    lines: list[str] = []
    while not any("read-only" in line for line in lines):
        line = worker.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
    worker.send_signal(signal.SIGINT)
    _, rest = worker.communicate(timeout=30)
    stderr = "".join(lines) + rest
    assert worker.returncode == 0, stderr
    assert "Traceback" not in stderr and stderr.rstrip().endswith("Stopped.")
    assert stderr.count("it is read-only") == 1, stderr
    assert jobs.list_and_count(status="created")[1] == 1


def test_run_stopped_by_ctrl_c_hands_the_job_over_and_prints_its_id(
    jobs: BatchJobs, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchjobs.cli import _progress

    def interrupt_at_first_progress(stop: Any) -> Callable[[], None]:
        real = BatchJobs.run

        def run(self: BatchJobs, id: str, **kwargs: Any) -> Any:
            seen = kwargs["on_progress"]

            def progress(job: Any) -> None:
                seen(job)
                stop.set()  # as the SIGINT handler does

            return real(self, id, on_progress=progress, stop=kwargs["stop"])

        monkeypatch.setattr(BatchJobs, "run", run)
        return lambda: None

    monkeypatch.setattr(_progress, "_trap_interrupt", interrupt_at_first_progress)
    result = batchjobs(db_path, "run", "ledger", "--set", "n=100")
    assert result.exit_code == 130 and "Traceback" not in result.output
    job = jobs.retrieve(result.stdout.strip())
    assert job.status == Status.PROCESSING and jobs.store.holder(job.id) is None
    assert "resumes from its last checkpoint in a worker" in result.stderr
