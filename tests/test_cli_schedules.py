"""``batchjobs schedule add|list|remove|pause|resume``."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from freezegun import freeze_time

from batchjobs import BatchJobs
from batchjobs.cli import cli
from tests.test_cli import ENV, Invoke, refused


@pytest.fixture
def invoke(db_path: Path) -> Invoke:
    """Run ``batchjobs --db <test db> --app tests.strategies ARGS``; stdout and stderr apart."""

    def run(*args: str) -> Result:
        group = ["--db", str(db_path), "--app", "tests.strategies"]
        return CliRunner(env=ENV).invoke(cli, [*group, *args])

    return run


NOON = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)


def test_add_list_pause_resume_remove(invoke: Invoke, jobs: BatchJobs) -> None:
    with freeze_time(NOON):
        added = invoke(
            "schedule", "add", "nightly", "words", "--cron", "0 2 * * *", "--tz", "Europe/Paris",
            "--set", 'words=["good", "night"]', "--user", "usr_1",
        )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert added.stdout == "nightly\n"
    assert "next fire at 2024-06-02 00:00:00Z" in added.stderr  # 02:00 in Paris, summer
    [stored] = jobs.schedules()
    assert (stored.context, stored.created_by) == ({"words": ["good", "night"]}, "usr_1")

    [job] = jobs.fire_schedules(datetime(2024, 6, 2, tzinfo=timezone.utc))
    listed = invoke("schedule", "list")
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "WHEN", "TZ", "NEXT", "LAST", "JOB", "STATUS"]
    assert row.split() == [
        "nightly", "words", "cron", "0", "2", "*", "*", "*", "Europe/Paris",
        "2024-06-03", "00:00:00Z", job.id, "created",
    ]  # fmt: skip

    assert invoke("schedule", "pause", "nightly").stdout == "nightly paused\n"
    assert "paused" in invoke("schedule", "list").stdout.splitlines()[1].split()
    assert jobs.schedules()[0].is_paused
    resumed = invoke("schedule", "resume", "nightly", "--json")
    assert json.loads(resumed.stdout)["paused_at"] is None

    as_json = json.loads(invoke("schedule", "list", "--json").stdout)
    assert as_json["schedules"][0]["last_job_id"] == job.id
    assert as_json["schedules"][0]["last_job_status"] == "created"

    assert invoke("schedule", "remove", "nightly").stdout == "nightly removed\n"
    assert jobs.schedules() == []
    assert invoke("schedule", "list").stdout == ""
    refused(invoke("schedule", "remove", "nightly"), "Schedule nightly was not found")


def test_add_an_interval_with_a_misfire_policy(invoke: Invoke, jobs: BatchJobs) -> None:
    with freeze_time(NOON):
        added = invoke(
            "schedule", "add", "feed", "words", "--every", "15m", "--misfire", "skip",
            "--context", '{"words": []}', "--dry-run", "--json",
        )  # fmt: skip
    assert added.exit_code == 0, added.output
    shown = json.loads(added.stdout)
    assert (shown["every"], shown["misfire"], shown["dry_run"]) == (900.0, "skip", True)
    assert shown["next_fire_at"] == "2024-06-01T12:15:00+00:00"
    assert "every 15m" in invoke("schedule", "list").stdout


def test_list_names_a_pruned_last_job_and_a_refused_fire(invoke: Invoke, jobs: BatchJobs) -> None:
    with freeze_time(NOON):
        jobs.schedule("bad", "words", {"words": "no"}, every=60)
        jobs.schedule("gone", "words", {"words": []}, every=60)
    made = jobs.fire_schedules(datetime(2024, 6, 1, 12, 1, tzinfo=timezone.utc))
    jobs.store.delete([job.id for job in made])
    listed = invoke("schedule", "list")
    assert listed.stdout.splitlines()[2].split()[-1] == "pruned"
    assert "warning: bad: its last fire made no job: context.words must be" in listed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "0 25 * * *"], "cron '0 25 * * *' is not a valid 5-field crontab"),
        (["--cron", "0 2 * *"], "is not a valid 5-field crontab"),
        (["--cron", "0 2 * * *", "--tz", "Mars/Olympus"], "unknown timezone 'Mars/Olympus'"),
        (["--cron", "0 2 * * *", "--every", "1h"], "either cron or every, not both"),
        ([], "either cron or every, not both or neither"),
        (["--every", "0s"], "every must be positive"),
        (["--every", "soon"], "'soon' is not a duration"),
        (["--every", "1h", "--misfire", "later"], "--misfire"),
    ],
)
def test_bad_schedules_exit_2_with_the_reason_and_write_nothing(
    invoke: Invoke, jobs: BatchJobs, args: list[str], message: str
) -> None:
    result = invoke("schedule", "add", "s", "words", "--set", "words=[]", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""
    assert jobs.schedules() == []


def test_pause_and_resume_an_unknown_schedule_exit_2(invoke: Invoke) -> None:
    refused(invoke("schedule", "pause", "nope"), "Schedule nope was not found")
    refused(invoke("schedule", "resume", "nope"), "Schedule nope was not found")
