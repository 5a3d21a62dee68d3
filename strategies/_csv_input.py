"""What one import reads and writes: its plan, and a run's open input."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

from ._csv_checks import _Layout
from ._csv_lines import _Batch, _RowReader
from ._sqlite import AllowedDatabase, Column, Table


@dataclass
class _Plan:
    """What one import reads and writes, checked against the real schema."""

    database: AllowedDatabase
    table: Table
    key: Column
    on_error: str
    empty_as: str
    file_key: str | None
    path: Path | None


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
        quoted: bool = False,
    ) -> None:
        self.plan = plan
        self.source = source
        self.conn = conn
        self.text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
        header = csv.reader(self.text, strict=True)
        self.layout = _Layout.from_header(next(header, None), plan.table, plan.key)
        self.width = len(self.layout.columns)
        # Lines are split only in a file validated without a quote: elsewhere
        # csv.reader, reading straight on, is as fast (no line numbers needed
        # here), unless fields written "" must be told from empty ones.
        self.reader = (
            _RowReader(self.text, self.width, header.line_num, mark_quoted=quoted)
            if split or quoted
            else None
        )
        self.rows = filter(None, header)
        self.position = 0
        bindings = self.layout.bindings(empty, quoted=quoted)
        self.sql = self.layout.upsert_sql(bindings)
        #: (position, function) for each value that is not bound as its text.
        self.converters = [(i, f) for i, (_, f) in enumerate(bindings) if f is not None]

    def read(self, size: int) -> _Batch | None:
        """The next ``size`` rows (fewer at the end), or ``None`` after the last."""
        if self.reader is not None:
            return self.reader.read(size)
        rows = list(islice(self.rows, size))
        return _Batch(len(rows), None, self.width, rows=rows) if rows else None

    def values(self, rows: _Batch | Sequence[Sequence[str]]) -> Iterable[Sequence[Any]]:
        """The values to bind for the rows of a batch (or for rows given by column)."""
        if isinstance(rows, _Batch):
            if not self.converters:
                return rows.each_row()
            columns = rows.columns
            if columns is None:  # pragma: no cover - a row of another width is invalid
                raise ValueError("rows of different widths cannot be written")
        else:
            columns = rows
        if self.converters:
            columns = list(columns)
            for i, convert in self.converters:
                columns[i] = list(map(convert, columns[i]))
        return zip(*columns, strict=True)

    def skip_to(self, start: int, step: int) -> None:
        """Read on to data row ``start``, ``step`` rows at a time."""
        while self.position < start:
            batch = self.read(min(start - self.position, step))
            if batch is None:
                break
            self.position += batch.count
        self.position = start

    def close(self) -> None:
        try:
            self.text.close()
        finally:
            self.conn.close()
