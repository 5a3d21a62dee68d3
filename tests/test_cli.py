"""The ``batchjobs`` command line, through click's CliRunner and as the installed command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from freezegun import freeze_time

from batchjobs import BatchJobs, Status
from batchjobs.cli import _ProgressBar, cli
from batchjobs.models import BatchJob, utcnow
from batchjobs.strategy import StrategyRegistry
from tests.strategies import read_ledger

pytestmark = pytest.mark.backends("sqlite", "postgres")

ROOT = Path(__file__).resolve().parent.parent
ENV = {"BATCHJOBS_DB": None, "BATCHJOBS_APP": None, "BATCHJOBS_REDIS_URL": None}
Invoke = Callable[..., Result]


@pytest.fixture
def invoke(db_url: str | Path, tmp_path: Path) -> Invoke:
    """Run ``batchjobs --db <test db> --app tests.strategies ARGS``; stdout and stderr apart."""
    files = ["--files-dir", str(tmp_path / "jobs-files")] if isinstance(db_url, str) else []

    def run(
        *args: str,
        input: str | None = None,
        app: str | None = "tests.strategies",
        options: tuple[str, ...] = (),
    ) -> Result:
        group = ["--db", str(db_url), *files, *(["--app", app] if app else []), *options]
        return CliRunner(env=ENV).invoke(cli, [*group, *args], input=input)

    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def count_jobs(jobs: BatchJobs) -> int:
    return jobs.list_and_count(limit=0)[1]


def refused(result: Result, message: str) -> None:
    """Exit status 2, the message on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.fixture
