"""csv-import: validation with line numbers, both error policies, dry runs, upserts."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchjobs import BatchJob, BatchJobs, InvalidDataError, JobDraft, Status
from batchjobs.strategies.csv_import import ENV_DATABASES, ENV_PATHS, CsvImport
from tests.conftest import shop_rows
from tests.test_builtin_strategies import shop_csv, table_rows

HEADER = "id,sku,name,price,qty,photo"


def run_import(
    jobs: BatchJobs, text: str | bytes, dry_run: bool = False, **context: Any
) -> BatchJob:
    data = text.encode() if isinstance(text, str) else text
    jobs.files.put("imports/in.csv", [data])
    job = jobs.create(
        "csv-import",
        {"table": "products_copy", "file_key": "imports/in.csv", **context},
        dry_run=dry_run,
    )
    jobs.run_until_idle(timeout=20)
    return jobs.retrieve(job.id)


def lines(*rows: str) -> str:
    return "\r\n".join(rows) + "\r\n"


def test_an_export_imports_back_into_another_table(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=45)
    jobs = csv_jobs(shop)
    export = jobs.create("csv-export", {"table": "products"})
    jobs.run_until_idle(timeout=10)
    key = jobs.retrieve(export.id).result["file_key"]
    job = jobs.create("csv-import", {"table": "products_copy", "file_key": key, "chunk_size": 10})
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.COMPLETED, job.result
    assert job.result["imported"] == job.result["count"] == 45
    # CSV has one empty value: an empty name comes back as NULL.
    expected = [(*r[:2], r[2] or None, *r[3:]) for r in table_rows(shop, "products")]
    assert table_rows(shop, "products_copy") == expected
    assert job.context == {
        "table": "products_copy",
        "file_key": key,
        "chunk_size": 10,
        "database": "shop",
        "key": "id",
        "on_error": "fail",
    }


def test_a_dry_run_previews_creates_and_updates_then_waits(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    conn = sqlite3.connect(shop)
    with conn:
        conn.executemany(
            "INSERT INTO products_copy VALUES (?, ?, ?, ?, ?, ?)",
            [(i, f"OLD-{i}", "old", 1.0, 1, None) for i in (2, 4, 6)],
        )
    conn.close()
    job = run_import(jobs, shop_csv(shop_rows(10)), dry_run=True)
    assert job.status == Status.PRE_PROCESSED
    assert job.result["to_create"] == 7 and job.result["to_update"] == 3
    assert [d["message"] for d in job.result["stat_descriptors"]] == [
        "7 rows will be created in shop.products_copy",
        "3 rows will be updated in shop.products_copy",
    ]
    assert [r[1] for r in table_rows(shop, "products_copy")] == ["OLD-2", "OLD-4", "OLD-6"]
    jobs.confirm(job.id)
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status.COMPLETED
    assert [r[1] for r in table_rows(shop, "products_copy")] == [
        f"SKU-{i:05d}" for i in range(1, 11)
    ]


BAD = lines(
    HEADER,
    "1,SKU-1,fine,1.5,1,",
    '2,SKU-2,"spans',
    'two lines",2,2,',
    "3,SKU-3,bad qty,3,1.5,",
    "",
    "4,SKU-4,bad price,cheap,4,",
    ",SKU-5,no key,5,5,",
    "6,SKU-6,too few fields",
    "7,SKU-7,big,7,99999999999999999999,",
    "8,SKU-8,bad photo,8,8,xyz",
    "9,,no sku,9,9,",
    "10,SKU-10,fine,10,10,0aff",
)
BAD_ERRORS = [
    (5, "qty", "'1.5' is not an integer"),
    (7, "price", "'cheap' is not a number"),
    (8, "id", "a value is required"),
    (9, None, "3 fields where the header has 6"),
    (10, "qty", "'99999999999999999999' is out of range for an integer"),
    (11, "photo", "'xyz' is not hexadecimal bytes"),
]


def row_errors(job: BatchJob) -> list[tuple[int, str | None, str]]:
    return [
        (e["line"], e["column"], e["message"].split(": ", 1)[1])
        for e in job.result.get("errors", [])
        if e["code"] == "invalid_row"
    ]


def test_on_error_fail_reports_every_bad_row_and_writes_nothing(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    job = run_import(jobs, BAD)
    assert job.status == Status.FAILED
    assert row_errors(job) == BAD_ERRORS
    first = job.result["errors"][0]
    assert first == {
        "message": "line 5, column 'qty': '1.5' is not an integer",
        "code": "invalid_row",
        "line": 5,
        "column": "qty",
    }
    assert job.result["errors"][-1]["message"].startswith("6 invalid rows in the CSV file")
    assert job.result["invalid_count"] == 6
    assert table_rows(shop, "products_copy") == []


def test_on_error_skip_imports_the_valid_rows_and_reports_the_rest(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    job = run_import(jobs, BAD, on_error="skip", chunk_size=3)
    assert job.status == Status.COMPLETED, job.result
    assert row_errors(job) == BAD_ERRORS
    assert job.result["invalid_count"] == job.result["error_count"] == 6
    assert job.result["count"] == 10 and job.result["imported"] == 4
    assert job.result["stat_descriptors"][-1]["message"] == "6 invalid rows will be skipped"
    assert table_rows(shop, "products_copy") == [
        (1, "SKU-1", "fine", 1.5, 1, None),
        (2, "SKU-2", "spans\r\ntwo lines", 2.0, 2, None),
        (9, "", "no sku", 9.0, 9, None),  # '' is a value in a NOT NULL text column
        (10, "SKU-10", "fine", 10.0, 10, b"\x0a\xff"),
    ]


def test_row_errors_are_bounded_and_counted(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = csv_jobs(make_shop(rows=0))
    rows = [f"{i},SKU-{i},x,{'bad' if i % 2 else 1},1," for i in range(1, 241)]
    job = run_import(jobs, lines(HEADER, *rows), on_error="skip")
    assert job.status == Status.COMPLETED
    assert len(job.result["errors"]) == 50
    assert job.result["invalid_count"] == job.result["error_count"] == 120
    assert job.result["errors"][-1]["line"] == 100


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the CSV file is empty"),
        (lines("id,sku,colour"), "'colour' is not a column of table 'products_copy'"),
        (lines("id,sku,SKU"), "names column 'sku' twice"),
        (lines("sku,name"), "the header has no 'id' column"),
        (b"id,sku\r\n1,\xff\xfe\r\n", "not valid CSV (UTF-8)"),
        (lines("id,sku", '1,"unclosed'), "not valid CSV"),
    ],
)
def test_a_file_that_does_not_fit_the_table_fails_the_job(
    csv_jobs: Callable[..., BatchJobs],
    make_shop: Callable[..., Path],
    text: str | bytes,
    message: str,
) -> None:
    jobs = csv_jobs(make_shop(rows=0))
    job = run_import(jobs, text, on_error="skip")
    assert job.status == Status.FAILED
    assert message in job.result["errors"][-1]["message"]


def test_columns_a_new_row_needs_are_only_required_to_create(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    conn = sqlite3.connect(shop)
    with conn:
        conn.execute("INSERT INTO products_copy (id, sku) VALUES (1, 'KEEP')")
    conn.close()
    job = run_import(jobs, lines("id,name", "1,renamed", "2,new"), on_error="skip")
    assert job.status == Status.COMPLETED
    assert row_errors(job) == [(3, "sku", "the file has no column 'sku', which a new row needs")]
    assert table_rows(shop, "products_copy") == [(1, "KEEP", "renamed", None, 0, None)]


def test_upserts_by_another_unique_column(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    conn = sqlite3.connect(shop)
    with conn:
        conn.execute("INSERT INTO products_copy (id, sku, qty) VALUES (7, 'A', 1)")
    conn.close()
    job = run_import(jobs, lines("sku,qty", "A,5", "B,6"), key="sku")
    assert job.status == Status.COMPLETED, job.result
    assert job.result["to_update"] == 1 and job.result["to_create"] == 1
    assert [(r[0], r[1], r[4]) for r in table_rows(shop, "products_copy")] == [
        (7, "A", 5),
        (8, "B", 6),
    ]


def test_imports_from_an_allowed_directory_and_never_through_a_link(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path], tmp_path: Path
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    source = tmp_path / "incoming" / "products.csv"
    source.write_bytes(shop_csv(shop_rows(3)))
    (tmp_path / "secret.csv").write_bytes(shop_csv(shop_rows(5)))
    (tmp_path / "incoming" / "link.csv").symlink_to(tmp_path / "secret.csv")
    with pytest.raises(InvalidDataError, match="outside the directories"):
        jobs.create(
            "csv-import", {"table": "products_copy", "path": str(source.parent / "link.csv")}
        )
    job = jobs.create("csv-import", {"table": "products_copy", "path": str(source)})
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status.COMPLETED
    assert len(table_rows(shop, "products_copy")) == 3


def test_a_file_changed_after_validation_is_not_imported(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    job = run_import(jobs, shop_csv(shop_rows(3)), dry_run=True)
    assert job.status == Status.PRE_PROCESSED
    jobs.files.put("imports/in.csv", [shop_csv(shop_rows(3)) + b"4,SKU-4,sneaked in,1,1,\r\n"])
    jobs.confirm(job.id)
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.FAILED
    assert "changed after it was validated" in job.result["errors"][-1]["message"]
    assert table_rows(shop, "products_copy") == []


def test_a_missing_file_fails_the_job(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = csv_jobs(make_shop(rows=0))
    job = jobs.create("csv-import", {"table": "products_copy", "file_key": "nothing/here.csv"})
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.FAILED
    assert job.result["errors"][-1]["message"] == "no file under key 'nothing/here.csv'"


def test_the_template_is_the_tables_header(
    make_shop: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shop = make_shop()
    only = CsvImport(databases={"shop": {"path": shop, "tables": ["products_copy"]}})
    assert only.build_template() == HEADER + "\r\n"
    both = CsvImport(databases={"shop": shop})
    with pytest.raises(InvalidDataError, match="shop.products, shop.products_copy"):
        both.build_template()
    assert both.build_template(table="products") == HEADER + "\r\n"
    monkeypatch.setenv(ENV_DATABASES, f'{{"shop": {{"path": "{shop}", "tables": ["products"]}}}}')
    monkeypatch.setenv(ENV_PATHS, str(tmp_path))
    from_env = CsvImport()
    assert from_env.build_template() == HEADER + "\r\n"
    assert from_env.paths == (tmp_path.resolve(),)
    with pytest.raises(InvalidDataError, match="'products_copy' of database 'shop' is not allowed"):
        from_env.prepare(JobDraft("csv-import", {"table": "products_copy"}))


def test_line_numbers_stay_right_when_a_later_batch_spans_lines(
    csv_jobs: Callable[..., BatchJobs],
    make_shop: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("batchjobs.strategies.csv_import.VALIDATION_BATCH", 4)
    jobs = csv_jobs(make_shop(rows=0))
    rows = [f"{i},SKU-{i},x,{'bad' if i in (2, 7, 11) else 1},1," for i in range(1, 12)]
    rows[7] = '8,SKU-8,"two\nlines",1,1,'
    job = run_import(jobs, lines(HEADER, *rows), on_error="skip")
    assert job.status == Status.COMPLETED
    assert row_errors(job) == [
        (3, "price", "'bad' is not a number"),
        (8, "price", "'bad' is not a number"),
        (13, "price", "'bad' is not a number"),
    ]
    assert job.result["error_count"] == job.result["invalid_count"] == 3
