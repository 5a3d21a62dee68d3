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
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, islice, repeat
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
# Patterns of the values SQLite's type affinity turns into numbers exactly, none
# matching the empty value. Written so that no character can be matched two ways:
# a value that fails takes time in proportion to its length, never its square.
_INTEGER = r"[+-]?\d{1,18}"
_REAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_PATTERNS = {
    "INTEGER": _INTEGER,
    "REAL": _REAL,
    "NUMERIC": _REAL,
    "HEX": r"(?:[0-9A-Fa-f]{2})+",
}
#: What a blank line is, once read (a line keeps its line break).
_BREAKS = ("\r\n", "\n", "\r")
#: Lines of a batch to each quote in it, at least, for its lines without one
#: to be split in runs between those with one; a batch with more quotes is
#: parsed whole (splitting short runs would save less than it costs).
_SPLIT_RUN = 16
# Two dots in one value, when the values (joined by newlines) are digits and dots.
_TWO_DOTS = re.compile(r"\.\d*\.")
_EXPECTED = {
    "INTEGER": "an integer",
    "REAL": "a number",
    "NUMERIC": "a number",
    "HEX": "hexadecimal bytes",
}


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

    @property
    def any_text(self) -> bool:
        """Whether every value, the empty one too, is valid."""
        return self.kind is None and self.allow_empty

    def all_valid(self, values: Sequence[str]) -> bool:
        """Whether every value is valid, checked a column at a time (the common case).

        Unsigned decimals are checked by ``str`` methods, which run faster than
        a pattern; anything else by one match of the column's values joined.
        """
        if self.whole is None:
            return self.allow_empty or all(values)
        if not (self.allow_empty or all(values)):
            return False
        if self.kind == "INTEGER":
            # Digits only (an empty value adds none), at most 18 to a value.
            if "".join(values).isdecimal() and max(map(len, values)) <= 18:
                return True
        elif (
            self.kind != "HEX"
            # Digits and dots only, never a dot alone, at most one dot to a value.
            and "".join(values).replace(".", "").isdecimal()
            and "." not in values
            and not _TWO_DOTS.search("\n".join(values))
        ):
            return True
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

    def check(
        self, batch: _Batch
    ) -> tuple[dict[int, tuple[str | None, str]], Sequence[Sequence[str]]]:
        """``{row index: (column, message)}`` for the rows of ``batch`` that are
        invalid, and its values by column (a row of the wrong width as empty values)."""
        problems: dict[int, tuple[str | None, str]] = {}
        columns = batch.columns
        if columns is None:  # a row has another width
            width = len(self.columns)
            rows = batch.rows()
            for i, row in enumerate(rows):
                if len(row) != width:
                    problems[i] = (None, f"{len(row)} fields where the header has {width}")
            fitted = (row if len(row) == width else [""] * width for row in rows)
            columns = list(zip(*fitted, strict=True))
        for check, values in zip(self.checks, columns, strict=True):
            if check.any_text or check.all_valid(values):
                continue
            for i, value in enumerate(values):
                if i not in problems:
                    message = check.problem(value)
                    if message is not None:
                        problems[i] = (check.column.name, message)
        return problems, columns

    @staticmethod
    def valid(
        columns: Sequence[Sequence[str]], problems: Mapping[int, object]
    ) -> Sequence[Sequence[str]]:
        """The values of the rows that have no problem, by column."""
        if not problems:
            return columns
        keep = [i for i in range(len(columns[0])) if i not in problems]
        return [[values[i] for i in keep] for values in columns]

    def empty_columns(self, columns: Sequence[Sequence[str]], known: set[str]) -> None:
        """Add to ``known`` the columns that have an empty value in ``columns``."""
        for column, values in zip(self.columns, columns, strict=True):
            if column.name not in known and not all(values):
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