def app_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], str]]:
    """Write a module in a temp dir that becomes the working directory; returns its name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names: list[str] = []

    def write(name: str, source: str) -> str:
        name = f"{name}_{tmp_path.name}".replace("-", "_")
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)
    for name, module in list(sys.modules.items()):  # what tests imported by path
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


# -- create ----------------------------------------------------------------------------------


def test_create_prints_the_id_and_stores_the_job(invoke: Invoke, jobs: BatchJobs) -> None:
    result = invoke("create", "words", "--set", 'words=["a", "b"]', "--user", "usr_1")
    assert result.exit_code == 0, result.output
    job = jobs.retrieve(result.stdout.strip())
    assert (job.type, job.status, job.created_by) == ("words", Status.CREATED, "usr_1")
    assert job.context == {"words": ["a", "b"]}
    assert "worker" in result.stderr


def test_create_context_from_a_file_or_stdin_and_set_overrides_keys(
    invoke: Invoke, jobs: BatchJobs, tmp_path: Path
) -> None:
    (tmp_path / "ctx.json").write_text('{"words": ["x"], "note": "kept"}')
    from_file = invoke(
        "create",
        "words",
        "--context",
        f"@{tmp_path / 'ctx.json'}",
        "--set",
        'words=["y"]',
        "--set",
        "label=plain text",
        "--set",
        "n=3",
    )
    assert jobs.retrieve(from_file.stdout.strip()).context == {
        "words": ["y"],
        "note": "kept",
        "label": "plain text",
        "n": 3,
    }
    from_stdin = invoke("create", "words", "--context", "@-", input='{"words": ["z"]}')
    assert jobs.retrieve(from_stdin.stdout.strip()).context == {"words": ["z"]}


def test_create_json_prints_the_record_as_one_document(invoke: Invoke) -> None:
    result = invoke("create", "words", "--context", '{"words": []}', "--dry-run", "--json")
    record = json.loads(result.stdout)
    assert record["status"] == "created" and record["dry_run"] is True
    assert set(record) >= {"id", "type", "context", "result", "created_at", "completed_at"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "Unknown batch job type 'nope'; registered types: broken, "),
        (
            ["words", "--context", "{bad"],
            "Invalid value for '--context': the context is not valid JSON",
        ),
        (["words", "--context", "[1]"], "must be a JSON object, not list"),
        (["words", "--context", "@missing.json"], "cannot read missing.json"),
        (["words", "--set", "words"], "'words' is not KEY=VALUE"),
        (["words", "--set", "words=3"], "context.words must be a list of strings"),
    ],
)
@pytest.mark.parametrize("command", ["create", "run"])
def test_bad_input_exits_2_with_the_message_and_writes_nothing(
    invoke: Invoke, jobs: BatchJobs, command: str, args: list[str], message: str
) -> None:
    refused(invoke(command, *args), message)
    assert count_jobs(jobs) == 0


def test_create_wait_follows_the_job_a_worker_runs(
    invoke: Invoke, make_jobs: Callable[..., BatchJobs]
) -> None:
    jobs = make_jobs(poll_interval=0.05)  # another process's worker, as far as the CLI knows
    jobs.start()
    done = invoke("create", "words", "--set", 'words=["a"]', "--wait")
    assert done.exit_code == 0, done.output
    assert jobs.retrieve(done.stdout.strip()).status == Status.COMPLETED
    assert "100%  1/1  completed" in done.stderr
    failed = invoke("create", "ledger", "--set", "n=5", "--set", "fail_at=0", "--wait", "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["status"] == "failed"
    assert "error: chunk at 0 failed [RuntimeError]" in failed.stderr


# -- run -----------------------------------------------------------------------------------


def test_run_processes_the_job_here_with_a_progress_bar(invoke: Invoke, jobs: BatchJobs) -> None:
    result = invoke("run", "words", "--set", 'words=["a", "b", "c"]')
    assert result.exit_code == 0, result.output
    job = jobs.retrieve(result.stdout.strip())
    assert job.status == Status.COMPLETED and job.result["shouted"] == ["A", "B", "C"]
    assert result.stderr.strip() == "[####################] 100%  3/3  completed"


def test_run_processes_only_the_job_it_created(invoke: Invoke, jobs: BatchJobs) -> None:
    older = jobs.create("words", {"words": ["a"]})
    result = invoke("run", "ledger", "--set", "n=25")
    assert jobs.retrieve(result.stdout.strip()).status == Status.COMPLETED
    assert jobs.retrieve(older.id).status == Status.CREATED


def test_run_a_dry_run_stops_pre_processed_and_shows_its_stats(
    invoke: Invoke, jobs: BatchJobs
) -> None:
    result = invoke("run", "words", "--dry-run", "--set", 'words=["a", "b"]')
    assert result.exit_code == 0, result.output
    job = jobs.retrieve(result.stdout.strip())
    assert job.status == Status.PRE_PROCESSED
    assert "  Words: 2 words" in result.stderr
    assert f"Process it with: batchjobs confirm {job.id}" in result.stderr


def test_run_exits_1_when_the_job_fails(invoke: Invoke, jobs: BatchJobs) -> None:
    result = invoke("run", "ledger", "--set", "n=30", "--set", "fail_at=10", "--json")
    assert result.exit_code == 1
    record = json.loads(result.stdout)
    assert record["status"] == "failed" and record["result"]["advancement_count"] == 10
    assert "error: chunk at 10 failed [RuntimeError]" in result.stderr
    assert f"batchjobs retry {record['id']}" in result.stderr
    broken = invoke("run", "broken")
    assert broken.exit_code == 1
    assert "error: cannot count the records [ValueError]" in broken.stderr


def test_create_and_run_with_a_key_use_the_job_that_has_it(invoke: Invoke, jobs: BatchJobs) -> None:
    created = invoke("create", "ledger", "--set", "n=25", "--key", "nightly", "--user", "usr_1")
    assert created.exit_code == 0, created.output
    job_id = created.stdout.strip()
    again = invoke("create", "ledger", "--set", "n=99", "--key", "nightly", "--user", "usr_1")
    assert again.stdout.strip() == job_id
    assert f"Found ledger job {job_id} by its key (created)." in again.stderr
    ran = invoke("run", "ledger", "--set", "n=99", "--key", "nightly", "--user", "usr_1")
    assert ran.exit_code == 0, ran.output
    assert ran.stdout.strip() == job_id
    done = jobs.retrieve(job_id)
    assert done.status == Status.COMPLETED and done.result["count"] == 25
    rerun = invoke("run", "ledger", "--key", "nightly", "--user", "usr_1", "--set", "n=1")
    assert rerun.exit_code == 0 and rerun.stdout.strip() == job_id
    assert "by its key (completed)" in rerun.stderr
    assert count_jobs(jobs) == 1
    refused(invoke("run", "words", "--key", "nightly", "--user", "usr_1"), "a ledger job, not")
    refused(invoke("create", "words", "--key", ""), "key must be 1 to 255 characters")
    assert count_jobs(jobs) == 1


# -- list and show -------------------------------------------------------------------------


def test_list_filters_pages_and_prints_a_table_or_json(invoke: Invoke, jobs: BatchJobs) -> None:
    first = jobs.create("words", {"words": ["a"]}, created_by="usr_1")
    second = jobs.create("ledger", {"n": 1}, created_by="usr_2")
    third = jobs.create("words", {"words": []}, created_by="usr_2")
    jobs.cancel(third.id)
    table = invoke("list")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "STATUS", "PROGRESS", "USER", "CREATED"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [third.id, "words", "canceled"],
        [second.id, "ledger", "created"],
        [first.id, "words", "created"],
    ]
    assert table.stderr == "3 of 3 job(s)\n"
    filtered = invoke(
        "list", "--type", "words", "--user", "usr_2", "--user", "usr_1", "--status", "created"
    )
    assert [line.split()[0] for line in filtered.stdout.splitlines()[1:]] == [first.id]
    page = json.loads(invoke("list", "--limit", "1", "--offset", "1", "--json").stdout)
    assert [j["id"] for j in page["batch_jobs"]] == [second.id]
    assert (page["count"], page["offset"], page["limit"]) == (3, 1, 1)
    assert "next page: --offset 2" in invoke("list", "--limit", "1", "--offset", "1").stderr
    refused(invoke("list", "--status", "sleeping"), "Invalid value for '--status'")
    refused(invoke("list", "--limit", "-1"), "Invalid value for '--limit'")


def ids_listed(invoke: Invoke, *args: str) -> list[str]:
    result = invoke("list", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return [job["id"] for job in json.loads(result.stdout)["batch_jobs"]]


def test_list_takes_every_medusa_filter(invoke: Invoke, jobs: BatchJobs) -> None:
    done = jobs.create("ledger", {"n": 1}, created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    waiting = jobs.create("words", {"words": ["a"]}, created_by="usr_2")
    middle = waiting.to_dict()["created_at"]
    assert ids_listed(invoke, "--filter", "completed_at=null") == [waiting.id]
    assert ids_listed(invoke, "--filter", "completed_at[gte]=2000-01-01") == [done.id]
    assert ids_listed(invoke, "--filter", f"created_at[lt]={middle}") == [done.id]
    assert ids_listed(
        invoke, "--filter", f"created_at[gte]={middle}", "--filter", "created_at[lt]=2999-01-01"
    ) == [waiting.id]
    assert ids_listed(invoke, "--filter", "pre_processed_at=null", "--id", done.id) == []
    assert ids_listed(invoke, "--id", done.id, "--id", waiting.id) == [waiting.id, done.id]
    assert ids_listed(invoke, "--order", "created_at") == [done.id, waiting.id]
    assert ids_listed(invoke, "--order", "-type") == [waiting.id, done.id]
    refused(
        invoke("list", "--filter", "completed_at=2000-01-01"),
        "'completed_at=2000-01-01' needs an operator or null: "
        "completed_at[gt|gte|lt|lte]=ISO or completed_at=null",
    )
    refused(invoke("list", "--filter", "completed_at"), "is not FIELD[OP]=VALUE or FIELD=null")
    refused(
        invoke("list", "--filter", "completed_at=null", "--filter", "completed_at[gt]=2000"),
        "completed_at=null cannot be combined with another completed_at filter",
    )
    refused(
        invoke("list", "--filter", "created_at[gt]=2000", "--filter", "created_at[gt]=2001"),
        "created_at[gt] is given twice",
    )
    refused(
        invoke("list", "--filter", "created_at[after]=2000"),
        "created_at: unknown operator 'after'; use gt, gte, lt or lte",
    )
    refused(invoke("list", "--filter", "color_at=null"), "cannot filter on 'color_at'")
    refused(invoke("list", "--order", "-secret"), "order must be one of id, type")


def test_list_of_nothing_says_so(invoke: Invoke) -> None:
    result = invoke("list")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "0 of 0 job(s)\n")


def test_show_spells_out_progress_stats_and_errors(invoke: Invoke, jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a", "b"]}, dry_run=True, created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    jobs.update(
        job.id,
        result={
            "errors": [{"message": "bad row", "code": "invalid", "row": 3}],
            "error_count": 5,
            "file_key": "out/x.csv",
            "file_size": 12,
        },
    )
    text = invoke("show", job.id).stdout
    for expected in [
        f"id                {job.id}",
        "status            pre_processed",
        "created_by        usr_1",
        "progress          0/2 (0%)",
        'context           {"words": ["a", "b"]}',
        "pre_processed_at  20",
        "stat_descriptors  1\n  Words: 2 words",
        "file              out/x.csv (12 bytes)",
        'errors            5\n  bad row [invalid] {"row": 3}',
    ]:
        assert expected in text
    assert json.loads(invoke("show", job.id, "--json").stdout) == jobs.retrieve(job.id).to_dict()


def test_unknown_ids_exit_2_with_the_not_found_message(invoke: Invoke) -> None:
    for command in ("show", "confirm", "cancel", "retry", "watch"):
        refused(invoke(command, "batch_nope"), "Error: Batch job with id batch_nope was not found")


# -- confirm, cancel, retry, watch ---------------------------------------------------------


def test_confirm_cancel_and_retry_print_the_new_status(invoke: Invoke, jobs: BatchJobs) -> None:
    preview = jobs.create("words", {"words": ["a"]}, dry_run=True)
    failing = jobs.create("ledger", {"n": 20, "fail_at": 10})
    jobs.run_until_idle(timeout=10)
    assert invoke("confirm", preview.id).stdout == f"{preview.id} confirmed\n"
    retried = json.loads(invoke("retry", failing.id, "--json").stdout)
    assert retried["status"] == "confirmed"
    assert invoke("cancel", failing.id).stdout == f"{failing.id} canceled\n"
    assert jobs.retrieve(failing.id).status == Status.CANCELED


@pytest.mark.parametrize(
    ("command", "status", "message"),
    [
        (
            "confirm",
            "created",
            "Cannot confirm processing for a batch job that is not pre processed",
        ),
        ("cancel", "completed", "Cannot cancel completed batch job"),
        ("cancel", "failed", "Cannot cancel failed batch job"),
        ("retry", "completed", "Cannot retry a batch job that is not failed"),
    ],
)
def test_refused_transitions_exit_2_and_change_nothing(
    invoke: Invoke, jobs: BatchJobs, command: str, status: str, message: str
) -> None:
    job = jobs.create("ledger", {"n": 5, **({"fail_at": 0} if status == "failed" else {})})
    if status != "created":
        jobs.run_until_idle(timeout=10)
    before = jobs.retrieve(job.id)
    assert before.status == status
    refused(invoke(command, job.id), f"Error: {message}")
    assert jobs.retrieve(job.id) == before


def test_cancel_a_canceled_job_is_fine(invoke: Invoke, jobs: BatchJobs) -> None:
    job = jobs.cancel(jobs.create("words", {"words": []}).id)
    assert invoke("cancel", job.id).stdout == f"{job.id} canceled\n"


def test_watch_exits_0_completed_and_1_failed_or_canceled(invoke: Invoke, jobs: BatchJobs) -> None:
    done = jobs.create("ledger", {"n": 20})
    failed = jobs.create("ledger", {"n": 20, "fail_at": 10})
    canceled = jobs.cancel(jobs.create("ledger", {"n": 20}).id)
    jobs.run_until_idle(timeout=10)
    result = invoke("watch", done.id)
    assert (result.exit_code, result.stdout) == (0, f"{done.id} completed\n")
    assert result.stderr == "[####################] 100%  20/20  completed\n"
    result = invoke("watch", failed.id)
    assert (result.exit_code, result.stdout) == (1, f"{failed.id} failed\n")
    assert "[##########----------]  50%  10/20  failed" in result.stderr
    assert invoke("watch", canceled.id, "--json").exit_code == 1


def test_watch_follows_a_job_until_a_worker_completes_it(
    invoke: Invoke, make_jobs: Callable[..., BatchJobs]
) -> None:
    jobs = make_jobs(poll_interval=0.05)
    job = jobs.create("ledger", {"n": 40, "sleep": 0.01})
    jobs.start()
    result = invoke("watch", job.id, "--timeout", "20", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["result"]["advancement_count"] == 40


def test_watch_gives_up_after_its_timeout(invoke: Invoke, jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a"]})  # no worker runs it
    result = invoke("watch", job.id, "--timeout", "0.2")
    assert result.exit_code == 1
    assert f"Error: {job.id} is still created after 0.2 seconds" in result.stderr


def test_progress_line_shows_the_rate_and_eta() -> None:
    now = [100.0]
    bar = _ProgressBar(tty=False, clock=lambda: now[0])
    job = BatchJob(id="batch_x", type="t", status=Status.PROCESSING, result={"count": 200})
    for seconds, done in ((0, 0), (2, 50)):
        now[0] = 100.0 + seconds
        bar.update(job.replace(result={"count": 200, "advancement_count": done}))
    line = bar.line(job.replace(result={"count": 200, "advancement_count": 50}))
    assert line == "[#####---------------]  25%  50/200  25.0 rec/s  ETA 0:00:06  processing"
    uncounted = job.replace(result={"advancement_count": 50})
    assert bar.line(uncounted) == "50  25.0 rec/s  processing"
    assert _ProgressBar(tty=False).line(job.replace(status=Status.CREATED, result={})) == (
        "0  created"
    )


# -- worker ----------------------------------------------------------------------------------


def test_worker_until_idle_runs_every_pending_job_then_stops(
    invoke: Invoke, jobs: BatchJobs
) -> None:
    ids = [jobs.create("ledger", {"n": 30}).id, jobs.create("words", {"words": ["a"]}).id]
    preview = jobs.create("words", {"words": ["a"]}, dry_run=True)
    result = invoke("worker", "--until-idle", "--concurrency", "1", "--poll-interval", "0.1")
    assert result.exit_code == 0, result.output
    assert [jobs.retrieve(i).status for i in ids] == [Status.COMPLETED, Status.COMPLETED]
    assert jobs.retrieve(preview.id).status == Status.PRE_PROCESSED
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"Worker on {jobs.store.location} (types: broken, ")
    assert lines[0].endswith("uncounted, words; concurrency 1); exits when no job is left.")
    assert any(line.endswith(f"{ids[0]} ledger completed 30/30") for line in lines)
    assert any(line.endswith(f"{preview.id} words pre_processed") for line in lines)
    assert lines[-1] == "Stopped."
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back


def test_worker_without_strategies_exits_2(invoke: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StrategyRegistry, "load_entry_points", lambda self: None)
    refused(invoke("worker", app=None), "No strategies are registered")
    result = invoke("strategies", app=None)
    assert (result.exit_code, result.stdout) == (0, "")
    assert "No strategies are registered" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--concurrency", "0"], "'--concurrency'"), (["--poll-interval", "0"], "'--poll-interval'")],
)
def test_worker_options_are_checked(invoke: Invoke, args: list[str], message: str) -> None:
    refused(invoke("worker", *args), f"Invalid value for {message}")


# -- strategies, template, version ------------------------------------------------------------


def test_strategies_lists_types_classes_and_origins(invoke: Invoke) -> None:
    lines = invoke("strategies").stdout.splitlines()
    assert lines[0].split() == ["TYPE", "CLASS", "ORIGIN"]
    assert lines[-1].split() == [
        "words",
        "tests.strategies.Words",
        "app",
        "module",
        "tests.strategies",
    ]
    listed = json.loads(invoke("strategies", "--json").stdout)["strategies"]
    assert {
        "type": "ledger",
        "class": "tests.strategies.Ledger",
        "origin": "app module tests.strategies",
    } in listed


def test_template_prints_build_template_or_says_there_is_none(
    invoke: Invoke, app_module: Callable[[str, str], str]
) -> None:
    name = app_module(
        "tpl",
        (
            "from batchjobs import BatchJobStrategy\n"
            "class Import(BatchJobStrategy):\n"
            "    batch_type = 'import'\n"
            "    def process_chunk(self, run, start, size): return 0\n"
            "    def build_template(self): return 'sku,title\\n'\n"
        ),
    )
    result = invoke("template", "import", app=name)
    assert (result.exit_code, result.stdout) == (0, "sku,title\n")
    refused(invoke("template", "words"), "The words strategy (Words) has no template")
    refused(invoke("template", "nope"), "Unknown batch job type 'nope'")


def test_version_needs_no_database(invoke: Invoke, db_path: Path) -> None:
    result = invoke("version")
    assert result.exit_code == 0 and result.stdout.startswith("batchjobs ")
    assert set(json.loads(invoke("version", "--json").stdout)) == {"batchjobs", "python", "sqlite"}
    assert not db_path.exists()


# -- prune -----------------------------------------------------------------------------------


def test_prune_deletes_old_resting_jobs_and_their_files(invoke: Invoke, jobs: BatchJobs) -> None:
    done = jobs.create("words", {"words": ["a"]})
    failed = jobs.create("ledger", {"n": 5, "fail_at": 0})
    jobs.run_until_idle(timeout=10)
    pending = jobs.create("words", {"words": ["b"]})  # active: never pruned, however old
    with jobs.files.open_write("exports/done.csv") as out:
        out.write(b"a\n")
    jobs.update(done.id, result={"file_key": "exports/done.csv"})
    with freeze_time(utcnow() + timedelta(days=31)):
        young = invoke("prune", "--older-than", "40d")
        assert young.stderr == "Deleted 0 job(s) and 0 file(s).\n"
        preview = invoke("prune", "--older-than", "30d", "--status", "failed", "--dry-run")
        assert [line.split()[0] for line in preview.stdout.splitlines()[1:]] == [failed.id]
        assert preview.stderr == "Would delete 1 job(s) and 0 file(s).\n"
        assert count_jobs(jobs) == 3
        only_failed = invoke("prune", "--older-than", "30d", "--status", "failed", "--json")
        assert json.loads(only_failed.stdout) == {
            "deleted": [failed.id],
            "files": [],
            "dry_run": False,
        }
        result = invoke("prune", "--older-than", "4w")
    assert result.exit_code == 0
    assert result.stderr == "Deleted 1 job(s) and 1 file(s).\n"
    assert not jobs.files.exists("exports/done.csv")
    assert [j.id for j in jobs.list_and_count()[0]] == [pending.id]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "30x"], "'30x' is not a duration like 30d"),
        (["--older-than", "d"], "'d' is not a duration"),
        (["--older-than", "²d"], "'²d' is not a duration like 30d"),
        (["--older-than", "३०d"], "'३०d' is not a duration like 30d"),  # Devanagari 30
        (["--older-than", "30d\n"], "is not a duration like 30d"),
        (["--older-than", "-1d"], "'-1d' is not a duration like 30d"),
        (["--older-than", "9999999999d"], "'9999999999d' is too long"),
        (["--older-than", "1d", "--status", "processing"], "Invalid value for '--status'"),
        ([], "Missing option '--older-than'"),
    ],
)
def test_prune_refuses_bad_options(
    invoke: Invoke, jobs: BatchJobs, args: list[str], message: str
) -> None:
    jobs.create("words", {"words": []})
    refused(invoke("prune", *args), message)
    assert count_jobs(jobs) == 1


def test_prune_older_than_any_date_deletes_nothing(invoke: Invoke, jobs: BatchJobs) -> None:
    jobs.create("words", {"words": []})
    jobs.run_until_idle(timeout=10)
    result = invoke("prune", "--older-than", "999999999d")  # before year 1
    assert (result.exit_code, result.stderr) == (0, "Deleted 0 job(s) and 0 file(s).\n")
    assert count_jobs(jobs) == 1


# -- --app, --db, the environment, mounting ---------------------------------------------------


def test_app_module_attr_uses_that_batchjobs_and_its_settings(
    invoke: Invoke, app_module: Callable[[str, str], str], tmp_path: Path, db_path: Path
) -> None:
    name = app_module(
        "myapp",
        (
            "from batchjobs import BatchJobs\n"
            "from tests.strategies import Words\n"
            "jobs = BatchJobs('custom.db')\n"
            "jobs.register(Words)\n"
            "def make(): return jobs\n"
        ),
    )
    try:
        for spec in (f"{name}:jobs", f"{name}:make"):
            result = invoke("run", "words", "--set", 'words=["a"]', app=spec)
            assert result.exit_code == 0, result.output
        module = sys.modules[name]
        assert module.jobs.list_and_count()[1] == 2
        assert module.jobs.db_path == Path("custom.db") and not db_path.exists()
    finally:
        sys.modules[name].jobs.close()


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module_here", "Invalid value for '--app': cannot import 'no_such_module_here'"),
        ("json", "module 'json' defines no BatchJobStrategy subclass"),
        ("tests.strategies:nothing", "module 'tests.strategies' has no attribute 'nothing'"),
        ("tests.strategies:Words", "tests.strategies:Words returned a Words, not a BatchJobs"),
        (".relative", "'.relative' is not a module name"),
        (":jobs", "'' is not a module name"),
        ("tests.strategies:", "module 'tests.strategies' has no attribute ''"),
    ],
)
def test_bad_app_exits_2(invoke: Invoke, app: str, message: str) -> None:
    refused(invoke("list", app=app), message)


ECHO = """
from batchjobs import BatchJobs, BatchJobStrategy
class Echo(BatchJobStrategy):
    batch_type = "echo"
    def process_chunk(self, run, start, size): return 0
