"""csv-import: validation with line numbers, both error policies, dry runs, upserts."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sqlite3
import struct
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from random import Random
from typing import Any

import pytest

from batchjobs import BatchJob, BatchJobs, InvalidDataError, JobDraft, NotAllowedError, Status
from batchjobs.files import NOT_OWNER_MESSAGE
from batchjobs.strategies.csv_export import CsvExport
from batchjobs.strategies.csv_import import ENV_DATABASES, ENV_PATHS, CsvImport
from tests.conftest import shop_rows
from tests.test_builtin_strategies import _crash_after_chunk, copy_line, shop_csv, table_rows

pytestmark = pytest.mark.backends("sqlite", "postgres")

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
    # NULL and '' both come back as they were (PostgreSQL's COPY CSV convention).
    assert table_rows(shop, "products_copy") == table_rows(shop, "products")
    assert job.context == {
        "table": "products_copy",
        "file_key": key,
        "chunk_size": 10,
        "database": "shop",
        "key": "id",
        "on_error": "fail",
        "empty_as": "copy",
    }


def test_a_dry_run_previews_creates_and_updates_then_waits(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    with closing(sqlite3.connect(shop)) as conn, conn:
        conn.executemany(
            "INSERT INTO products_copy VALUES (?, ?, ?, ?, ?, ?)",
            [(i, f"OLD-{i}", "old", 1.0, 1, None) for i in (2, 4, 6)],
        )
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
    assert job.result["errors"][-1]["message"].startswith(
        "csv-import: 6 invalid rows in the CSV file"
    )
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
    with closing(sqlite3.connect(shop)) as conn, conn:
        conn.execute("INSERT INTO products_copy (id, sku) VALUES (1, 'KEEP')")
    job = run_import(jobs, lines("id,name", "1,renamed", "2,new"), on_error="skip")
    assert job.status == Status.COMPLETED
    assert row_errors(job) == [(3, "sku", "the file has no column 'sku', which a new row needs")]
    assert table_rows(shop, "products_copy") == [(1, "KEEP", "renamed", None, 0, None)]


def test_upserts_by_another_unique_column(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    with closing(sqlite3.connect(shop)) as conn, conn:
        conn.execute("INSERT INTO products_copy (id, sku, qty) VALUES (7, 'A', 1)")
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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.timeout(20)
def test_a_fifo_swapped_in_for_the_file_fails_the_job_instead_of_blocking_it(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path], tmp_path: Path
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    source = tmp_path / "incoming" / "products.csv"
    source.write_bytes(shop_csv(shop_rows(3)))
    job = jobs.create("csv-import", {"table": "products_copy", "path": str(source)})
    source.unlink()
    os.mkfifo(source)  # no writer will ever come: a blocking open would wait for ever
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.FAILED
    assert job.result["errors"][-1]["message"] == (
        f"csv-import: {str(source.resolve())!r} is not a regular file"
    )
    assert table_rows(shop, "products_copy") == []


def test_a_file_removed_after_create_fails_the_job(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path], tmp_path: Path
) -> None:
    jobs = csv_jobs(make_shop(rows=0))
    source = tmp_path / "incoming" / "products.csv"
    source.write_bytes(shop_csv(shop_rows(3)))
    job = jobs.create("csv-import", {"table": "products_copy", "path": str(source)})
    source.unlink()
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.FAILED
    assert job.result["errors"][-1]["message"] == (
        f"csv-import: no file at path {str(source.resolve())!r}"
    )


def test_an_import_needs_the_tables_it_may_write(
    make_shop: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = make_shop()
    message = (
        "database 'shop': give the tables it may write: {'path': ..., "
        "'tables': [...]}, or 'tables': '*' for every table"
    )
    for bare in ({"shop": shop}, {"shop": {"path": shop}}):
        with pytest.raises(ValueError) as refusal:
            CsvImport(databases=bare)
        assert str(refusal.value) == f"csv-import: {message}"
    monkeypatch.setenv(ENV_DATABASES, json.dumps({"shop": str(shop)}))
    with pytest.raises(ValueError) as refusal:
        CsvImport()
    assert str(refusal.value) == f"csv-import: BATCHJOBS_CSV_IMPORT_DATABASES: {message}"
    with pytest.raises(ValueError, match="tables must be a list of table names, or '\\*'"):
        CsvImport(databases={"shop": {"path": shop, "tables": "products"}})
    every = CsvImport(databases={"shop": {"path": shop, "tables": "*"}})
    for table in ("products", "products_copy"):
        assert every.prepare(JobDraft("csv-import", {"table": table, "file_key": "a.csv"}))
    listed = CsvImport(databases={"shop": {"path": shop, "tables": ["Products_Copy"]}})
    with pytest.raises(InvalidDataError, match="table 'products' of database 'shop' is not"):
        listed.prepare(JobDraft("csv-import", {"table": "products", "file_key": "a.csv"}))


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
    assert job.result["errors"][-1]["message"] == "csv-import: no file under key 'nothing/here.csv'"


def test_the_template_is_the_tables_header(
    make_shop: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shop = make_shop()
    only = CsvImport(databases={"shop": {"path": shop, "tables": ["products_copy"]}})
    assert only.build_template() == HEADER + "\r\n"
    both = CsvImport(databases={"shop": {"path": shop, "tables": "*"}})
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


# -- the values each column accepts, and where a file that is not CSV fails ------------------


def csv_lines(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([HEADER.split(","), *rows])
    return buffer.getvalue()


def value_rows(column: str, values: list[str], first: int = 1) -> list[list[str]]:
    """One valid row per value, with ``value`` in ``column``."""
    rows = []
    for i, value in enumerate(values, start=first):
        row = {"id": str(i), "sku": f"SKU-{i}", "name": "x", "price": "1", "qty": "1", "photo": ""}
        row[column] = value
        rows.append(list(row.values()))
    return rows


PRICES = ["1", "+1", "-1", "1.", ".5", "-.5e-2", "1e3", "1E+3", "007.50", "inf", "-Inf", ""]
QUANTITIES = ["0", "+1", "-1", "007", "9" * 18, str(2**63 - 1), str(-(2**63))]
QUANTITIES += ["0" * 25 + "42"]
PHOTOS = ["", "0aff", "0AfF", "00"]


@pytest.mark.parametrize("batch", [1, 3, 5000])
def test_the_values_numeric_and_blob_columns_accept(
    csv_jobs: Callable[..., BatchJobs],
    make_shop: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    monkeypatch.setattr("batchjobs.strategies.csv_import.VALIDATION_BATCH", batch)
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    rows = value_rows("price", PRICES)
    rows += value_rows("qty", QUANTITIES, first=101)
    rows += value_rows("photo", PHOTOS, first=201)
    job = run_import(jobs, csv_lines(rows), chunk_size=batch)
    assert job.status == Status.COMPLETED, job.result
    assert job.result["imported"] == len(rows)
    stored = {r[0]: r for r in table_rows(shop, "products_copy")}
    assert [stored[i][3] for i in range(1, len(PRICES) + 1)] == [
        1.0, 1.0, -1.0, 1.0, 0.5, -0.005, 1000.0, 1000.0, 7.5, math.inf, -math.inf, None
    ]  # fmt: skip
    assert [stored[i][4] for i in range(101, 101 + len(QUANTITIES))] == [
        0, 1, -1, 7, int("9" * 18), 2**63 - 1, -(2**63), 42
    ]  # fmt: skip
    assert [stored[i][5] for i in range(201, 201 + len(PHOTOS))] == [
        None, b"\x0a\xff", b"\x0a\xff", b"\x00"
    ]  # fmt: skip


NOT_NUMBERS = [" 1", "1 ", "1_000", "nan", "-Infinity", "1e", ".", "+", "-", "1.2.3"]
NOT_NUMBERS += ["\u0661\u0662", "1\u0662.5", "\u0661e3", "infinity"]  # SQLite's digits are 0-9
NOT_NUMBERS += ["0x10", "\u00bd", "\u00b2", "1e3.5", "\u00a01", "e3", "1,5", "\t1", "1\n"]
NOT_INTEGERS = ["1.0", "1e3", " 1", "1_000", "+", "\u00bd", "\u00b2", "0x1", "1\r\n"]
NOT_INTEGERS += ["\u0661\u0662\u0663", "1\u0662"]
OUT_OF_RANGE = [str(2**63), str(-(2**63) - 1), "9" * 30]
NOT_HEX = ["abc", "zz", " 0a", "0a ", "0x0a"]


@pytest.mark.parametrize("batch", [1, 3, 5000])
def test_the_values_numeric_and_blob_columns_refuse(
    csv_jobs: Callable[..., BatchJobs],
    make_shop: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    monkeypatch.setattr("batchjobs.strategies.csv_import.VALIDATION_BATCH", batch)
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    rows = value_rows("price", NOT_NUMBERS)
    rows += value_rows("qty", [*NOT_INTEGERS, *OUT_OF_RANGE, ""], first=101)
    rows += value_rows("photo", NOT_HEX, first=201)
    rows += value_rows("id", [""])
    rows += value_rows("name", ["fine"], first=301)
    job = run_import(jobs, csv_lines(rows), on_error="skip", chunk_size=batch)
    assert job.status == Status.COMPLETED, job.result
    expected = [(f"{v!r} is not a number", "price") for v in NOT_NUMBERS]
    expected += [(f"{v!r} is not an integer", "qty") for v in NOT_INTEGERS]
    expected += [(f"{v!r} is out of range for an integer", "qty") for v in OUT_OF_RANGE]
    expected += [("a value is required", "qty")]
    expected += [(f"{v!r} is not hexadecimal bytes", "photo") for v in NOT_HEX]
    expected += [("a value is required", "id")]
    line, errors = 2, []
    for (message, column), row in zip(expected, rows[:-1], strict=True):
        errors.append((line, column, message))
        line += 1 + sum(value.count("\n") for value in row)
    assert row_errors(job) == errors
    assert job.result["invalid_count"] == len(errors)
    assert [r[0] for r in table_rows(shop, "products_copy")] == [301]


def test_a_file_that_is_not_csv_fails_near_the_line_it_breaks(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = csv_jobs(make_shop(rows=0))
    good = "".join(f"{i},SKU-{i},x,1,1,\r\n" for i in range(1, 3001))
    cases = [
        (good + '3001,SKU,"a"b,1,1,\r\n', "near line 3002: ',' expected after '\"'"),
        (good + '3001,SKU,"a\r\n' + good, "near line 6002: unexpected end of data"),
        (good + f"3001,SKU,{'x' * 140_000},1,1,\r\n", "near line 3002: field larger than"),
        (good.encode() + b"3001,SKU,\xff,1,1,\r\n" + good.encode(), "near line 2706: "),
        # Whichever comes first in the file: a quoted field still open, or not CSV.
        (good + '3001,SKU,"a\r\n' + good[:3000] + "\udcff" + good, "near line 3097: 'utf-8'"),
        (good + '3001,SKU,"a"b,1,1,\r\n' + good[:3000] + "\udcff" + good, "near line 3002: ','"),
    ]
    for text, message in cases:
        body = text if isinstance(text, bytes) else text.encode(errors="surrogateescape")
        data = HEADER.encode() + b"\r\n" + body
        job = run_import(jobs, data)
        assert job.status == Status.FAILED
        assert message in job.result["errors"][-1]["message"], job.result["errors"][-1]


# Values csv.writer leaves unquoted (other line breaks than CR and LF among them), then others.
PLAIN_TEXTS = [
    "plain",
    "",
    " ",
    "\u2028",
    "\x0b\x0c\x1c\x1d\x1e\x1f\x85",
    "\u00fcn\u00efc\u00f8d\u00e9",
]
TEXTS = [*PLAIN_TEXTS, "with, comma", 'with "quotes"', "two\nlines", "two\r\nlines", "cr\ronly"]


@pytest.mark.parametrize("seed", range(9))
def test_rows_and_line_numbers_are_the_csv_modules(
    csv_jobs: Callable[..., BatchJobs],
    make_shop: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
) -> None:
    """Random files: quoted fields (none, a few, many), fields over several lines,
    every line ending, blank lines, rows of another width, no last line break."""
    quoted = (0, 0.05, 1)[seed % 3]
    monkeypatch.setattr("batchjobs.strategies.csv_import.VALIDATION_BATCH", 40 if quoted else 7)
    monkeypatch.setattr("batchjobs.strategies._csv_lines._SPLIT_RUN", 1)
    random = Random(seed)
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER.split(","))
    for i in range(1, 120):
        texts = TEXTS if random.random() < quoted else PLAIN_TEXTS
        price = "bad" if random.random() < 0.1 else "1.5"
        row = [i, f"S{i}{random.choice(texts)}", random.choice(texts), price, i, ""]
        writer.writerow(row if random.random() > 0.05 else row[:-1])
        if random.random() < 0.1:
            buffer.write(random.choice(["\r\n", "\n", "\r"]) * random.randint(1, 2))
    text = buffer.getvalue()
    endings = iter(random.choice(["\r\n", "\n", "\r"]) for _ in range(text.count("\r\n")))
    text = re.sub("\r\n", lambda _: next(endings), text)
    text = text.rstrip("\r\n") if seed % 2 else text
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    next(reader)
    first, valid, errors = reader.line_num + 1, [], []
    for row in reader:
        if row and len(row) != 6:
            errors.append((first, None, f"{len(row)} fields where the header has 6"))
        elif row and row[3] == "bad":
            errors.append((first, "price", "'bad' is not a number"))
        elif row:
            valid.append((int(row[0]), row[1], row[2] or None, 1.5, int(row[4]), None))
        first = reader.line_num + 1
    job = run_import(jobs, text, on_error="skip", chunk_size=5)
    assert job.status == Status.COMPLETED, job.result
    assert row_errors(job) == errors
    assert table_rows(shop, "products_copy") == valid


@pytest.mark.parametrize("quoted", [False, True])
def test_resuming_at_any_chunk_gives_the_rows_of_one_run(
    csv_jobs: Callable[..., BatchJobs],
    make_shop: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    quoted: bool,
) -> None:
    """A file with blank lines and every line break, with or without a quoted field."""
    monkeypatch.setattr("batchjobs.strategies.csv_import.VALIDATION_BATCH", 3)
    rows = [f"{i},SKU-{i},item {i},{'bad' if i == 9 else i / 4},{i}," for i in range(1, 31)]
    rows[4] += "\n\r\n"  # two blank lines, with the "\r" joining it to the next
    if quoted:
        rows[12] = '13,SKU-13,"one\r\ntwo, three",1,13,'
    rows[20] += "\r"  # one more, before a line break of another kind
    text = "\r".join(rows[:10]) + "\r" + "\n".join(rows[10:20]) + "\n" + lines(*rows[20:])
    text = HEADER + "\r\n" + text
    context = {"table": "products_copy", "file_key": "in.csv", "on_error": "skip", "chunk_size": 4}
    outcomes = []
    for n in range(-1, 8):  # a run without a crash, then one crashing after each chunk
        shop = make_shop(rows=0, name=f"shop{n}.db")
        jobs = csv_jobs(shop, tmp_path / f"jobs{n}.db")
        if n >= 0:
            jobs.register(_crash_after_chunk(jobs.strategy("csv-import"), at=n * 4))
        jobs.files.put("in.csv", [text.encode()])
        job = jobs.create("csv-import", context)
        jobs.run_until_idle(timeout=10)
        if n >= 0:
            assert jobs.retrieve(job.id).status == Status.FAILED
            jobs.retry(job.id)
            jobs.run_until_idle(timeout=10)
        job = jobs.retrieve(job.id)
        assert job.status == Status.COMPLETED, (n, job.result)
        assert row_errors(job) == [(12, "price", "'bad' is not a number")]
        outcomes.append(table_rows(shop, "products_copy"))
    assert len(outcomes[0]) == 29
    if quoted:
        assert (13, "SKU-13", "one\r\ntwo, three", 1.0, 13, None) in outcomes[0]
    assert all(outcome == outcomes[0] for outcome in outcomes)


def test_an_empty_value_in_a_not_null_blob_column_is_refused_in_any_batch(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    with closing(sqlite3.connect(shop)) as conn, conn:
        conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    jobs = csv_jobs(shop)
    jobs.files.put("in.csv", [lines("id,data", "1,", "2,00", "3,").encode()])
    job = jobs.create("csv-import", {"table": "blobs", "file_key": "in.csv", "on_error": "skip"})
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.COMPLETED, job.result
    assert row_errors(job) == [
        (2, "data", "a value is required"),
        (4, "data", "a value is required"),
    ]
    assert table_rows(shop, "blobs") == [(2, b"\x00")]


def test_a_long_value_that_is_no_number_is_refused_at_once(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = csv_jobs(make_shop(rows=0))
    value = "1" * 100_000 + "x"
    started = time.monotonic()
    job = run_import(
        jobs, lines(HEADER, f"1,SKU-1,x,{value},1,", "2,SKU-2,x,1,1,"), on_error="skip"
    )
    assert time.monotonic() - started < 5  # the patterns never try a digit two ways
    assert row_errors(job) == [(2, "price", f"{value[:40]!r} is not a number")]


def test_a_nul_is_read_as_the_csv_module_reads_it(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    text = lines(HEADER, "1,SKU-1,a\x00b,1,1,")
    try:
        list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:  # before Python 3.11
        assert run_import(jobs, text).status == Status.FAILED
    else:
        assert run_import(jobs, text).status == Status.COMPLETED
        assert table_rows(shop, "products_copy") == [(1, "SKU-1", "a\x00b", 1.0, 1, None)]


# -- owners ------------------------------------------------------------------------------------


def test_a_job_reads_only_files_its_creator_owns(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=5)
    jobs = csv_jobs(shop)
    export = jobs.create("csv-export", {"table": "products"}, created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    key = jobs.retrieve(export.id).result["file_key"]
    assert jobs.files.owner(key) == "usr_1"  # an export is its creator's
    context = {"table": "products_copy", "file_key": key}
    before = jobs.list_and_count(limit=0)[1]
    with pytest.raises(NotAllowedError) as refusal:
        jobs.create("csv-import", context, created_by="usr_2")
    assert (refusal.value.type, refusal.value.message) == ("not_allowed", NOT_OWNER_MESSAGE)
    assert jobs.list_and_count(limit=0)[1] == before  # nothing was created
    mine = jobs.create("csv-import", context, created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(mine.id).status == Status.COMPLETED
    assert len(table_rows(shop, "products_copy")) == 5
    # A job the application created reads any file.
    app = jobs.create("csv-import", context)
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(app.id).status == Status.COMPLETED


def test_a_file_that_is_no_longer_the_creators_fails_the_job_when_read(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    shop = make_shop(rows=0)
    jobs = csv_jobs(shop)
    data = lines(HEADER, "1,SKU-1,a,1.5,1,")
    jobs.files.for_user("usr_1").put("uploads/in.csv", [data.encode()])
    job = jobs.create(
        "csv-import", {"table": "products_copy", "file_key": "uploads/in.csv"}, created_by="usr_1"
    )
    jobs.files.put("uploads/in.csv", [data.encode()])  # replaced by the application
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.FAILED
    assert job.result["errors"][-1] == {"message": NOT_OWNER_MESSAGE, "code": "not_allowed"}
    assert table_rows(shop, "products_copy") == []


# -- the round trip: export, then import into an identical table --------------------------------

EVERYTHING = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    text TEXT,
    required TEXT NOT NULL,
    whole INTEGER,
    real REAL,
    numeric NUMERIC,
    blob BLOB
)
"""
TEXTS = [
    None, "", " ", "plain", "with, comma", 'with "quotes"', '"', '""', 'a""b', "two\nlines",
    "crlf\r\nline", "cr\ronly", "\n", "ünïcødé ☃ 𝄞", "NULL", "null", "\\N", "0x00", " padded ",
    ",", ",,", "trailing,", "\t", "0", "-0", "1e3", "x" * 1000,
]  # fmt: skip
INTEGERS = [None, 0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1, -(2**31)]
REALS = [
    None, 0.0, 0.1, 1 / 3, -2.5, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
    -1.6555319041809778e-304, 6.2529826009785826e-304, 123456789.12345679, math.inf, -math.inf,
]  # fmt: skip
NUMERICS = [None, 0, 7, -(2**63), 2**63 - 1, 1.5, -0.125, 1e300, 0.1]
BLOBS = [None, b"", b"\x00", b"\x00\xff\x10", bytes(range(256))]


