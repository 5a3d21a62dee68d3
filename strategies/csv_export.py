"""``csv-export``: a table of an allow-listed SQLite database to a CSV file.

The application says which databases (and tables) may be exported; a job's
context only picks among them::

    jobs.register(CsvExport(databases={"shop": {"path": "shop.db", "tables": ["products"]}}))
    jobs.create("csv-export", {"table": "products", "columns": ["id", "name"],
                               "filter": {"status": "active"}, "order_by": "-price"})

The file follows PostgreSQL's ``COPY … CSV`` convention: NULL is an empty
unquoted field and an empty string is ``""``, so that csv-import reads back
exactly what was exported. It is written in chunks read with a keyset cursor
(never OFFSET); each checkpoint saves the file's length with the last key,
and a resumed job cuts the file back to that length, so the finished file is
byte for byte the one an uninterrupted run writes.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

from batchjobs import BatchJobStrategy, InvalidDataError, JobDraft, JobRun

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
    type_prefixed,
)

__all__ = ["ENV_DATABASES", "CsvExport"]

#: The allow-list of the instance the entry point registers: a JSON object of
#: name -> path, or name -> {"path": ..., "tables": [...]}.
ENV_DATABASES = "BATCHJOBS_CSV_EXPORT_DATABASES"
CONTEXT_KEYS = ("database", "table", "columns", "filter", "order_by")
#: Where exports are stored in the file store; the job id names the file.
FILE_KEY_TEMPLATE = "exports/{id}.csv"


def _encode_key(value: Any) -> Any:
    """A key value as JSON can hold it in ``run.cursor``."""
    if isinstance(value, bytes):
        return {"blob": value.hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"real": repr(value)}
    return value


def _decode_key(value: Any) -> Any:
    if isinstance(value, dict):
        return bytes.fromhex(value["blob"]) if "blob" in value else float(value["real"])
    return value


def _copy_csv(rows: Sequence[Sequence[Any]]) -> str:
    """``rows`` as CSV in PostgreSQL's ``COPY … CSV`` convention: NULL is an empty
    unquoted field, an empty string ``""``, everything else as ``csv.writer``
    writes it (quoted only when it must be)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # csv.writer writes '' and None alike: rows with an empty string are
    # written a field at a time.
    if not any("" in row for row in rows):
        writer.writerows(rows)
        return buffer.getvalue()
    for row in rows:
        if "" in row:
            buffer.write(",".join(map(_copy_field, row)) + "\r\n")
        else:
            writer.writerow(row)
    return buffer.getvalue()


def _copy_field(value: Any) -> str:
    """One field of a row that holds an empty string, as ``_copy_csv`` writes it."""
    if value is None:
        return ""
    if value == "":
        return '""'
    buffer = io.StringIO()
    # The default line terminator: it is what makes csv quote line breaks.
    csv.writer(buffer).writerow([value])
    return buffer.getvalue()[:-2]