jobs = BatchJobs("echo.db")
jobs.register(Echo)
"""


def test_app_takes_the_path_of_a_python_file(
    invoke: Invoke, app_module: Callable[[str, str], str], tmp_path: Path
) -> None:
    name = app_module("pkg", "")
    (tmp_path / f"{name}.py").unlink()  # the name goes to a package instead
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(ECHO)
    (tmp_path / "far").mkdir()
    (tmp_path / "far" / f"alone_{name}.py").write_text(ECHO)
    for app, module in [
        (f"./{name}/tasks.py", f"{name}.tasks"),  # in a package: named from its top
        (f"{name}/tasks.py", f"{name}.tasks"),
        (str(package / "tasks.py"), f"{name}.tasks"),
        (f"far/alone_{name}.py", f"alone_{name}"),  # no package: its folder goes on sys.path
    ]:
        result = invoke("strategies", "--json", app=app)
        assert result.exit_code == 0, result.output
        origins = {s["type"]: s["origin"] for s in json.loads(result.stdout)["strategies"]}
        assert origins["echo"] == f"app module {module}"
    result = invoke("create", "echo", app=f"./{name}/tasks.py:jobs")
    assert result.exit_code == 0, result.output
    assert sys.modules[f"{name}.tasks"].jobs.retrieve(result.stdout.strip()).type == "echo"
    sys.modules[f"{name}.tasks"].jobs.close()
    sys.modules[f"alone_{name}"].jobs.close()


def test_app_refuses_a_path_that_is_no_module_of_its_own(
    invoke: Invoke, app_module: Callable[[str, str], str], tmp_path: Path
) -> None:
    (tmp_path / "json.py").write_text(ECHO)
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "folder").mkdir()
    cases = [
        ("./missing.py", "Invalid value for '--app': ./missing.py: no such file"),
        ("./missing/app.py:jobs", "Invalid value for '--app': ./missing/app.py: no such file"),
        ("./notes.txt", "./notes.txt is not a .py file"),
        ("./folder", "./folder is a folder without an __init__.py, not a package"),
        ("./json.py", f"./json.py imports as 'json', which is {sys.modules['json'].__file__}"),
    ]
    for app, message in cases:
        refused(invoke("list", app=app), message)


def test_the_command_closes_what_an_app_factory_made_but_not_the_modules_own(
    invoke: Invoke, app_module: Callable[[str, str], str]
) -> None:
    name = app_module(
        "factory",
        (
            "from batchjobs import BatchJobs\n"
            "from tests.strategies import Words\n"
            "closed = []\n"
            "class Tracked(BatchJobs):\n"
            "    def close(self):\n"
            "        closed.append(self)\n"
            "        super().close()\n"
            "jobs = Tracked('own.db')\n"
            "made = []\n"
            "def create_app():\n"
            "    made.append(Tracked('made.db'))\n"
            "    made[-1].register(Words)\n"
            "    return made[-1]\n"
            "def shared(): return jobs\n"
        ),
    )
    module = None
    try:
        result = invoke("run", "words", "--set", 'words=["a"]', app=f"{name}:create_app")
        assert result.exit_code == 0, result.output
        module = sys.modules[name]
        assert module.closed == module.made  # what the factory returned is the command's
        for spec in (f"{name}:jobs", f"{name}:shared"):
            assert invoke("list", app=spec).exit_code == 0
        assert module.jobs not in module.closed  # the module's own: its to close
    finally:
        if module is not None:
            module.jobs.close()


def test_app_module_registers_only_strategies_it_defines(
    invoke: Invoke, app_module: Callable[[str, str], str]
) -> None:
    name = app_module(
        "mixed",
        (
            "from batchjobs import BatchJobStrategy\n"
            "from tests.strategies import Words\n"
            "class Base(BatchJobStrategy):\n"
            "    pass\n"
            "class Echo(Base):\n"
            "    batch_type = 'echo'\n"
            "    def process_chunk(self, run, start, size): return 0\n"
        ),
    )
    result = invoke("strategies", "--json", app=f"{name}.py")
    listed = {s["type"]: s["origin"] for s in json.loads(result.stdout)["strategies"]}
    assert listed["echo"] == f"app module {name}"
    assert "words" not in listed  # imported from tests.strategies, not defined there
    assert [o for o in listed.values() if o.startswith("app module")] == [f"app module {name}"]


def test_options_come_from_the_environment(db_path: Path) -> None:
    env = {**ENV, "BATCHJOBS_DB": str(db_path), "BATCHJOBS_APP": "tests.strategies"}
    result = CliRunner(env=env).invoke(cli, ["run", "words", "--set", "words=[]"])
    assert result.exit_code == 0, result.output
    with BatchJobs(db_path) as jobs:
        assert jobs.retrieve(result.stdout.strip()).status == Status.COMPLETED


def test_a_database_that_cannot_be_opened_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "missing-dir" / "jobs.db"
    result = CliRunner(env=ENV).invoke(cli, ["--db", str(bad), "list"])
    refused(result, f"Cannot open the database {bad}")


def test_redis_option_reaches_the_batchjobs(invoke: Invoke, redis_url: str) -> None:
    result = invoke("run", "words", "--set", "words=[]", options=("--redis", redis_url))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("notaurl", "'notaurl' is not a Redis URL: Redis URL must specify one of the following"),
        ("http://localhost:6379", "'http://localhost:6379' is not a Redis URL: Redis URL must"),
        ("redis://localhost:port/0", "'redis://localhost:port/0' is not a Redis URL: Port"),
        ("redis://usr:secret@localhost:99999/0", "'redis://localhost:99999/0' is not a Redis"),
    ],
)
def test_a_bad_redis_url_exits_2_naming_it(
    invoke: Invoke, db_path: Path, url: str, message: str
) -> None:
    result = invoke("list", options=("--redis", url))
    refused(result, f"Invalid value for '--redis': {message}")
    assert "secret" not in result.output
    assert not db_path.exists()  # refused before the database was opened


def test_commands_work_while_redis_is_unreachable(
    invoke: Invoke, jobs: BatchJobs, caplog: pytest.LogCaptureFixture
) -> None:
    down = ("--redis", f"redis://127.0.0.1:{_free_port()}/0")
    created = invoke("create", "words", "--set", 'words=["a"]', options=down)
    assert created.exit_code == 0, created.output
    assert any("is unreachable" in r.getMessage() for r in caplog.records)  # the mirror tried
    listed = invoke("list", "--json", options=down)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["count"] == 1
    ran = invoke("run", "words", "--set", 'words=["b"]', options=down)
    assert ran.exit_code == 0, ran.output
    assert jobs.retrieve(ran.stdout.strip()).status == Status.COMPLETED
    assert "Traceback" not in created.output + listed.output + ran.output


def test_the_group_mounts_in_a_host_cli_and_uses_the_hosts_batchjobs(jobs: BatchJobs) -> None:
    @click.group()
    def host() -> None:
        """A host application's CLI."""

    host.add_command(cli, "jobs")
    runner = CliRunner(env=ENV)
    created = runner.invoke(host, ["jobs", "create", "words", "--set", "words=[]"], obj=jobs)
    assert created.exit_code == 0, created.output
    assert "(host jobs worker)" in created.stderr
    assert jobs.retrieve(created.stdout.strip()).type == "words"
    refused(runner.invoke(host, ["jobs", "show", "batch_nope"], obj=jobs), "was not found")
    assert count_jobs(jobs) == 1  # and the host's BatchJobs is still open


