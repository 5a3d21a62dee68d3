"""``migrate``: an SQLite file's jobs and schedules moved into another database, resumable."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from batchjobs import BatchJobs, NotAllowedError, Status, migrate
from batchjobs.cli import cli
from batchjobs.errors import StoreCorruptError, StoreUnreachableError
from batchjobs.models import utcnow
from batchjobs.store import Checkpoint, ClaimRequest, open_store

pytestmark = pytest.mark.backends("sqlite", "postgres")


@pytest.fixture
def source(tmp_path: Path, make_jobs: Callable[..., BatchJobs]) -> tuple[Path, dict[str, str]]:
    """An SQLite file with a finished job, a dry run, a half-done job and a schedule."""
    path = tmp_path / "old.db"
    jobs = make_jobs(path)
    done = jobs.create("words", {"words": ["a"]}, created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    preview = jobs.create("words", {"words": ["b"]}, dry_run=True)
    jobs.run_until_idle(timeout=10)
    half = jobs.create("ledger", {"n": 30, "cursor": True})
    now = utcnow()
    (claim,) = jobs.store.claim(ClaimRequest("gone", ("ledger",), now, now + timedelta(hours=1)))
    jobs.store.save(
        Checkpoint(
            claim.lease,
            Status.CREATED,
            now,
            steps=((Status.PROCESSING, now),),
            result={"count": 30, "advancement_count": 10},
            cursor={"next": 10},
            release=True,
        )
    )
    jobs.schedule("nightly", "words", {"words": ["n"]}, cron="0 2 * * *")
    return path, {"done": done.id, "preview": preview.id, "half": half.id}


def test_migrate_moves_jobs_checkpoints_and_schedules_once(
    source: tuple[Path, dict[str, str]], db_url: str | Path, make_jobs: Callable[..., BatchJobs]
) -> None:
    path, ids = source
    done = migrate(path, db_url)
    assert (done.jobs, done.jobs_written, done.schedules, done.schedules_written) == (3, 3, 1, 1)
    old, new = open_store(path), open_store(db_url)
    try:
        for id in ids.values():
            assert new.get(id) == old.get(id)
        assert [s.name for s in new.list_schedules()] == ["nightly"]
        now = utcnow()
        (claim,) = new.claim(ClaimRequest("w", ("ledger",), now, now + timedelta(seconds=30)))
        assert claim.job.id == ids["half"] and claim.cursor == {"next": 10}
    finally:
        old.close()
        new.close()
    again = migrate(path, db_url)  # nothing twice: finishes one cut short
    assert (again.jobs, again.jobs_written, again.schedules_written) == (3, 0, 0)


def test_migrate_refuses_a_job_a_worker_holds_and_writes_nothing(
    source: tuple[Path, dict[str, str]], db_url: str | Path
) -> None:
    path, ids = source
    old = open_store(path)
    now = utcnow()
    old.claim(ClaimRequest("alive", ("ledger",), now, now + timedelta(hours=1)))
    old.close()
    with pytest.raises(NotAllowedError, match=f"Batch job {ids['half']} is held by a worker"):
        migrate(path, db_url)
    new = open_store(db_url)
    try:
        assert new.count() == 0 and new.list_schedules() == []
    finally:
        new.close()
    with pytest.raises(NotAllowedError, match="into itself"):
        migrate(path, path)


def test_the_migrate_command_reports_what_it_copied(
    source: tuple[Path, dict[str, str]], db_url: str | Path
) -> None:
    path, _ = source
    args = ["migrate", "--from", str(path), "--to", str(db_url), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "jobs": 3,
        "jobs_written": 3,
        "schedules": 1,
        "schedules_written": 1,
    }
    assert "Copied 3 of 3 job(s) and 1 of 1 schedule(s)." in result.stderr
    again = CliRunner().invoke(cli, args[:-1])
    assert again.exit_code == 0, again.output
    assert "Copied 0 of 3 job(s) and 0 of 1 schedule(s) (the rest were" in again.stderr
    missing = CliRunner().invoke(cli, ["migrate", "--from", str(path)])
    assert missing.exit_code == 2 and "Missing option '--to'" in missing.stderr


def test_migrate_from_a_file_that_is_not_there_makes_neither_file(tmp_path: Path) -> None:
    missing, target = tmp_path / "typo.db", tmp_path / "new.db"
    with pytest.raises(StoreUnreachableError, match=re.escape(f"No SQLite database at {missing}:")):
        migrate(missing, target)
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(cli, ["migrate", "--from", str(missing), "--to", str(target)])
    assert result.exit_code == 2, result.output
    assert f"No SQLite database at {missing}: nothing to migrate from" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_migrate_into_the_same_file_spelled_another_way_is_refused(
    source: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = source
    monkeypatch.chdir(path.parent)
    before = path.read_bytes()
    os.link(path, path.parent / "linked.db")
    for spelling in (f"./{path.name}", f"sqlite:///{path.name}", str(path), "linked.db"):
        with pytest.raises(NotAllowedError, match="Cannot migrate a database into itself"):
            migrate(path.name, spelling)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "mysql://localhost/jobs", "--to", "new.db"], "Invalid value for '--from': "),
        (["--from", "old.db", "--to", "host=db password=s3cret"], "Invalid value for '--to': a"),
        (["--from", "", "--to", "new.db"], "Invalid value for '--from': is empty"),
    ],
)
def test_the_migrate_command_blames_the_option_of_a_database_it_cannot_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["migrate", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "s3cret" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_migrate_into_one_database_under_both_url_schemes_is_refused_before_connecting() -> None:
    # Port 1 answers nothing: the refusal comes before any connection is tried.
    with pytest.raises(NotAllowedError, match="Cannot migrate a database into itself"):
        migrate("postgres://app@127.0.0.1:1/jobs", "postgresql://app@127.0.0.1:1/jobs")


def test_migrate_from_another_app_s_sqlite_file_writes_nothing_to_it(tmp_path: Path) -> None:
    other, target = tmp_path / "shop.db", tmp_path / "new.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.close()
    before = other.read_bytes()
    with pytest.raises(
        StoreCorruptError, match="is not a batchjobs database .*nothing was written"
    ):
        migrate(other, target)
    assert other.read_bytes() == before  # no table, and its journal mode as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.db"]


def test_migrate_from_another_app_s_postgresql_database_writes_nothing_to_it(
    tmp_path: Path, make_database: Callable[..., str]
) -> None:
    url = make_database(empty=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id integer PRIMARY KEY)")
    with pytest.raises(
        StoreCorruptError, match="is not a batchjobs database .*nothing was written"
    ):
        migrate(url, tmp_path / "new.db")
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == [("customers",)]
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_file_whose_batch_jobs_table_another_program_made_is_left_as_it_was(
    tmp_path: Path,
) -> None:
    other = tmp_path / "shop.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE batch_jobs (sku TEXT, quantity INTEGER)")
    conn.close()
    before = other.read_bytes()
    message = "has a batch_jobs table that batchjobs did not create: it is not a batchjobs"
    with pytest.raises(StoreCorruptError, match=message):
        migrate(other, tmp_path / "new.db")
    with pytest.raises(StoreCorruptError, match=message):
        BatchJobs(other)  # nor is it taken as a database to keep jobs in
    assert other.read_bytes() == before  # its journal mode too (no WAL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.db"]


def test_a_store_that_must_not_create_makes_no_file(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(StoreUnreachableError) as refused:
        open_store(missing, create=False)
    assert str(missing) in refused.value.message and "?mode" not in refused.value.message
    assert list(tmp_path.iterdir()) == []