def _hex_blobs(rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    """Rows with BLOB values written as hexadecimal text (csv would write ``b'..'``)."""
    if bytes not in set(map(type, chain.from_iterable(rows))):
        return rows
    return [[v.hex() if isinstance(v, bytes) else v for v in row] for row in rows]


@dataclass(frozen=True)
class _Plan:
    """What one export reads, checked against the real schema; all SQL is built here."""

    database: AllowedDatabase
    table: Table
    columns: tuple[Column, ...]
    filters: tuple[tuple[Column, Any], ...]
    #: Keyset: SQL expressions (quoted schema names or a rowid alias), unique together.
    keys: tuple[str, ...]
    descending: bool
    #: Whether the first key (the order column) may be NULL.
    first_nullable: bool
    #: Where each key is in a selected row; the row's first ``len(columns)`` are written.
    key_positions: tuple[int, ...]
    extra_keys: tuple[str, ...]

    @property
    def header(self) -> list[str]:
        return [c.name for c in self.columns]

    def _where(self, last: Sequence[Any] | None) -> tuple[str, list[Any]]:
        conditions, params = [], []
        for column, value in self.filters:
            if value is None:
                conditions.append(f"{quote(column.name)} IS NULL")
            else:
                conditions.append(f"{quote(column.name)} = ?")
                params.append(value)
        if last is not None:
            condition, more = self._after(last)
            conditions.append(condition)
            params.extend(more)
        return (" WHERE " + " AND ".join(conditions)) if conditions else "", params

    def _after(self, last: Sequence[Any]) -> tuple[str, list[Any]]:
        """The keyset condition: rows strictly after ``last`` in export order."""
        op = "<" if self.descending else ">"
        keys = self.keys
        if len(keys) == 1:
            return f"{keys[0]} {op} ?", [last[0]]
        first, rest = keys[0], keys[1:]
        marks = ", ".join("?" for _ in keys)
        if self.first_nullable and last[0] is None:
            # NULLs come first in ascending order, last in descending order.
            tail = f"({', '.join(rest)}) {op} ({', '.join('?' for _ in rest)})"
            if self.descending:
                return f"({first} IS NULL AND {tail})", list(last[1:])
            return f"(({first} IS NULL AND {tail}) OR {first} IS NOT NULL)", list(last[1:])
        condition = f"({', '.join(keys)}) {op} ({marks})"
        if self.first_nullable and self.descending:
            condition = f"({condition} OR {first} IS NULL)"
        return condition, list(last)

    def count(self, conn: sqlite3.Connection) -> int:
        where, params = self._where(None)
        return int(
            conn.execute(
                f"SELECT count(*) FROM {quote(self.table.name)}{where}", params
            ).fetchone()[0]
        )

    def select(self, last: Sequence[Any] | None, limit: int) -> tuple[str, list[Any]]:
        """The SQL and parameters that read up to ``limit`` rows after ``last``."""
        where, params = self._where(last)
        selected = ", ".join([quote(c.name) for c in self.columns] + list(self.extra_keys))
        direction = " DESC" if self.descending else ""
        order = ", ".join(f"{k}{direction}" for k in self.keys)
        sql = f"SELECT {selected} FROM {quote(self.table.name)}{where} ORDER BY {order} LIMIT ?"
        return sql, [*params, limit]

    def fetch(self, conn: sqlite3.Connection, last: Sequence[Any] | None, limit: int) -> list[Any]:
        return conn.execute(*self.select(last, limit)).fetchall()

    def last_key(self, row: Sequence[Any]) -> list[Any]:
        return [_encode_key(row[i]) for i in self.key_positions]

    def written(self, rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        if self.extra_keys:
            rows = list(map(itemgetter(slice(0, len(self.columns))), rows))
        return _hex_blobs(rows)


class _Output:
    """An export file open at its last checkpoint, and the read connection."""

    def __init__(self, plan: _Plan, files: Any, key: str, offset: int) -> None:
        self.plan = plan
        self.conn = connect(plan.database.path)
        try:
            # Unbuffered: a failed chunk can never leave bytes to be flushed later.
            self.file = files.open_write(key, offset=offset).detach()
        except BaseException:
            self.conn.close()
            raise
        self.offset = offset
        if offset == 0:
            self.write([plan.header])

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        view = memoryview(_copy_csv(rows).encode("utf-8"))
        while view:
            written = self.file.write(view)
            view = view[written:]
            self.offset += written

    def close(self, *, sync: bool = False) -> None:
        try:
            if sync and not self.file.closed:
                os.fsync(self.file.fileno())
        finally:
            self.file.close()
            self.conn.close()


class CsvExport(BatchJobStrategy):
    """Export a table of an allow-listed SQLite database to a CSV file (``csv-export``).

    ``databases`` maps the names contexts use to ``{"path": ..., "tables":
    [...]}`` (``"tables": "*"`` for every table) or to a bare path, which
    allows every table of the database, those the application did not mean
    to expose included; left out, it is read from the JSON in
    ``BATCHJOBS_CSV_EXPORT_DATABASES``, and without that nothing may be
    exported. Databases are opened read-only.

    Context: ``table``; ``database`` (optional when one is allowed);
    ``columns`` (a list, default all); ``filter`` (``{"column": value}``,
    equality, ``null`` for IS NULL); ``order_by`` (a column, ``-`` first for
    descending; default the primary key or rowid). Result: ``file_key``
    (``exports/<job id>.csv`` in the file store) and ``file_size``.
    """

    batch_type = "csv-export"
    chunk_size = 5000

    def __init__(self, databases: Mapping[str, Any] | None = None) -> None:
        self.databases = allowed_databases(databases, ENV_DATABASES, batch_type=self.batch_type)

    # -- the plan -----------------------------------------------------------------

    def _plan(self, context: Mapping[str, Any]) -> _Plan:
        database, name = resolve_table(self.batch_type, self.databases, context, env=ENV_DATABASES)
        conn, table = open_table(self.batch_type, database, name)
        conn.close()
        columns = self._columns(table, context.get("columns"))
        filters = self._filters(table, context.get("filter"))
        order, descending = self._order(table, context.get("order_by"))
        integer_pk = table.integer_primary_key
        if integer_pk is not None:
            unique: tuple[str, ...] = (quote(integer_pk.name),)
        elif table.rowid is not None:
            unique = (table.rowid,)
        else:
            unique = tuple(quote(c.name) for c in table.primary_key)
        first_nullable = False
        keys = unique
        if order is not None and (quote(order.name),) != unique:
            keys = (quote(order.name), *unique)
            # Primary key columns may hold NULL in a rowid table (an SQLite quirk).
            first_nullable = not (order.notnull or (table.rowid is None and order.pk))
        # A key is read from the written columns only when its value cannot be a
        # BLOB turned into hex: the INTEGER PRIMARY KEY (the rowid itself).
        raw = {quote(c.name): i for i, c in enumerate(columns) if c == integer_pk}
        extra = tuple(k for k in keys if k not in raw)
        positions = tuple(raw[k] if k in raw else len(columns) + extra.index(k) for k in keys)
        return _Plan(
            database=database,
            table=table,
            columns=columns,
            filters=filters,
            keys=keys,
            descending=descending,
            first_nullable=first_nullable,
            key_positions=positions,
            extra_keys=extra,
        )

    def _columns(self, table: Table, wanted: Any) -> tuple[Column, ...]:
        if wanted is None:
            return table.columns
        if not isinstance(wanted, list) or not wanted:
            raise InvalidDataError(f"{self.batch_type}: context.columns must be a list of names")
        columns = tuple(table.column(name) for name in wanted)
        if len({c.name for c in columns}) != len(columns):
            raise InvalidDataError(f"{self.batch_type}: context.columns names a column twice")
        return columns

    def _filters(self, table: Table, wanted: Any) -> tuple[tuple[Column, Any], ...]:
        if wanted is None:
            return ()
        if not isinstance(wanted, Mapping):
            raise InvalidDataError(
                f"{self.batch_type}: context.filter must be an object of column: value"
            )
        filters = []
        for name, value in wanted.items():
            column = table.column(name)
            if isinstance(value, bool):
                value = int(value)
            elif value is not None and not isinstance(value, (str, int, float)):
                raise InvalidDataError(
                    f"{self.batch_type}: filter value for {column.name!r} must be a string, "
                    "a number, a boolean or null"
                )
            filters.append((column, value))
        return tuple(filters)

    def _order(self, table: Table, wanted: Any) -> tuple[Column | None, bool]:
        if wanted is None:
            return None, False
        if not isinstance(wanted, str) or not wanted:
            raise InvalidDataError(f"{self.batch_type}: context.order_by must be a column name")
        descending = wanted.startswith("-")
        return table.column(wanted[1:] if descending else wanted), descending

    # -- hooks --------------------------------------------------------------------

    @type_prefixed
    def prepare(self, draft: JobDraft) -> JobDraft:
        """Refuse a context that names anything the application does not allow."""
        check_context_keys(self.batch_type, draft.context, CONTEXT_KEYS)
        plan = self._plan(draft.context)
        draft.context = {
            **draft.context,
            "database": plan.database.name,
            "table": plan.table.name,
        }
        return draft

    @type_prefixed
    def pre_process(self, run: JobRun) -> None:
        """Count the rows to export and say so in ``stat_descriptors``."""
        plan = self._plan(run.job.context)
        conn = connect(plan.database.path)
        try:
            count = plan.count(conn)
        finally:
            conn.close()
        run.set_count(count)
        run.result["file_key"] = self.file_key(run)
        run.result["stat_descriptors"] = [
            {
                "key": "csv-export-count",
                "name": "Rows to export",
                "message": f"{count} rows of {plan.database.name}.{plan.table.name} "
                "will be exported",
            }
        ]

    @type_prefixed
    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        """Write the next ``size`` rows after the cursor's key; checkpoint the file length."""
        try:
            plan, output = self._output(run)
            last = run.cursor.get("last")
            after = None if last is None else [_decode_key(v) for v in last]
            rows = plan.fetch(output.conn, after, size + 1)
            more = len(rows) > size
            rows = rows[:size]
            if rows:
                output.write(plan.written(rows))
                run.cursor["last"] = plan.last_key(rows[-1])
                run.cursor["offset"] = output.offset
        except BaseException:
            self._close(run)
            raise
        done = start + len(rows)
        count = run.result.get("count")
        if not more and count != done:
            run.set_count(done)  # rows were deleted since they were counted
        elif more and (count is None or done >= count):
            run.set_count(done + 1)  # rows were added: keep going
        return len(rows)

    @type_prefixed
    def finalize(self, run: JobRun) -> None:
        """Close the file (synced to disk) and record ``file_key`` and ``file_size``."""
        try:
            _plan, output = self._output(run)
            size = output.offset
        finally:
            self._close(run, sync=True)
        run.result["file_key"] = self.file_key(run)
        run.result["file_size"] = size

    def on_cancel(self, run: JobRun) -> None:
        """Delete the partial file."""
        self._close(run)
        self._files(run).delete(self.file_key(run))

    # -- files --------------------------------------------------------------------

    def file_key(self, run: JobRun) -> str:
        """The file-store key of the job's export."""
        return FILE_KEY_TEMPLATE.format(id=run.job.id)

    @staticmethod
    def _files(run: JobRun) -> Any:
        if run.files is None:
            raise RuntimeError("csv-export needs a file store (BatchJobs.files)")
        return run.files

    def _output(self, run: JobRun) -> tuple[_Plan, _Output]:
        """The run's open output, opened at the last checkpoint on the run's first chunk."""
        found: _Output | None = run.state.get("output")
        if found is not None:
            return found.plan, found
        plan = self._plan(run.job.context)
        offset = run.cursor.get("offset", 0)
        output = run.closing(_Output(plan, self._files(run), self.file_key(run), offset))
        run.state["output"] = output
        return plan, output

    def _close(self, run: JobRun, *, sync: bool = False) -> None:
        output = run.state.pop("output", None)
        if output is not None:
            output.close(sync=sync)