# -- the installed command -------------------------------------------------------------------


@pytest.fixture
def command(
    db_url: str | Path, tmp_path: Path
) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """Run the installed ``batchjobs`` from the repository root on the test's database."""
    # This interpreter's script, never whichever batchjobs is first on PATH.
    found = str(Path(sysconfig.get_path("scripts")) / "batchjobs")
    if not Path(found).exists():
        pytest.fail("the batchjobs command is not installed: pip install -e .")
    env = {**os.environ, "BATCHJOBS_DB": str(db_url), "BATCHJOBS_APP": "tests.strategies"}
    env["BATCHJOBS_FILES_DIR"] = str(tmp_path / "jobs-files")
    env.pop("BATCHJOBS_REDIS_URL", None)
    env.pop("PYTHONPATH", None)  # tests.strategies is found the --app way: from the cwd
    started: list[subprocess.Popen[str]] = []

    def run(*args: str, background: bool = False) -> Any:
        if background:
            proc = subprocess.Popen(
                [found, *args],
                cwd=ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            started.append(proc)
            return proc
        return subprocess.run(
            [found, *args], cwd=ROOT, env=env, text=True, capture_output=True, timeout=60
        )

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.slow
def test_installed_command_worker_create_watch_then_sigterm(
    command: Callable[..., Any], jobs: BatchJobs
) -> None:
    worker = command("worker", "--poll-interval", "0.2", background=True)
    created = command("create", "ledger", "--set", "n=50", "--set", "sleep=0.01")
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.strip()
    watched = command("watch", job_id, "--timeout", "30")
    assert (watched.returncode, watched.stdout) == (0, f"{job_id} completed\n"), watched.stderr
    assert "100%  50/50  completed" in watched.stderr
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=20)
    assert worker.returncode == 0, stderr
    assert f"{job_id} ledger completed 50/50" in stderr
    assert stderr.rstrip().endswith("Stopped.") and "Traceback" not in stderr