class _Batch:
    """Data rows read together, with the line each starts on (``None``: not
    known); by column when every row has the header's ``width``."""

    def __init__(
        self,
        count: int,
        lines: Sequence[int] | None,
        width: int,
        *,
        columns: Sequence[Sequence[str]] | None = None,
        rows: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.count = count
        self.lines = lines
        self.width = width
        self._columns = columns
        self._rows = rows

    @property
    def columns(self) -> Sequence[Sequence[str]] | None:
        """The values by column, or ``None`` when a row has another width."""
        if self._columns is None and self._rows and set(map(len, self._rows)) == {self.width}:
            self._columns = list(zip(*self._rows, strict=True))
        return self._columns

    def rows(self) -> Sequence[Sequence[str]]:
        """The rows, each a sequence of its values."""
        if self._rows is None:
            self._rows = list(zip(*self._columns or (), strict=True))
        return self._rows

    def each_row(self) -> Iterable[Sequence[str]]:
        """The rows once, in order: a row read by column is made as it is needed."""
        if self._rows is None and self._columns is not None:
            return zip(*self._columns, strict=True)
        return self.rows()

    @classmethod
    def join(cls, parts: Sequence[_Batch], width: int) -> _Batch:
        """One batch of the rows of ``parts``, in order."""
        count = sum(p.count for p in parts)
        known = [p.lines for p in parts if p.lines is not None]
        lines = list(chain.from_iterable(known)) if len(known) == len(parts) else None
        columns = [p.columns for p in parts]
        if all(c is not None for c in columns):
            by_column = zip(*(c or () for c in columns), strict=True)
            joined = [list(chain.from_iterable(c)) for c in by_column]
            return cls(count, lines, width, columns=joined)
        return cls(count, lines, width, rows=list(chain.from_iterable(p.rows() for p in parts)))


def _failing(error: Exception) -> Iterator[str]:
    """Lines that cannot be read: reading one raises ``error``."""
    yield from ()
    raise error


class _RowReader:
    """The data rows of CSV text, read a batch at a time: what ``csv.reader``
    reads, blank lines left out, with the line each starts on.

    Lines without a quote (most lines of most files) are split on commas a
    run at a time and their values sliced out by column, about twice as fast
    as parsing them row by row. A line with a quote is parsed by
    ``csv.reader``, which reads on to the end of a field spanning lines; so is
    one with a NUL (refused before Python 3.11) or longer than the module's
    field size limit, so that the module raises the same errors.
    """

    def __init__(self, text: IO[str], width: int, line_num: int) -> None:
        self.text = text
        self.width = width
        #: Lines read so far, the header's included (``csv.reader``'s ``line_num``).
        self.line_num = line_num
        #: Lines of them parsed by ``csv.reader`` (the others were split).
        self.parsed = 0

    def read(self, size: int) -> _Batch | None:
        """The next ``size`` rows (fewer at the end), or ``None`` after the last."""
        parts: list[_Batch] = []
        count = 0
        while count < size:
            read = self._read(size - count)
            if read is None:
                break
            for part in read:
                if part.count:
                    parts.append(part)
                    count += part.count
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else _Batch.join(parts, self.width)

    def _read(self, size: int) -> list[_Batch] | None:
        """The rows of the next ``size`` lines (and of the lines after them that a
        field spanning lines takes), or ``None`` at the end of the text."""
        lines: list[str] = []
        try:
            lines.extend(islice(self.text, size))
        except UnicodeDecodeError as error:
            # csv.reader would have parsed the lines before this one first.
            before = self.line_num
            self._parts(lines, _failing(error))
            self.line_num = before + len(lines)
            raise
        return self._parts(lines, self.text) if lines else None

    def _parts(self, lines: list[str], more: Iterator[str]) -> list[_Batch]:
        """The rows of ``lines``, a run of lines at a time, split or parsed; a field
        spanning lines past the last reads on from ``more``."""
        block = "".join(lines)
        # A NUL (refused before Python 3.11) or a line as long as the field size
        # limit: csv.reader says whether they are fine, so the batch is parsed.
        refused = "\x00" in block or _has_long_line(block, csv.field_size_limit())
        if not (refused or '"' in block):
            return [self._split(lines, block)]
        if refused or block.count('"') * _SPLIT_RUN > len(lines):
            return [self._parse(chain(lines, more), len(lines))]
        # The lines with a quote, found from the offsets where lines end.
        ends = list(accumulate(map(len, lines)))
        quoted = []
        at = block.find('"')
        while at >= 0:
            quoted.append(bisect_right(ends, at))
            at = block.find('"', ends[quoted[-1]])
        parts = []
        rest = iter(lines)
        first = self.line_num
        for start, stop in _runs(quoted):
            done = self.line_num - first  # lines of ``lines`` read
            if stop <= done:
                continue  # in a field spanning lines, parsed already
            if start > done:
                run = list(islice(rest, start - done))
                parts.append(self._split(run, "".join(run)))
            parts.append(self._parse(chain(rest, more), stop - max(start, done)))
        if self.line_num - first < len(lines):
            run = list(rest)
            parts.append(self._split(run, "".join(run)))
        return parts

    def _split(self, lines: list[str], block: str) -> _Batch:
        """The rows of ``lines`` (``block``, joined), none with a quote, split on commas."""
        first = self.line_num + 1
        self.line_num += len(lines)
        numbers: Sequence[int] = range(first, first + len(lines))
        if any(map(lines.__contains__, _BREAKS)):  # blank lines, left out
            numbered = [(n, line) for n, line in enumerate(lines, first) if line not in _BREAKS]
            numbers = [n for n, _ in numbered]
            lines = [line for _, line in numbered]
            block = "".join(lines)
        width = self.width
        if not lines:
            return _Batch(0, numbers, width, rows=[])
        # Each line ends at its one line break, the last one perhaps at none.
        if "\r" in block:
            block = block.replace("\r\n", "\n").replace("\r", "\n")
        if block.endswith("\n"):
            block = block[:-1]
        if set(map(str.count, lines, repeat(","))) == {width - 1}:
            values = block.replace("\n", ",").split(",")
            columns = [values[i::width] for i in range(width)]
            return _Batch(len(lines), numbers, width, columns=columns)
        rows = [line.split(",") for line in block.split("\n")]
        return _Batch(len(lines), numbers, width, rows=rows)

    def _parse(self, source: Iterator[str], count: int) -> _Batch:
        """The rows of the next ``count`` records ``csv.reader`` parses from ``source``
        (a blank line is a record without a row; a record may span lines)."""
        reader = csv.reader(source, strict=True)
        first = self.line_num + 1
        try:
            records = list(islice(reader, count))
        finally:
            self.line_num += reader.line_num
            self.parsed += reader.line_num
        numbers: Sequence[int]
        if reader.line_num == len(records):  # one line a record
            if all(records):
                lines = range(first, first + len(records))
                return _Batch(len(records), lines, self.width, rows=records)
            numbers = list(compress(range(first, first + len(records)), records))
        else:  # a record with n line breaks in its fields spans n + 1 lines
            numbers = []
            for record in records:
                if record:
                    numbers.append(first)
                first += 1 + sum(map(_line_breaks, record))
        return _Batch(len(numbers), numbers, self.width, rows=list(filter(None, records)))


def _has_long_line(block: str, limit: int) -> bool:
    """Whether a line of ``block`` (lines joined) has ``limit`` characters or more
    before its line break, looked for a window of ``limit`` characters at a time."""
    start = 0
    while len(block) - start >= limit:
        end = max(block.rfind("\n", start, start + limit), block.rfind("\r", start, start + limit))
        if end < 0:
            return True
        start = end + 1
    return False


def _line_breaks(value: str) -> int:
    """The line breaks in ``value``: CR LF, CR or LF."""
    return value.count("\n") + value.count("\r") - value.count("\r\n")


def _runs(numbers: Iterable[int]) -> Iterator[tuple[int, int]]:
    """The runs of consecutive ``numbers`` (ascending), as ``(first, last + 1)``."""
    start = stop = -1
    for n in numbers:
        if n != stop:
            if stop > start:
                yield start, stop
            start = n
        stop = n + 1
    if stop > start:
        yield start, stop


class _Input:
    """A run's open source file and target connection, positioned at a data row."""

    def __init__(
        self,
        plan: _Plan,
        source: IO[bytes],
        conn: sqlite3.Connection,
        empty: Iterable[str] | None,
        *,
        split: bool,
    ) -> None:
        self.plan = plan
        self.source = source
        self.conn = conn
        self.text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
        header = csv.reader(self.text, strict=True)
        self.layout = _Layout.from_header(next(header, None), plan.table, plan.key)
        self.width = len(self.layout.columns)
        # Lines are split only in a file validated without a quote: elsewhere
        # csv.reader, reading straight on, is as fast (no line numbers needed here).
        self.reader = _RowReader(self.text, self.width, header.line_num) if split else None
        self.rows = filter(None, header)
        self.position = 0
        self.sql = self.layout.upsert_sql(empty)

    def read(self, size: int) -> _Batch | None:
        """The next ``size`` rows (fewer at the end), or ``None`` after the last."""
        if self.reader is not None:
            return self.reader.read(size)
        rows = list(islice(self.rows, size))
        return _Batch(len(rows), None, self.width, rows=rows) if rows else None

    def skip_to(self, start: int) -> None:
        while self.position < start:
            batch = self.read(min(start - self.position, VALIDATION_BATCH))
            if batch is None:
                break
            self.position += batch.count
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
        rows, invalid, to_create, to_update, fingerprint, empty, split = self._validate(run, plan)
        # What processing relies on: the file as validated, the columns with empty
        # values, whether its lines can be split (none has a quote).
        run.cursor.update({"source": fingerprint, "empty": empty, "split": split})
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
        self, run: JobRun, plan: _Plan
    ) -> tuple[int, int, int, int, dict[str, int], list[str], bool]:
        """Read the whole file: rows, invalid rows, to create, to update, its
        fingerprint, the columns with empty values and whether no line was parsed."""
        source = self._open_source(run, plan)
        conn = connect(plan.database.path)
        rows = invalid = existing = 0
        empty: set[str] = set()
        try:
            fingerprint = self._fingerprint(source)
            text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
            header = csv.reader(text, strict=True)
            reader: _RowReader | None = None
            try:
                layout = _Layout.from_header(next(header, None), plan.table, plan.key)
                reader = _RowReader(text, len(layout.columns), header.line_num)
                lookup = layout.existing_keys_sql()
                key_index = layout.key_index
                # Into an empty table every row creates: no key to look up.
                table = quote(plan.table.name)
                empty_table = conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None
                found: set[str] = set()
                while (batch := reader.read(VALIDATION_BATCH)) is not None:
                    rows += batch.count
                    problems, columns = layout.check(batch)
                    valid = layout.valid(columns, problems)
                    layout.empty_columns(valid, empty)
                    if not empty_table:
                        keys = valid[key_index]
                        found = {k for (k,) in conn.execute(lookup, [json.dumps(keys)])}
                        existing += sum(1 for k in keys if k in found) if found else 0
                    if layout.missing_required:
                        for i, key in enumerate(columns[key_index]):
                            if i not in problems and key not in found:
                                problems[i] = (
                                    layout.missing_required[0],
                                    "the file has no column "
                                    f"{layout.missing_required[0]!r}, which a new row needs",
                                )
                    if problems:
                        assert batch.lines is not None  # always known while validating
                        for i in sorted(problems):
                            self._row_error(run, batch.lines[i], *problems[i], kept=invalid)
                            invalid += 1
            except (csv.Error, UnicodeDecodeError) as error:
                line = header.line_num if reader is None else reader.line_num
                raise InvalidDataError(
                    f"the file is not valid CSV (UTF-8) near line {line}: {error}"
                ) from None
            finally:
                text.detach()
        finally:
            source.close()
            conn.close()
        created = rows - invalid - existing
        split = reader is not None and not reader.parsed
        return rows, invalid, created, existing, fingerprint, sorted(empty), split

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
            batch = state.read(size)
            if batch is None:
                return 0
            state.position += batch.count
            rows: Iterable[Sequence[Any]] = batch.each_row()
            if state.plan.on_error == "skip" and run.result.get("invalid_count"):
                rows = self._valid_rows(state, batch)
            hex_columns = state.layout.hex_columns()
            if hex_columns:
                rows = [
                    [
                        (bytes.fromhex(v) if v else None) if i in hex_columns else v
                        for i, v in enumerate(row)
                    ]
                    for row in rows
                ]
            conn = state.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(state.sql, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            self._close(run)
            raise
        return batch.count

    @staticmethod
    def _valid_rows(state: _Input, batch: _Batch) -> Sequence[Sequence[str]]:
        layout = state.layout
        problems, columns = layout.check(batch)
        if layout.missing_required:
            keys = [k for i, k in enumerate(columns[layout.key_index]) if i not in problems]
            found = {
                k for (k,) in state.conn.execute(layout.existing_keys_sql(), [json.dumps(keys)])
            }
            for i, key in enumerate(columns[layout.key_index]):
                if i not in problems and key not in found:
                    problems[i] = (None, "")
        return [row for i, row in enumerate(batch.rows()) if i not in problems]

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
            cursor = run.cursor
            state = _Input(
                plan, source, conn, cursor.get("empty"), split=cursor.get("split", False)
            )
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
