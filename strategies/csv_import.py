"""``csv-import``: a CSV file into an allow-listed SQLite table, upserting by a key.

The application says which databases (and tables) may be written and which
directories files may be read from; a job's context only picks among them::

    jobs.register(CsvImport(databases={"shop": "shop.db"}, paths=["uploads"]))
    jobs.create("csv-import", {"table": "products", "path": "uploads/products.csv"},
                dry_run=True)   # stops after the preview in stat_descriptors

Pre-processing reads the whole file: the header against the table's columns,
every value against its column's type, the key present. It counts the rows
that will create and update, which a dry run shows for review. Processing
upserts the rows in chunks, each chunk in one transaction, so a chunk replayed
after a crash writes the same rows again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import stat
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from batchjobs import BatchJobStrategy, InvalidDataError, JobDraft, JobRun
from batchjobs.files import FileStore

from ._sqlite import (
    AllowedDatabase,
    Column,
    Table,
    allowed_databases,
    check_context_keys,
    connect,
    open_table,
    quote,
    resolve_table,
)

__all__ = ["ENV_DATABASES", "ENV_PATHS", "ON_ERROR_POLICIES", "ROW_ERRORS_KEPT", "CsvImport"]

#: The allow-list of the instance the entry point registers: a JSON object of
#: name -> path, or name -> {"path": ..., "tables": [...]}.
ENV_DATABASES = "BATCHJOBS_CSV_IMPORT_DATABASES"
#: Directories (or files) a context's ``path`` may name, joined by ``os.pathsep``.
ENV_PATHS = "BATCHJOBS_CSV_IMPORT_PATHS"
CONTEXT_KEYS = ("database", "table", "file_key", "path", "key", "on_error")
ON_ERROR_POLICIES = ("fail", "skip")
#: Row errors kept in ``result.errors``; ``result.invalid_count`` counts them all.
ROW_ERRORS_KEPT = 50
#: Rows validated (and keys looked up) at a time while pre-processing.
VALIDATION_BATCH = 5000
ROW_ERROR_CODE = "invalid_row"

_INT64 = (-(2**63), 2**63 - 1)
# Patterns of the values SQLite's type affinity turns into numbers exactly.
_INTEGER = r"[+-]?\d{1,18}"
_REAL = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_PATTERNS = {
    "INTEGER": _INTEGER,
    "REAL": _REAL,
    "NUMERIC": _REAL,
    "HEX": r"(?:[0-9A-Fa-f]{2})*",
}
_EXPECTED = {
    "INTEGER": "an integer",
    "REAL": "a number",
    "NUMERIC": "a number",
    "HEX": "hexadecimal bytes",
}


class _LinesUnknown(Exception):
    """A batch with errors spans lines that cannot be told apart: read again, tracking lines."""


@dataclass(frozen=True)
class _FieldCheck:
    """How the values of one column are checked."""

    column: Column
    kind: str | None  # a key of _PATTERNS, or None when any text is fine
    allow_empty: bool
    whole: re.Pattern[str] | None = field(default=None, compare=False)
    one: re.Pattern[str] | None = field(default=None, compare=False)

    @classmethod
    def build(cls, column: Column, *, is_key: bool) -> _FieldCheck:
        affinity = column.affinity
        kind: str | None = affinity if affinity in _PATTERNS else None
        if affinity == "BLOB" and column.declared:
            kind = "HEX"
        # Empty is NULL, or '' in a NOT NULL text column; never a key.
        allow_empty = not is_key and not (column.notnull and affinity != "TEXT")
        whole = one = None
        if kind is not None:
            item = f"(?:{_PATTERNS[kind]})" + ("?" if allow_empty else "")
            whole = re.compile(f"{item}(?:\n{item})*")
            one = re.compile(_PATTERNS[kind] if kind != "INTEGER" else r"[+-]?\d+")
        return cls(column, kind, allow_empty, whole, one)

    def all_valid(self, values: Sequence[str]) -> bool:
        """Whether every value is valid, checked in one pass (the common case)."""
        if self.whole is None:
            return self.allow_empty or all(values)
        joined = "\n".join(values)
        return bool(self.whole.fullmatch(joined)) and joined.count("\n") == len(values) - 1

    def problem(self, value: str) -> str | None:
        """What is wrong with one value, or ``None``."""
        if value == "":
            return None if self.allow_empty else "a value is required"
        if self.one is None or self.kind is None:
            return None
        if not self.one.fullmatch(value):
            return f"{value[:40]!r} is not {_EXPECTED[self.kind]}"
        if self.kind == "INTEGER" and not _INT64[0] <= int(value) <= _INT64[1]:
            return f"{value[:40]!r} is out of range for an integer"
        return None


@dataclass
class _Plan:
    """What one import reads and writes, checked against the real schema."""

    database: AllowedDatabase
    table: Table
    key: Column
    on_error: str
    file_key: str | None
    path: Path | None


@dataclass
class _Layout:
    """The file's header matched to the table: how rows are checked and written."""

    table: Table
    columns: tuple[Column, ...]
    key_index: int
    checks: tuple[_FieldCheck, ...]
    #: Columns a new row needs that the file does not have.
    missing_required: tuple[str, ...]

    @classmethod
    def from_header(cls, header: Sequence[str] | None, table: Table, key: Column) -> _Layout:
        if not header or header == [""]:
            raise InvalidDataError("the CSV file is empty: it needs a header row")
        columns = []
        for position, name in enumerate(header, start=1):
            column = next((c for c in table.writable if c.name.lower() == name.lower()), None)
            if column is None:
                raise InvalidDataError(
                    f"header column {position} {name[:60]!r} is not a column of table "
                    f"{table.name!r}; its columns: {', '.join(c.name for c in table.writable)}"
                )
            if column in columns:
                raise InvalidDataError(f"header names column {column.name!r} twice")
            columns.append(column)
        if key not in columns:
            raise InvalidDataError(f"the header has no {key.name!r} column (the key)")
        missing = tuple(
            c.name
            for c in table.writable
            if c not in columns
            and c.notnull
            and not c.has_default
            and c != table.integer_primary_key
        )
        checks = tuple(_FieldCheck.build(c, is_key=c == key) for c in columns)
        return cls(table, tuple(columns), columns.index(key), checks, missing)

    def row_problems(self, rows: Sequence[Sequence[str]]) -> dict[int, tuple[str | None, str]]:
        """``{row index: (column, message)}`` for the rows of ``rows`` that are invalid."""
        problems: dict[int, tuple[str | None, str]] = {}
        width = len(self.columns)
        if set(map(len, rows)) != {width}:
            for i, row in enumerate(rows):
                if len(row) != width:
                    problems[i] = (None, f"{len(row)} fields where the header has {width}")
            rows = [row if len(row) == width else [""] * width for row in rows]
        for index, check in enumerate(self.checks):
            if check.whole is None and check.allow_empty:
                continue  # any text will do
            values = list(map(itemgetter(index), rows))
            if check.all_valid(values):
                continue
            for i, value in enumerate(values):
                if i not in problems:
                    message = check.problem(value)
                    if message is not None:
                        problems[i] = (check.column.name, message)
        return problems

    def empty_columns(self, rows: Sequence[Sequence[str]], known: set[str]) -> None:
        """Add to ``known`` the columns that have an empty value in ``rows``."""
        for index, column in enumerate(self.columns):
            if column.name not in known and "" in map(itemgetter(index), rows):
                known.add(column.name)

    def upsert_sql(self, empty: Iterable[str] | None = None) -> str:
        """The statement that writes one row: an upsert, or an update when a new row
        could not be made (SQLite checks NOT NULL before it sees the conflict).

        ``empty`` names the columns that have empty values (``None``: any may).
        """
        table, key = quote(self.table.name), quote(self.columns[self.key_index].name)
        maybe_empty = None if empty is None else set(empty)
        values = [
            self._value(check, n, maybe_empty is None or check.column.name in maybe_empty)
            for n, check in enumerate(self.checks, start=1)
        ]
        others = [i for i in range(len(self.columns)) if i != self.key_index]
        if self.missing_required:
            sets = ", ".join(f"{quote(self.columns[i].name)} = {values[i]}" for i in others)
            return (
                f"UPDATE {table} SET {sets or f'{key} = {key}'} WHERE {key} = ?{self.key_index + 1}"
            )
        names = ", ".join(quote(c.name) for c in self.columns)
        updates = ", ".join(
            f"{quote(self.columns[i].name)} = excluded.{quote(self.columns[i].name)}"
            for i in others
        )
        action = f"UPDATE SET {updates}" if updates else "NOTHING"
        return (
            f"INSERT INTO {table} ({names}) VALUES ({', '.join(values)}) "
            f"ON CONFLICT ({key}) DO {action}"
        )

    @staticmethod
    def _value(check: _FieldCheck, n: int, maybe_empty: bool) -> str:
        """Parameter ``n`` as stored: hex is decoded first, '' stays in NOT NULL text."""
        column = check.column
        if not maybe_empty or check.kind == "HEX" or (column.affinity == "TEXT" and column.notnull):
            return f"?{n}"
        return f"NULLIF(?{n}, '')"

    def existing_keys_sql(self) -> str:
        key = quote(self.columns[self.key_index].name)
        return (
            "SELECT j.value FROM json_each(?) AS j WHERE EXISTS "
            f"(SELECT 1 FROM {quote(self.table.name)} WHERE {key} = j.value)"
        )

    def hex_columns(self) -> tuple[int, ...]:
        return tuple(i for i, check in enumerate(self.checks) if check.kind == "HEX")