def everything_rows(n: int) -> list[tuple[Any, ...]]:
    """``n`` rows going through every value above, and random ones: random reals
    (every bit pattern that is a finite double), integers and text."""
    rng = Random(17)
    rows = []
    for i in range(1, n + 1):
        real = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        rows.append(
            (
                i,
                TEXTS[i % len(TEXTS)] if i % 5 else "".join(rng.choice('ab,"\n é') for _ in "xyz"),
                rng.choice(["", "kept", 'a "quoted" one', "a,b", "☃"]),
                INTEGERS[i % len(INTEGERS)] if i % 3 else rng.randrange(-(2**63), 2**63),
                REALS[i % len(REALS)] if i % 2 or not math.isfinite(real) else real,
                NUMERICS[i % len(NUMERICS)],
                BLOBS[i % len(BLOBS)] if i % 4 else rng.randbytes(rng.randrange(40)),
            )
        )
    return rows


def typed_rows(path: Path, table: str) -> list[list[tuple[str, str]]]:
    """Every value of ``table`` with its SQLite type, exactly (``repr``: -0.0, every digit)."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    return [[(type(value).__name__, repr(value)) for value in row] for row in rows]


@pytest.fixture
def everything_jobs(
    make_jobs: Callable[..., BatchJobs], tmp_path: Path
) -> Callable[..., tuple[BatchJobs, Path]]:
    """``make(rows)``: ``BatchJobs`` exporting and importing the tables of a database
    holding ``everything`` (those rows) and an identical, empty ``everything_copy``."""

    def make(rows: list[tuple[Any, ...]]) -> tuple[BatchJobs, Path]:
        path = tmp_path / "everything.db"
        with closing(sqlite3.connect(path)) as conn, conn:
            for table in ("everything", "everything_copy"):
                conn.execute(EVERYTHING.format(name=table))
            conn.executemany("INSERT INTO everything VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        jobs = make_jobs()
        every_table = {"db": {"path": path, "tables": "*"}}
        jobs.register(CsvExport(databases=every_table))
        jobs.register(CsvImport(databases=every_table))
        return jobs, path

    return make


def export_then_import(jobs: BatchJobs, **context: Any) -> tuple[BatchJob, BatchJob]:
    export = jobs.create("csv-export", {"table": "everything", "chunk_size": 7})
    jobs.run_until_idle(timeout=30)
    export = jobs.retrieve(export.id)
    assert export.status == Status.COMPLETED, export.result
    context = {"table": "everything_copy", "file_key": export.result["file_key"], **context}
    job = jobs.create("csv-import", {"chunk_size": 11, **context})
    jobs.run_until_idle(timeout=30)
    return export, jobs.retrieve(job.id)


@pytest.mark.parametrize("batch", [3, 5000])
def test_an_export_imports_back_to_equal_rows_of_every_type(
    everything_jobs: Callable[..., tuple[BatchJobs, Path]],
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    monkeypatch.setattr("batchjobs.strategies.csv_import.VALIDATION_BATCH", batch)
    rows = everything_rows(400)
    jobs, path = everything_jobs(rows)
    export, job = export_then_import(jobs)
    assert job.status == Status.COMPLETED, job.result
    assert job.result["imported"] == 400
    original = typed_rows(path, "everything")
    assert typed_rows(path, "everything_copy") == original
    # Every kind of value was there to lose: NULL and '' in a nullable text
    # column, 64-bit limits, every digit of a real, empty and binary BLOBs.
    values = {value for row in original for value in row}
    for kind, value in [
        ("NoneType", "None"),
        ("str", "''"),
        ("int", repr(-(2**63))),
        ("int", repr(2**63 - 1)),
        ("float", repr(5e-324)),
        ("float", repr(-1.6555319041809778e-304)),
        ("float", "inf"),
        ("bytes", "b''"),
        ("str", repr("crlf\r\nline")),
        ("str", repr("ünïcødé ☃ 𝄞")),
    ]:
        assert (kind, value) in values
    # The file is PostgreSQL's COPY CSV: NULL an empty unquoted field, '' written "".
    with closing(sqlite3.connect(path)) as conn:
        cursor = conn.execute("SELECT * FROM everything ORDER BY id")
        expected = [copy_line([d[0] for d in cursor.description]), *map(copy_line, cursor)]
    with jobs.files.open_read(export.result["file_key"]) as source:
        assert source.read().decode() == "".join(expected)


def test_empty_as_null_reads_every_empty_field_as_null(
    everything_jobs: Callable[..., tuple[BatchJobs, Path]],
) -> None:
    rows = [
        (1, "", "", 1, 1.5, 1, b""),
        (2, None, "x", None, None, None, None),
        (3, "kept", "", 0, 0.0, 0, b"\x01"),
    ]
    jobs, path = everything_jobs(rows)
    _export, job = export_then_import(jobs, empty_as="null")
    assert job.status == Status.COMPLETED, job.result
    assert job.context["empty_as"] == "null"
    with closing(sqlite3.connect(path)) as conn:
        copied = conn.execute("SELECT * FROM everything_copy ORDER BY id").fetchall()
    # '' became NULL, except in the NOT NULL text column, where it stays ''.
    assert copied == [
        (1, None, "", 1, 1.5, 1, None),
        (2, None, "x", None, None, None, None),
        (3, "kept", "", 0, 0.0, 0, b"\x01"),
    ]
    with pytest.raises(InvalidDataError, match="context.empty_as must be 'copy' or 'null'"):
        jobs.create("csv-import", {"table": "everything_copy", "file_key": "x.csv", "empty_as": ""})


def test_a_file_quoting_every_field_reads_as_other_tools_mean_it(
    everything_jobs: Callable[..., tuple[BatchJobs, Path]],
) -> None:
    jobs, path = everything_jobs([])
    # csv.writer(quoting=QUOTE_ALL) writes None and '' alike, as "".
    data = lines(
        '"id","text","required","whole","real","numeric","blob"',
        '"1","","","","","",""',
        '"2","a","b","3","4.5","6","0aff"',
    )
    jobs.files.put("in.csv", [data.encode()])
    for empty_as, text in [("copy", ""), ("null", None)]:
        job = jobs.create(
            "csv-import", {"table": "everything_copy", "file_key": "in.csv", "empty_as": empty_as}
        )
        jobs.run_until_idle(timeout=10)
        assert jobs.retrieve(job.id).status == Status.COMPLETED
        with closing(sqlite3.connect(path)) as conn:
            copied = conn.execute("SELECT * FROM everything_copy ORDER BY id").fetchall()
        # Numbers and BLOBs have no empty value: "" is NULL there either way.
        assert copied == [(1, text, "", None, None, None, b"" if text == "" else None),
                          (2, "a", "b", 3, 4.5, 6, b"\x0a\xff")]  # fmt: skip


def test_an_empty_string_may_be_a_text_key(
    make_jobs: Callable[..., BatchJobs], tmp_path: Path
) -> None:
    path = tmp_path / "words.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE words (word TEXT PRIMARY KEY, n INTEGER)")
        conn.executemany("INSERT INTO words VALUES (?, ?)", [("", 1), ("a", None)])
    jobs = make_jobs()
    jobs.register(CsvImport(databases={"db": {"path": path, "tables": ["words"]}}))
    jobs.files.put("in.csv", [lines("word,n", '"",2', "b,3", ",4").encode()])
    job = jobs.create("csv-import", {"table": "words", "file_key": "in.csv", "on_error": "skip"})
    jobs.run_until_idle(timeout=10)
    job = jobs.retrieve(job.id)
    assert job.status == Status.COMPLETED, job.result
    assert (job.result["to_update"], job.result["to_create"]) == (1, 1)
    assert row_errors(job) == [(4, "word", "a value is required")]  # NULL is no key
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT * FROM words ORDER BY word").fetchall() == [
            ("", 2),
            ("a", None),
            ("b", 3),
        ]
