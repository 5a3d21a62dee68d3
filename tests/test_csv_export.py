"""csv-export: what it writes, the keyset it reads with, cancel, a kill -9 mid-file."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from batchjobs import BatchJob, BatchJobs, InvalidDataError, Status
from batchjobs.strategies.csv_export import ENV_DATABASES, CsvExport
from tests.conftest import shop_rows
from tests.test_builtin_strategies import copy_line, shop_csv

pytestmark = pytest.mark.backends("sqlite", "postgres")

ROOT = Path(__file__).resolve().parent.parent


def export(jobs: BatchJobs, context: dict[str, Any]) -> tuple[BatchJob, bytes]:
    job = jobs.create("csv-export", context)
    jobs.run_until_idle(timeout=20)
    job = jobs.retrieve(job.id)
    assert job.status == Status.COMPLETED, job.result
    with jobs.files.open_read(job.result["file_key"]) as source:
        return job, source.read()


def query_csv(shop: Path, sql: str) -> bytes:
    """The CSV of an SQL query over the shop, the way csv-export should write it."""
    conn = sqlite3.connect(shop)
    try:
        cursor = conn.execute(sql)
        lines = [copy_line([d[0] for d in cursor.description])]
        lines.extend(map(copy_line, cursor))
    finally:
        conn.close()
    return "".join(lines).encode()


def test_exports_a_whole_table_with_its_awkward_values(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=30)
    jobs = csv_jobs(shop)
    job, data = export(jobs, {"table": "products", "chunk_size": 4})
    assert data == shop_csv(shop_rows(30))
    assert job.result["file_key"] == f"exports/{job.id}.csv"
    assert job.result["file_size"] == len(data)
    assert job.result["count"] == job.result["advancement_count"] == 30
    assert job.result["stat_descriptors"] == [
        {
            "key": "csv-export-count",
            "name": "Rows to export",
            "message": "30 rows of shop.products will be exported",
        }
    ]
    assert job.context["database"] == "shop"


@pytest.mark.parametrize(
    ("context", "sql"),
    [
        (
            {"columns": ["sku", "price"], "order_by": "-price"},
            "SELECT sku, price FROM products ORDER BY price DESC, id DESC",
        ),
        (
            {"columns": ["id", "price"], "order_by": "price"},
            "SELECT id, price FROM products ORDER BY price, id",
        ),
        (
            {"columns": ["name", "qty"], "order_by": "name", "filter": {"qty": 3}},
            "SELECT name, qty FROM products WHERE qty = 3 ORDER BY name, id",
        ),
        (
            {"columns": ["ID", "Price"], "filter": {"price": None}},
            "SELECT id, price FROM products WHERE price IS NULL ORDER BY id",
        ),
        (
            {"order_by": "-name", "filter": {"name": "two\nlines"}},
            "SELECT * FROM products WHERE name = 'two\nlines' ORDER BY name DESC, id DESC",
        ),
        ({"filter": {"qty": 99}}, "SELECT * FROM products WHERE qty = 99"),
    ],
)
def test_columns_filter_and_order_across_chunks_and_nulls(
    csv_jobs: Callable[..., BatchJobs],
    make_shop: Callable[..., Path],
    context: dict[str, Any],
    sql: str,
) -> None:
    shop = make_shop(rows=60)
    jobs = csv_jobs(shop)
    job, data = export(jobs, {"table": "products", "chunk_size": 3, **context})
    assert data == query_csv(shop, sql)
    assert job.result["count"] == job.result["advancement_count"]


def test_the_keyset_is_read_through_an_index_never_with_offset(
    make_shop: Callable[..., Path],
) -> None:
    shop = make_shop(rows=10)
    strategy = CsvExport(databases={"shop": shop})
    with closing(sqlite3.connect(shop)) as conn:
        for context, last in [({}, [4]), ({"order_by": "sku"}, ["SKU-00004", 4])]:
            plan = strategy._plan({"table": "products", **context})
            assert [r[0] for r in plan.fetch(conn, last, 3)] == [5, 6, 7]
            sql, params = plan.select(last, 3)
            assert "OFFSET" not in sql.upper()
            steps = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            assert any(step.startswith("SEARCH") for step in steps), steps
            assert not any("TEMP B-TREE" in step for step in steps), steps


def test_tables_without_rowid_or_with_a_rowid_column(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=1)
    with closing(sqlite3.connect(shop)) as conn, conn:
        conn.execute("CREATE TABLE pairs (a TEXT, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID")
        conn.executemany(
            "INSERT INTO pairs VALUES (?, ?, ?)",
            [(f"k{i % 4}", i, x) for i, x in enumerate([1, 2.5, "t", None, b"\x01"] * 3)],
        )
        conn.execute('CREATE TABLE odd (rowid TEXT, "we""ird" INTEGER)')
        conn.executemany("INSERT INTO odd VALUES (?, ?)", [(f"r{i}", i % 3) for i in range(10)])
    jobs = csv_jobs(shop)
    _, data = export(jobs, {"table": "pairs", "chunk_size": 2})
    assert data == query_csv(shop, "SELECT * FROM pairs ORDER BY a, b")
    _, data = export(jobs, {"table": "odd", "chunk_size": 3, "order_by": 'we"ird'})
    assert data == query_csv(shop, 'SELECT * FROM odd ORDER BY "we""ird", _rowid_')
    _, data = export(jobs, {"table": "pairs", "chunk_size": 2, "order_by": "-v"})
    assert data == query_csv(shop, "SELECT * FROM pairs ORDER BY v DESC, a DESC, b DESC")


def test_an_empty_export_is_the_header_alone(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = csv_jobs(make_shop(rows=5))
    job, data = export(jobs, {"table": "products_copy"})
    assert data == b"id,sku,name,price,qty,photo\r\n"
    assert job.result["count"] == 0 and job.result["file_size"] == len(data)


def test_rows_added_or_removed_while_it_runs_are_followed(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=20)
    jobs = csv_jobs(shop)
    checkpoints: list[int] = []

    def change_the_table(sender: Any, *, job: BatchJob, **extra: Any) -> None:
        checkpoints.append(job.result.get("advancement_count", 0))
        if len(checkpoints) == 2:
            with closing(sqlite3.connect(shop)) as conn, conn:
                conn.execute("DELETE FROM products WHERE id IN (18, 19)")
                conn.executemany(
                    "INSERT INTO products VALUES (?, ?, ?, ?, ?, ?)", shop_rows(7, start=100)
                )

    jobs.subscribe("batch.updated", change_the_table)
    job, data = export(jobs, {"table": "products", "chunk_size": 5})
    assert data == query_csv(shop, "SELECT * FROM products ORDER BY id")
    assert job.result["count"] == job.result["advancement_count"] == 25


def test_the_allow_list_can_name_tables(
    make_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop()
    jobs = make_jobs()
    jobs.register(CsvExport(databases={"shop": {"path": str(shop), "tables": ["Products"]}}))
    with pytest.raises(InvalidDataError, match="'products_copy' of database 'shop' is not allowed"):
        jobs.create("csv-export", {"table": "products_copy"})
    assert jobs.create("csv-export", {"table": "PRODUCTS"}).context["table"] == "products"
    jobs.register(CsvExport(databases={"shop": {"path": str(shop), "tables": "*"}}))
    assert jobs.create("csv-export", {"table": "products_copy"}).context["table"] == "products_copy"


def test_the_default_instance_reads_its_allow_list_from_the_environment(
    make_jobs: Callable[..., BatchJobs],
    make_shop: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shop = make_shop(rows=3)
    monkeypatch.setenv(ENV_DATABASES, json.dumps({"shop": str(shop)}))
    jobs = make_jobs()
    _, data = export(jobs, {"table": "products"})
    assert data == shop_csv(shop_rows(3))
    for bad in ("[1]", "{not json", '{"shop": 3}', '{"shop": {"tables": []}}'):
        monkeypatch.setenv(ENV_DATABASES, bad)
        with pytest.raises(ValueError) as refusal:
            CsvExport()
        assert str(refusal.value).startswith(f"csv-export: {ENV_DATABASES}")  # which one is bad


def test_a_message_names_the_strategy_wherever_it_comes_from(
    make_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = make_jobs()
    jobs.register(CsvExport(databases={"shop": make_shop()}))
    with pytest.raises(InvalidDataError) as refusal:  # found by the schema's Table
        jobs.create("csv-export", {"table": "products", "columns": ["nope"]})
    assert refusal.value.message == "csv-export: table 'products' has no column 'nope'"
    assert jobs.list_and_count() == ([], 0)


def test_a_database_that_is_gone_is_refused(
    make_jobs: Callable[..., BatchJobs], tmp_path: Path
) -> None:
    jobs = make_jobs()
    jobs.register(CsvExport(databases={"shop": tmp_path / "missing.db"}))
    with pytest.raises(InvalidDataError, match="does not exist"):
        jobs.create("csv-export", {"table": "products"})
    assert not (tmp_path / "missing.db").exists()


def test_a_canceled_export_deletes_its_partial_file(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = csv_jobs(make_shop(rows=50))
    job = jobs.create("csv-export", {"table": "products", "chunk_size": 5})
    seen: list[bool] = []

    def cancel_after_the_first_checkpoint(sender: Any, *, job: BatchJob, **extra: Any) -> None:
        if job.result.get("advancement_count") and not seen:
            seen.append(jobs.files.exists(job.result["file_key"]))
            jobs.cancel(job.id)

    jobs.subscribe("batch.updated", cancel_after_the_first_checkpoint)
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.CANCELED
    assert seen == [True]
    assert not jobs.files.exists(f"exports/{job.id}.csv")
    assert list(jobs.files.keys()) == []


@pytest.mark.slow
@pytest.mark.backends("sqlite")  # reads the saved cursor from the file
def test_an_export_killed_mid_file_resumes_to_the_same_bytes(
    csv_jobs: Callable[..., BatchJobs],
    make_jobs: Callable[..., BatchJobs],
    make_shop: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shop = make_shop(rows=3000)
    context = {"table": "products", "order_by": "name", "chunk_size": 100}
    _, expected = export(csv_jobs(shop, tmp_path / "reference.db"), context)
    monkeypatch.setenv(ENV_DATABASES, json.dumps({"shop": str(shop)}))
    db = tmp_path / "jobs.db"
    jobs = make_jobs(db)
    job = jobs.create("csv-export", context)
    # Closed however the test ends: a file left open would be reported by a later test.
    with (tmp_path / "worker.log").open("w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "tests.csv_worker", str(db), "--pause", "0.03"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert first.stdout is not None and first.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 20
            while jobs.retrieve(job.id).result.get("advancement_count", 0) < 800:
                assert time.monotonic() < deadline, "the export did not start"
                time.sleep(0.01)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
            first.stdout.close()  # type: ignore[union-attr]
        killed = jobs.retrieve(job.id)
        assert killed.status == Status.PROCESSING
        with closing(sqlite3.connect(db)) as connection:
            (cursor,) = connection.execute(
                "SELECT cursor FROM batch_jobs WHERE id = ?", [job.id]
            ).fetchone()
        key = killed.result["file_key"]
        assert jobs.files.size(key) >= json.loads(cursor)["offset"] > 0
        assert jobs.files.size(key) < len(expected)
        # This interpreter's batchjobs, never whichever is first on PATH.
        second = subprocess.run(
            [sys.executable, "-m", "batchjobs", "--db", str(db), "worker", "--until-idle"]
            + ["--poll-interval", "0.1"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
            timeout=60,
        )
    assert second.returncode == 0, (tmp_path / "worker.log").read_text()
    done = jobs.retrieve(job.id)
    assert done.status == Status.COMPLETED, done.result
    with jobs.files.open_read(key) as source:
        assert source.read() == expected
    assert done.result["file_size"] == len(expected)
    assert done.result["advancement_count"] == 3000
