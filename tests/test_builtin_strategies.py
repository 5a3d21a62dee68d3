"""The contract every built-in strategy keeps, one test parametrised over all of them.

Each case says how to build the strategy on an allow-list, a valid context,
contexts that must be refused, and what a finished job produced (the export's
bytes, the imported table's rows).
"""

from __future__ import annotations

import copy
import math
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from batchjobs import BatchJob, BatchJobs, BatchJobStrategy, InvalidDataError, JobRun, Status
from batchjobs.strategies.csv_export import CsvExport
from batchjobs.strategies.csv_import import CsvImport
from tests.conftest import shop_rows

ROWS = 40
CHUNK = 7


def copy_line(values: Sequence[Any]) -> str:
    """One line of CSV in PostgreSQL's COPY CSV convention, written out by hand: NULL
    is an empty unquoted field, a field quoted when it is empty or holds a comma,
    a quote or a line break; BLOBs as hexadecimal."""

    def field(value: Any) -> str:
        if value is None:
            return ""
        text = value.hex() if isinstance(value, bytes) else str(value)
        if text == "" or any(c in text for c in ',"\r\n'):
            return '"' + text.replace('"', '""') + '"'
        return text

    return ",".join(map(field, values)) + "\r\n"


def shop_csv(rows: list[tuple[Any, ...]], extra: list[str] | None = None) -> bytes:
    """The CSV of ``rows`` of the shop schema, as csv-export writes it."""
    lines = [copy_line(["id", "sku", "name", "price", "qty", "photo"])]
    lines.extend(copy_line(row) for row in rows)
    lines.extend(line + "\r\n" for line in extra or [])
    return "".join(lines).encode()