def _read_rows(reader: Any) -> Iterator[list[str]]:
    """The data rows (blank lines left out)."""
    return filter(None, reader)


class _Input:
    """A run's open source file and target connection, positioned at a data row."""

    def __init__(
        self,
        plan: _Plan,
        source: IO[bytes],
        conn: sqlite3.Connection,
        empty: Iterable[str] | None,
    ) -> None:
        self.plan = plan
        self.source = source
        self.conn = conn
        self.text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
        self.reader = csv.reader(self.text, strict=True)
        self.layout = _Layout.from_header(next(self.reader, None), plan.table, plan.key)
        self.rows = _read_rows(self.reader)
        self.position = 0
        self.sql = self.layout.upsert_sql(empty)

    def skip_to(self, start: int) -> None:
        deque(islice(self.rows, start - self.position), maxlen=0)
        self.position = start

    def close(self) -> None:
        try:
            self.text.close()
        finally:
            self.conn.close()


class CsvImport(BatchJobStrategy):
    """Import a CSV file into an allow-listed SQLite table (``csv-import``).

    ``databases`` maps the names contexts use to a path (every table allowed)
    or to ``{"path": ..., "tables": [...]}``; ``paths`` lists the directories
    (or files) a context's ``path`` may read. Left out, they are read from
    ``BATCHJOBS_CSV_IMPORT_DATABASES`` (JSON) and ``BATCHJOBS_CSV_IMPORT_PATHS``
    (joined by ``os.pathsep``); without them nothing may be imported. Files
    in the file store (``file_key``) may always be read.

    Context: ``table``; ``database`` (optional when one is allowed);
    ``file_key`` or ``path``; ``key`` (a unique column, default the primary
    key); ``on_error``: ``fail`` (default: an invalid row fails the job
    before anything is written) or ``skip`` (invalid rows are left out).
    Empty fields are NULL, except in NOT NULL text columns; BLOB columns take
    hexadecimal.
    """

    batch_type = "csv-import"
    chunk_size = 5000

    def __init__(
        self,
        databases: Mapping[str, Any] | None = None,
        *,
        paths: Iterable[str | os.PathLike[str]] | None = None,
    ) -> None:
        self.databases = allowed_databases(databases, ENV_DATABASES)
        if paths is None:
            paths = [p for p in os.environ.get(ENV_PATHS, "").split(os.pathsep) if p]
        elif isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = tuple(Path(p).resolve() for p in paths)

    # -- the plan -----------------------------------------------------------------

    def _plan(self, context: Mapping[str, Any]) -> _Plan:
        kind = self.batch_type
        database, name = resolve_table(kind, self.databases, context)
        conn, table = open_table(kind, database, name)
        conn.close()
        key_name = context.get("key")
        if key_name is None:
            if len(table.primary_key) != 1:
                raise InvalidDataError(
                    f"{kind}: table {table.name!r} has no single-column primary key; "
                    "name a unique column in context.key"
                )
            key = table.primary_key[0]
        else:
            key = table.column(key_name, what="key column")
        if key.name.lower() not in table.unique_columns or key.generated:
            raise InvalidDataError(
                f"{kind}: key column {key.name!r} must be the primary key or have a unique index"
            )
        on_error = context.get("on_error", "fail")
        if on_error not in ON_ERROR_POLICIES:
            raise InvalidDataError(f"{kind}: context.on_error must be 'fail' or 'skip'")
        file_key, path = context.get("file_key"), context.get("path")
        if (file_key is None) == (path is None):
            raise InvalidDataError(f"{kind}: give exactly one of context.file_key and context.path")
        if file_key is not None:
            FileStore.check_key(file_key)
        return _Plan(
            database=database,
            table=table,
            key=key,
            on_error=on_error,
            file_key=file_key,
            path=None if path is None else self._allowed_path(path),
        )

    def _allowed_path(self, raw: Any) -> Path:
        if not isinstance(raw, str) or not raw or "\x00" in raw:
            raise InvalidDataError(f"{self.batch_type}: context.path must be a file path")
        path = Path(raw).resolve()
        if not any(path == allowed or allowed in path.parents for allowed in self.paths):
            raise InvalidDataError(
                f"{self.batch_type}: path {raw!r} is outside the directories the application "
                "allows imports from"
            )
        if not path.is_file():
            raise InvalidDataError(f"{self.batch_type}: no file at path {raw!r}")
        return path

    def _open_source(self, run: JobRun, plan: _Plan) -> IO[bytes]:
        if plan.file_key is not None:
            if run.files is None:
                raise RuntimeError("csv-import needs a file store (BatchJobs.files)")
            try:
                return run.files.open_read(plan.file_key)  # type: ignore[no-any-return]
            except FileNotFoundError:
                raise InvalidDataError(f"no file under key {plan.file_key!r}") from None
        assert plan.path is not None
        # Resolved again now: a link swapped in since the job was created is refused.
        path = self._allowed_path(str(plan.path))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidDataError(f"{self.batch_type}: {str(plan.path)!r} is not a file")
        return os.fdopen(fd, "rb")

    @staticmethod
    def _fingerprint(source: IO[bytes]) -> dict[str, int]:
        info = os.fstat(source.fileno())
        return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}

    # -- hooks --------------------------------------------------------------------

    def prepare(self, draft: JobDraft) -> JobDraft:
        """Refuse a context that names anything the application does not allow."""
        check_context_keys(self.batch_type, draft.context, CONTEXT_KEYS)
        plan = self._plan(draft.context)
        context = {
            **draft.context,
            "database": plan.database.name,
            "table": plan.table.name,
            "key": plan.key.name,
            "on_error": plan.on_error,
        }
        if plan.path is not None:
            context["path"] = str(plan.path)
        draft.context = context
        return draft

    def pre_process(self, run: JobRun) -> None:
        """Validate every row; count creates and updates into ``stat_descriptors``.

        With ``on_error: fail`` an invalid row fails the job here, before
        anything is written; with ``skip`` invalid rows are reported in
        ``result.errors`` (the first 50) and counted in ``result.invalid_count``.
        """
        plan = self._plan(run.job.context)
        self._forget_row_errors(run)
        kept = ("errors", "error_count")
        before: dict[str, Any] = {k: run.result[k] for k in kept if k in run.result}
        try:
            stats = self._validate(run, plan, tracked=False)
        except _LinesUnknown:
            # Start again, line by line, from the errors as they were.
            for name in ("errors", "error_count"):
                run.result.pop(name, None)
            run.result.update(before)
            stats = self._validate(run, plan, tracked=True)
        rows, invalid, to_create, to_update, fingerprint, empty = stats
        # What processing relies on: the file as validated, the columns with empty values.
        run.cursor.update({"source": fingerprint, "empty": empty})
        run.set_count(rows)
        run.result.update(
            {"invalid_count": invalid, "to_create": to_create, "to_update": to_update}
        )
        where = f"{plan.database.name}.{plan.table.name}"
        descriptors = [
            {
                "key": "csv-import-create",
                "name": "Rows to create",
                "message": f"{to_create} rows will be created in {where}",
            },
            {
                "key": "csv-import-update",
                "name": "Rows to update",
                "message": f"{to_update} rows will be updated in {where}",
            },
        ]
        if invalid:
            descriptors.append(
                {
                    "key": "csv-import-invalid",
                    "name": "Invalid rows",
                    "message": f"{invalid} invalid rows will be skipped"
                    if plan.on_error == "skip"
                    else f"{invalid} invalid rows: nothing will be imported",
                }
            )
        run.result["stat_descriptors"] = descriptors
        if invalid and plan.on_error == "fail":
            raise InvalidDataError(
                f"{invalid} invalid rows in the CSV file; nothing was imported "
                "(on_error is 'fail'; see result.errors)"
            )

    def _forget_row_errors(self, run: JobRun) -> None:
        """Drop row errors an earlier pre-processing recorded: this one counts again."""
        earlier = run.result.pop("invalid_count", 0)
        errors = [e for e in run.result.get("errors") or [] if e.get("code") != ROW_ERROR_CODE]
        error_count = max(run.result.get("error_count", 0) - earlier, len(errors))
        if errors or error_count:
            run.result["errors"], run.result["error_count"] = errors, error_count
        else:
            run.result.pop("errors", None)
            run.result.pop("error_count", None)

    def _validate(
        self, run: JobRun, plan: _Plan, *, tracked: bool
    ) -> tuple[int, int, int, int, dict[str, int], list[str]]:
        """Read the whole file: rows, invalid rows, to create, to update, its
        fingerprint and the columns with empty values."""
        source = self._open_source(run, plan)
        conn = connect(plan.database.path)
        rows = invalid = existing = 0
        empty: set[str] = set()
        try:
            fingerprint = self._fingerprint(source)
            text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
            reader = csv.reader(text, strict=True)
            try:
                layout = _Layout.from_header(next(reader, None), plan.table, plan.key)
                lookup = layout.existing_keys_sql()
                # Into an empty table every row creates: no key to look up.
                table = quote(plan.table.name)
                empty_table = conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None
                found: set[str] = set()
                for batch, lines in self._batches(reader, tracked):
                    rows += len(batch)
                    problems = layout.row_problems(batch)
                    valid = (
                        [r for i, r in enumerate(batch) if i not in problems] if problems else batch
                    )
                    layout.empty_columns(valid, empty)
                    if not empty_table:
                        keys = list(map(itemgetter(layout.key_index), valid))
                        found = {k for (k,) in conn.execute(lookup, [json.dumps(keys)])}
                        existing += sum(1 for k in keys if k in found) if found else 0
                    if layout.missing_required:
                        for i, row in enumerate(batch):
                            if i not in problems and row[layout.key_index] not in found:
                                problems[i] = (
                                    layout.missing_required[0],
                                    "the file has no column "
                                    f"{layout.missing_required[0]!r}, which a new row needs",
                                )
                    if problems:
                        if lines is None:
                            raise _LinesUnknown
                        for i in sorted(problems):
                            self._row_error(run, lines[i], *problems[i], kept=invalid)
                            invalid += 1
            except (csv.Error, UnicodeDecodeError) as error:
                raise InvalidDataError(
                    f"the file is not valid CSV (UTF-8) near line {reader.line_num}: {error}"
                ) from None
            finally:
                text.detach()
        finally:
            source.close()
            conn.close()
        created = rows - invalid - existing
        return rows, invalid, created, existing, fingerprint, sorted(empty)

    @staticmethod
    def _batches(
        reader: Any, tracked: bool
    ) -> Iterator[tuple[list[list[str]], Sequence[int] | None]]:
        """Batches of data rows with the line each starts on (``None``: not known)."""
        rows = _read_rows(reader)
        if tracked:
            batch: list[list[str]] = []
            lines: list[int] = []
            first = reader.line_num + 1
            for row in reader:
                if row:
                    batch.append(row)
                    lines.append(first)
                    if len(batch) == VALIDATION_BATCH:
                        yield batch, lines
                        batch, lines = [], []
                first = reader.line_num + 1
            if batch:
                yield batch, lines
            return
        while True:
            before = reader.line_num
            batch = list(islice(rows, VALIDATION_BATCH))
            if not batch:
                return
            # One line per row: line numbers follow. Otherwise a quoted field
            # spans lines, or blank lines were left out.
            after = reader.line_num
            yield batch, range(before + 1, after + 1) if after - before == len(batch) else None

    def _row_error(
        self, run: JobRun, line: int, column: str | None, message: str, *, kept: int
    ) -> None:
        where = f"line {line}" + (f", column {column!r}" if column else "")
        if kept < ROW_ERRORS_KEPT:
            run.add_error(f"{where}: {message}", ROW_ERROR_CODE, line=line, column=column)
        else:
            run.result["error_count"] = run.result.get("error_count", 0) + 1

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        """Upsert data rows ``[start, start + size)`` in one transaction."""
        try:
            state = self._input(run, start)
            rows = list(islice(state.rows, size))
            state.position += len(rows)
            if not rows:
                return 0
            batch: Sequence[Sequence[Any]] = rows
            if state.plan.on_error == "skip" and run.result.get("invalid_count"):
                batch = self._valid_rows(state, rows)
            hex_columns = state.layout.hex_columns()
            if hex_columns:
                batch = [
                    [
                        (bytes.fromhex(v) if v else None) if i in hex_columns else v
                        for i, v in enumerate(row)
                    ]
                    for row in batch
                ]
            conn = state.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(state.sql, batch)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            self._close(run)
            raise
        return len(rows)

    @staticmethod
    def _valid_rows(state: _Input, rows: list[list[str]]) -> list[list[str]]:
        layout = state.layout
        problems = layout.row_problems(rows)
        if layout.missing_required:
            keys = [r[layout.key_index] for i, r in enumerate(rows) if i not in problems]
            found = {
                k for (k,) in state.conn.execute(layout.existing_keys_sql(), [json.dumps(keys)])
            }
            for i, row in enumerate(rows):
                if i not in problems and row[layout.key_index] not in found:
                    problems[i] = (None, "")
        return [row for i, row in enumerate(rows) if i not in problems]

    def finalize(self, run: JobRun) -> None:
        """Close the file and the database; record how many rows were imported."""
        self._close(run)
        run.result["imported"] = run.result.get("count", 0) - run.result.get("invalid_count", 0)

    def on_cancel(self, run: JobRun) -> None:
        """Close the file and the database (chunks already committed stay)."""
        self._close(run)

    def build_template(self, table: str | None = None, database: str | None = None) -> str:
        """The header row of the table to import into (``table`` when several are allowed)."""
        choices: list[tuple[AllowedDatabase, str]] = []
        for allowed in self.databases.values():
            if database is not None and allowed.name != database:
                continue
            names: Iterable[str] = allowed.tables or ()
            if allowed.tables is None and allowed.path.is_file():
                conn = connect(allowed.path)
                try:
                    names = [
                        r[0]
                        for r in conn.execute(
                            "SELECT name FROM sqlite_master WHERE type = 'table' "
                            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
                        )
                    ]
                finally:
                    conn.close()
            choices.extend(
                (allowed, name) for name in names if table is None or name.lower() == table.lower()
            )
        if len(choices) != 1:
            listed = ", ".join(f"{a.name}.{t}" for a, t in choices) or "none"
            raise InvalidDataError(
                f"{self.batch_type}: choose one table for the template; allowed: {listed}"
            )
        allowed, name = choices[0]
        conn, schema = open_table(self.batch_type, allowed, name)
        conn.close()
        buffer = io.StringIO()
        csv.writer(buffer).writerow([c.name for c in schema.writable])
        return buffer.getvalue()

    # -- open inputs --------------------------------------------------------------

    def _input(self, run: JobRun, start: int) -> _Input:
        """The run's open input at data row ``start``, opened on the run's first chunk."""
        state: _Input | None = run.state.get("input")
        if state is not None and state.position == start:
            return state
        self._close(run)
        plan = self._plan(run.job.context)
        source = self._open_source(run, plan)
        if self._fingerprint(source) != run.cursor.get("source"):
            source.close()
            raise InvalidDataError(
                "the CSV file changed after it was validated; create a new import job"
            )
        conn, table = open_table(self.batch_type, plan.database, plan.table.name, write=True)
        plan.table = table
        try:
            state = _Input(plan, source, conn, run.cursor.get("empty"))
            state.skip_to(start)
        except BaseException:
            source.close()
            conn.close()
            raise
        run.state["input"] = run.closing(state)
        return state

    def _close(self, run: JobRun) -> None:
        state = run.state.pop("input", None)
        if state is not None:
            state.close()