@pytest.mark.slow
def test_installed_worker_hands_a_running_job_over_on_sigterm(
    command: Callable[..., Any], jobs: BatchJobs, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    # 200 chunks of 50 ms: the stop comes at the next one, never after the last.
    job = jobs.create("ledger", {"n": 2000, "sleep": 0.05, "ledger": str(ledger), "cursor": True})
    worker = command("worker", "--poll-interval", "0.2", background=True)
    deadline = time.monotonic() + 30
    while jobs.retrieve(job.id).result.get("advancement_count", 0) < 30:
        assert time.monotonic() < deadline, "the worker did not start the job"
        time.sleep(0.02)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=20)
    assert worker.returncode == 0, stderr
    stopped = jobs.retrieve(job.id)
    assert stopped.status == Status.PROCESSING  # handed over, not failed nor lost
    assert "Stopping: running jobs save a checkpoint and hand over" in stderr
    jobs.update(job.id, context={"sleep": 0})
    finished = command("worker", "--until-idle", "--poll-interval", "0.2")
    assert finished.returncode == 0, finished.stderr
    assert jobs.retrieve(job.id).status == Status.COMPLETED
    assert sorted(set(map(int, read_ledger(ledger)))) == list(range(2000))


def test_download_copies_the_file_of_a_completed_job(
    invoke: Invoke,
    jobs: BatchJobs,
    make_shop: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    shop = make_shop(rows=5)
    monkeypatch.setenv("BATCHJOBS_CSV_EXPORT_DATABASES", json.dumps({"shop": str(shop)}))
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "csv-export", "--set", "table=products")
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    with jobs.files.open_read(f"exports/{job_id}.csv") as source:
        data = source.read()
    assert data.startswith(b"id,sku,name,price,qty,photo\r\n")
    result = invoke("download", job_id, "-o", str(tmp_path / "out.csv"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.csv").read_bytes() == data
    assert result.stderr == f"Wrote {len(data)} bytes to {tmp_path / 'out.csv'}.\n"
    assert invoke("download", job_id).exit_code == 0
    assert (tmp_path / f"{job_id}.csv").read_bytes() == data
    result = invoke("download", job_id, "-o", "-")
    assert result.exit_code == 0 and result.stdout_bytes == data


def test_download_refuses_jobs_without_a_whole_file(
    invoke: Invoke,
    jobs: BatchJobs,
    make_shop: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    refused(invoke("download", "batch_nope"), "Batch job with id batch_nope was not found")
    words = jobs.create("words", {"words": ["a"]})
    jobs.run_until_idle(timeout=10)
    refused(invoke("download", words.id), f"Batch job {words.id} (words) has no file")
    monkeypatch.setenv("BATCHJOBS_CSV_EXPORT_DATABASES", json.dumps({"shop": str(make_shop())}))
    dry = invoke("run", "csv-export", "--dry-run", "--set", "table=products").stdout.strip()
    refused(invoke("download", dry), f"Batch job {dry} is pre_processed")
    done = invoke("run", "csv-export", "--set", "table=products").stdout.strip()
    jobs.files.delete(f"exports/{done}.csv")
    refused(invoke("download", done), f"The file of batch job {done} (exports/{done}.csv) is gone")
    assert list((tmp_path / "here").iterdir()) == []  # no empty file left behind
    nowhere = tmp_path / "missing" / "out.csv"
    refused(invoke("download", done, "-o", str(nowhere)), "The file of batch job")
    ok = invoke("run", "csv-export", "--set", "table=products").stdout.strip()
    result = invoke("download", ok, "-o", str(nowhere))
    refused(result, f"Cannot write {nowhere}: No such file or directory")
    assert len(result.stderr.splitlines()) == 1
