"""How the values of a CSV file are checked against the columns they go to."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchjobs import InvalidDataError

from ._csv_lines import QUOTED_EMPTY, _Batch
from ._sqlite import Column, Table, quote

_INT64 = (-(2**63), 2**63 - 1)
# Patterns of the values SQLite's type affinity turns into numbers exactly, none
# matching the empty value. Written so that no character can be matched two ways:
# a value that fails takes time in proportion to its length, never its square.
# Compiled with re.ASCII: SQLite reads no other digits than 0-9.
_INTEGER = r"[+-]?\d{1,18}"
# Infinities too: SQLite stores them, Python writes them "inf" and "-inf".
_REAL = r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[iI][nN][fF])"
_PATTERNS = {
    "INTEGER": _INTEGER,
    "REAL": _REAL,
    "NUMERIC": _REAL,
    "HEX": r"(?:[0-9A-Fa-f]{2})+",
}
# Two dots in one value, when the values (joined by newlines) are digits and dots.
_TWO_DOTS = re.compile(r"\.\d*\.", re.ASCII)
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
            whole = re.compile(f"{item}(?:\n{item})*", re.ASCII)
            one = re.compile(_PATTERNS[kind] if kind != "INTEGER" else r"[+-]?\d+", re.ASCII)
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
        digits = "".join(values)
        # isdecimal() takes any script's digits; SQLite only 0-9.
        if digits.isascii():
            if self.kind == "INTEGER":
                # Digits only (an empty value adds none), at most 18 to a value.
                if digits.isdecimal() and max(map(len, values)) <= 18:
                    return True
            elif (
                self.kind != "HEX"
                # Digits and dots only, never a dot alone, at most one dot to a value.
                and digits.replace(".", "").isdecimal()
                and "." not in values
                and not _TWO_DOTS.search("\n".join(values))
            ):
                return True
        joined = "\n".join(values)
        return bool(self.whole.fullmatch(joined)) and joined.count("\n") == len(values) - 1

    def problem(self, value: str) -> str | None:
        """What is wrong with one value, or ``None``."""
        if value == "":
            # An empty string ("") is a text key like any other; NULL never is.
            text = self.kind is None and value is QUOTED_EMPTY
            return None if self.allow_empty or text else "a value is required"
        if self.one is None or self.kind is None:
            return None
        if not self.one.fullmatch(value):
            return f"{value[:40]!r} is not {_EXPECTED[self.kind]}"
        if self.kind == "INTEGER" and not _INT64[0] <= int(value) <= _INT64[1]:
            return f"{value[:40]!r} is out of range for an integer"
        return None

    def binding(self, n: int, *, maybe_empty: bool, quoted: bool) -> tuple[str, _Converter | None]:
        """How value ``n`` of a row is written: its SQL parameter, and the function
        that turns its text into the value to bind first (``None``: bound as text).

        Text is bound as it is, an empty field made NULL by ``NULLIF`` (or left
        ``''`` in a NOT NULL text column); with ``quoted`` (the file has fields
        written ``""``), an empty field of a text column is NULL and a ``""`` one
        is ``''``. Reals are parsed in Python, which rounds exactly where
        SQLite's own text conversion may be one unit off; hex becomes bytes.
        """
        parameter = f"?{n}"
        if self.kind == "HEX":
            return parameter, (_hex_or_null if maybe_empty else bytes.fromhex)
        if self.kind == "REAL":
            return parameter, (_real_or_null if maybe_empty else float)
        if self.kind == "NUMERIC":
            return parameter, _numeric
        if not maybe_empty or (self.kind is None and self.column.notnull):
            return parameter, None
        if self.kind is None and quoted:
            return parameter, _text_or_null
        return f"NULLIF({parameter}, '')", None


#: Turns a field's text into the value bound for it.
_Converter = Callable[[str], Any]


def _hex_or_null(text: str) -> bytes | None:
    if text:
        return bytes.fromhex(text)
    return b"" if text is QUOTED_EMPTY else None


def _real_or_null(text: str) -> float | None:
    return float(text) if text else None


def _numeric(text: str) -> int | float | None:
    """A NUMERIC column's value: an integer as one (exact), any other number a float."""
    if not text:
        return None
    if _NUMERIC_INTEGER.fullmatch(text):
        number = int(text)
        if _INT64[0] <= number <= _INT64[1]:
            return number
    return float(text)


def _text_or_null(text: str) -> str | None:
    return text if text or text is QUOTED_EMPTY else None


_NUMERIC_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)


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

    def bindings(
        self, empty: Iterable[str] | None = None, *, quoted: bool = False
    ) -> list[tuple[str, _Converter | None]]:
        """Each value's SQL parameter and converter (see ``_FieldCheck.binding``).

        ``empty`` names the columns that have empty values (``None``: any may);
        ``quoted``: whether some fields are written ``""`` (``QUOTED_EMPTY``).
        """
        maybe_empty = None if empty is None else set(empty)
        return [
            check.binding(
                n,
                maybe_empty=maybe_empty is None or check.column.name in maybe_empty,
                quoted=quoted,
            )
            for n, check in enumerate(self.checks, start=1)
        ]

    def upsert_sql(self, bindings: Sequence[tuple[str, _Converter | None]]) -> str:
        """The statement that writes one row: an upsert, or an update when a new row
        could not be made (SQLite checks NOT NULL before it sees the conflict)."""
        table, key = quote(self.table.name), quote(self.columns[self.key_index].name)
        values = [parameter for parameter, _convert in bindings]
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

    def existing_keys_sql(self) -> str:
        key = quote(self.columns[self.key_index].name)
        return (
            "SELECT j.value FROM json_each(?) AS j WHERE EXISTS "
            f"(SELECT 1 FROM {quote(self.table.name)} WHERE {key} = j.value)"
        )