def table_rows(shop: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(shop)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    finally:
        conn.close()


@dataclass
class Case:
    """How the contract tests drive one built-in strategy."""

    type: str
    build: Callable[[Path, Path], BatchJobStrategy]
    context: Callable[[BatchJobs, Path], dict[str, Any]]
    outcome: Callable[[BatchJobs, BatchJob, Path], Any]
    bad: list[tuple[Callable[[Path], dict[str, Any]], str]] = field(default_factory=list)


def _export_outcome(jobs: BatchJobs, job: BatchJob, shop: Path) -> bytes:
    assert job.result["file_size"] == jobs.files.size(job.result["file_key"])
    with jobs.files.open_read(job.result["file_key"]) as source:
        return source.read()


def _import_context(jobs: BatchJobs, tmp_path: Path) -> dict[str, Any]:
    # Two invalid rows among them, skipped; the first rows already exist and are updated.
    data = shop_csv(shop_rows(ROWS), extra=["999,SKU-bad,x,not a price,1,", "1000,,x,1,1,"])
    jobs.files.put("imports/products.csv", [data])
    strategy = jobs.strategy("csv-import")
    assert isinstance(strategy, CsvImport)
    with closing(sqlite3.connect(strategy.databases["shop"].path)) as conn, conn:
        conn.executemany(
            "INSERT INTO products_copy VALUES (?, ?, ?, ?, ?, ?)",
            [(i, f"OLD-{i}", "old", 0, 0, None) for i in range(1, 6)],
        )
    return {"table": "products_copy", "file_key": "imports/products.csv", "on_error": "skip"}


COMMON_BAD: list[tuple[Callable[[Path], dict[str, Any]], str]] = [
    (lambda tmp: {"database": "other", "table": "products"}, "database 'other' is not allowed"),
    (lambda tmp: {"database": 1, "table": "products"}, "is not allowed"),
    (lambda tmp: {"table": "users"}, "has no table 'users'"),
    (lambda tmp: {"table": "products; DROP TABLE products"}, "has no table"),
    (lambda tmp: {"table": "sqlite_master"}, "has no table"),
    (lambda tmp: {}, "context.table"),
    (lambda tmp: {"table": "products", "where": "1=1"}, "unknown context key"),
    (lambda tmp: {"table": "products", "sql": "DELETE FROM products"}, "unknown context key"),
]

CASES = [
    Case(
        type="csv-export",
        build=lambda shop, incoming: CsvExport(databases={"shop": shop}),
        context=lambda jobs, tmp: {"table": "products", "order_by": "-price"},
        outcome=_export_outcome,
        bad=[
            (lambda tmp: {"table": "products", "columns": ['name" FROM products --']}, "no column"),
            (lambda tmp: {"table": "products", "columns": "id, name"}, "list of names"),
            (lambda tmp: {"table": "products", "filter": {"1=1 OR name": "x"}}, "no column"),
            (lambda tmp: {"table": "products", "filter": {"name": {"$ne": 1}}}, "must be a string"),
            (lambda tmp: {"table": "products", "filter": "price > 0"}, "must be an object"),
            (lambda tmp: {"table": "products", "order_by": "price; DROP TABLE x"}, "no column"),
        ],
    ),
    Case(
        type="csv-import",
        build=lambda shop, incoming: CsvImport(
            databases={"shop": {"path": shop, "tables": "*"}}, paths=[incoming]
        ),
        context=_import_context,
        outcome=lambda jobs, job, shop: table_rows(shop, "products_copy"),
        bad=[
            (lambda tmp: {"table": "products_copy", "path": "../../etc/passwd"}, "outside"),
            (lambda tmp: {"table": "products_copy", "path": "/etc/passwd"}, "outside"),
            (
                lambda tmp: {"table": "products_copy", "path": str(tmp / "incoming/../shop.db")},
                "outside",
            ),
            (lambda tmp: {"table": "products_copy", "path": str(tmp / "incoming/x")}, "no file"),
            (lambda tmp: {"table": "products_copy", "file_key": "../shop.db"}, "invalid file key"),
            (lambda tmp: {"table": "products_copy", "file_key": "/etc/passwd"}, "invalid file"),
            (lambda tmp: {"table": "products_copy"}, "exactly one of"),
            (
                lambda tmp: {"table": "products_copy", "file_key": "a.csv", "path": "/a.csv"},
                "exactly one of",
            ),
            (
                lambda tmp: {"table": "products_copy", "file_key": "a.csv", "key": "sku; DROP"},
                "no key column",
            ),
            (
                lambda tmp: {"table": "products_copy", "file_key": "a.csv", "key": "name"},
                "unique index",
            ),
            (
                lambda tmp: {"table": "products_copy", "file_key": "a.csv", "on_error": "ignore"},
                "on_error",
            ),
        ],
    ),
]


@pytest.fixture(params=CASES, ids=[c.type for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


def test_every_builtin_strategy_is_an_entry_point(jobs: BatchJobs) -> None:
    for c in CASES:
        assert c.type in jobs.registry.types
        assert jobs.registry.origin(c.type) == "entry point (batchjobs)"


def test_prepare_refuses_contexts_outside_the_allow_list(
    case: Case, csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path], tmp_path: Path
) -> None:
    shop = make_shop(rows=ROWS)
    jobs = csv_jobs(shop)
    (tmp_path / "incoming" / "x").mkdir()
    for bad, message in COMMON_BAD + case.bad:
        with pytest.raises(InvalidDataError, match=message) as refusal:
            jobs.create(case.type, bad(tmp_path))
        assert refusal.value.message.startswith(f"{case.type}: "), refusal.value.message
    assert jobs.list_and_count() == ([], 0)
    assert len(table_rows(shop, "products")) == ROWS


def test_a_strategy_without_an_allow_list_refuses_everything(
    case: Case, make_jobs: Callable[..., BatchJobs], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "BATCHJOBS_CSV_EXPORT_DATABASES",
        "BATCHJOBS_CSV_IMPORT_DATABASES",
        "BATCHJOBS_CSV_IMPORT_PATHS",
    ):
        monkeypatch.delenv(name, raising=False)
    jobs = make_jobs()
    with pytest.raises(InvalidDataError) as refusal:
        jobs.create(case.type, {"table": "products"})
    env = f"BATCHJOBS_{case.type.replace('-', '_').upper()}_DATABASES"
    assert refusal.value.message == (
        f"{case.type}: the application allows no database; register the strategy "
        f"with databases={{...}} or set {env}"
    )


def test_pre_process_is_idempotent(
    case: Case, csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path], tmp_path: Path
) -> None:
    shop = make_shop(rows=ROWS)
    jobs = csv_jobs(shop)
    job = jobs.create(case.type, case.context(jobs, tmp_path), dry_run=True)
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.PRE_PROCESSED
    assert job.result["count"] >= ROWS and job.result["stat_descriptors"]
    files_before = sorted(jobs.files.keys())
    tables_before = table_rows(shop, "products"), table_rows(shop, "products_copy")
    for _ in range(2):  # again, as after a crash, on the stored result
        run = JobRun(job, files=jobs.files)
        jobs.strategy(case.type).pre_process(run)
        assert run.result == job.result
    assert sorted(jobs.files.keys()) == files_before  # nothing written
    assert (table_rows(shop, "products"), table_rows(shop, "products_copy")) == tables_before
    jobs.confirm(job.id)
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status.COMPLETED


def _crash_after_chunk(strategy: BatchJobStrategy, at: int) -> BatchJobStrategy:
    """The same strategy, but the chunk starting at ``at`` dies after doing its work.

    Like a kill -9 between a chunk's work and its checkpoint: the output is
    written, the cursor and result are left as the last checkpoint saved them.
    """
    crashed: list[int] = []
    base = type(strategy)

    class Crashing(base):  # type: ignore[valid-type,misc]
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            cursor, result = copy.deepcopy(run.cursor), copy.deepcopy(run.result)
            advanced = super().process_chunk(run, start, size)
            if start == at and not crashed:
                crashed.append(start)
                run.cursor, run.result = cursor, result
                raise RuntimeError(f"died after the chunk at {start}")
            return advanced

    crashing = copy.copy(strategy)
    crashing.__class__ = Crashing
    return crashing


def test_resuming_from_every_checkpoint_gives_the_result_of_one_run(
    case: Case, csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path], tmp_path: Path
) -> None:
    shop = make_shop(rows=ROWS)
    jobs = csv_jobs(shop)
    context = {**case.context(jobs, tmp_path), "chunk_size": CHUNK}
    job = jobs.create(case.type, context)
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.COMPLETED, job.result
    expected = case.outcome(jobs, job, shop)
    chunks = math.ceil(job.result["count"] / CHUNK)
    assert chunks >= 5
    for n in range(chunks):
        shop_n = make_shop(rows=ROWS, name=f"shop{n}.db")
        jobs_n = csv_jobs(shop_n, tmp_path / f"jobs{n}.db")
        context = {**case.context(jobs_n, tmp_path), "chunk_size": CHUNK}
        jobs_n.register(_crash_after_chunk(jobs_n.strategy(case.type), at=n * CHUNK))
        resumed = jobs_n.create(case.type, context)
        jobs_n.run_until_idle(timeout=10)
        assert jobs_n.retrieve(resumed.id).status == Status.FAILED
        jobs_n.retry(resumed.id)
        jobs_n.run_until_idle(timeout=10)
        resumed = jobs_n.retrieve(resumed.id)
        assert resumed.status == Status.COMPLETED, (n, resumed.result)
        assert resumed.result["advancement_count"] == job.result["advancement_count"]
        assert case.outcome(jobs_n, resumed, shop_n) == expected, f"resumed at chunk {n}"


@pytest.mark.slow
def test_the_readme_csv_transcript_gives_the_same_results(tmp_path: Path) -> None:
    from tests.test_docs import check_transcript

    check_transcript("CSV export and import", tmp_path)
