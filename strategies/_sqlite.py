"""What the CSV strategies share: the allow-list, a table's schema, identifiers.

Nothing a job's context says ever reaches SQL as text: database names are
looked up in the application's allow-list, table and column names are
matched against the real schema and the schema's own spelling is quoted,
values are bound parameters.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from batchjobs import InvalidDataError

__all__ = [
    "ENGINE_CONTEXT_KEYS",
    "EVERY_TABLE",
    "AllowedDatabase",
    "Column",
    "Table",
    "allowed_databases",
    "check_context_keys",
    "connect",
    "open_table",
    "quote",
    "read_table",
    "resolve_table",
    "type_prefixed",
]

HookT = TypeVar("HookT", bound=Callable[..., Any])

#: Context keys the engine reserves; every strategy accepts them.
ENGINE_CONTEXT_KEYS = frozenset({"retry_count", "max_retry", "chunk_size"})
#: Seconds a connection waits for another writer before giving up.
BUSY_TIMEOUT = 60.0


def quote(name: str) -> str:
    """``name`` as an SQL identifier (only ever called with names read from the schema)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class AllowedDatabase:
    """A database the application allows, under the name job contexts use."""

    name: str
    path: Path
    #: Lower-cased table names; ``None`` allows every table.
    tables: frozenset[str] | None = None

    def allows(self, table: str) -> bool:
        """Whether ``table`` (any case) may be used."""
        return self.tables is None or table.lower() in self.tables


#: ``"tables": "*"``: every table of the database, said explicitly.
EVERY_TABLE = "*"


def _one_database(name: Any, value: Any, *, require_tables: bool) -> AllowedDatabase:
    if not isinstance(name, str) or not name:
        raise ValueError(f"database names must be non-empty strings, not {name!r}")
    tables: Any = None
    if isinstance(value, Mapping):
        unknown = set(value) - {"path", "tables"}
        if unknown or "path" not in value:
            raise ValueError(f"database {name!r}: give a path, or {{'path': ..., 'tables': [...]}}")
        path, tables = value["path"], value.get("tables")
    else:
        path = value
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"database {name!r}: the path must be a string, not {path!r}")
    if tables is None and require_tables:
        raise ValueError(
            f"database {name!r}: give the tables it may write: "
            f"{{'path': ..., 'tables': [...]}}, or 'tables': '*' for every table"
        )
    allowed: frozenset[str] | None = None
    if tables is not None and tables != EVERY_TABLE:
        if isinstance(tables, str) or not all(isinstance(t, str) and t for t in tables):
            raise ValueError(
                f"database {name!r}: tables must be a list of table names, or '*' for every table"
            )
        allowed = frozenset(t.lower() for t in tables)
    return AllowedDatabase(name=name, path=Path(path).resolve(), tables=allowed)


def allowed_databases(
    spec: Mapping[str, Any] | None,
    env: str,
    *,
    batch_type: str,
    require_tables: bool = False,
) -> dict[str, AllowedDatabase]:
    """The allow-list from ``spec``, or from the JSON in environment variable ``env``.

    ``spec`` maps the names job contexts use to ``{"path": ..., "tables":
    [...]}``, ``"tables": "*"`` for every table, or to a bare path, which
    allows every table too: unless ``require_tables`` (``ValueError``), as a
    strategy that writes does. Relative paths are resolved now, against the
    current directory. A ``ValueError``'s message starts with ``batch_type``,
    and ``env`` when the allow-list came from it.
    """
    where = f"{batch_type}: "
    if spec is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            return {}
        try:
            spec = json.loads(raw)
        except ValueError as error:
            raise ValueError(f"{where}{env} must be a JSON object: {error}") from None
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}{env} must be a JSON object of database name -> path")
        where += f"{env}: "
    try:
        return {
            name: _one_database(name, value, require_tables=require_tables)
            for name, value in spec.items()
        }
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None


def type_prefixed(hook: HookT) -> HookT:
    """A strategy's hook whose ``InvalidDataError`` messages start with its type
    (``csv-export: table 'products' has no column 'nope'``), wherever they came from."""

    @functools.wraps(hook)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return hook(self, *args, **kwargs)
        except InvalidDataError as error:
            prefix = f"{self.batch_type}: "
            if error.message.startswith(prefix):
                raise
            raise InvalidDataError(prefix + error.message) from None

    return cast(HookT, wrapper)


def check_context_keys(batch_type: str, context: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse context keys the strategy does not know (a typo, or an attempt at SQL)."""
    unknown = sorted(set(context) - set(known) - ENGINE_CONTEXT_KEYS)
    if unknown:
        raise InvalidDataError(
            f"{batch_type}: unknown context key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


def connect(path: Path, *, write: bool = False) -> sqlite3.Connection:
    """A connection to an existing database file, read-only unless ``write``."""
    mode = "rw" if write else "ro"
    try:
        conn = sqlite3.connect(
            f"{path.as_uri()}?mode={mode}",
            uri=True,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.OperationalError as error:
        raise InvalidDataError(f"cannot open the database: {error}") from None
    return conn


@dataclass(frozen=True)
class Column:
    """One column of a table, as the schema declares it."""

    name: str
    declared: str
    notnull: bool
    has_default: bool
    pk: int
    generated: bool

    @property
    def affinity(self) -> str:
        """SQLite's type affinity for the declared type: INTEGER, TEXT, BLOB, REAL, NUMERIC."""
        declared = self.declared.upper()
        if "INT" in declared:
            return "INTEGER"
        if "CHAR" in declared or "CLOB" in declared or "TEXT" in declared:
            return "TEXT"
        if "BLOB" in declared or not declared:
            return "BLOB"
        if "REAL" in declared or "FLOA" in declared or "DOUB" in declared:
            return "REAL"
        return "NUMERIC"


@dataclass(frozen=True)
class Table:
    """A table's name as the schema spells it, its columns and how rows are identified."""

    name: str
    columns: tuple[Column, ...]
    #: A name that reaches the rowid, or ``None`` for a WITHOUT ROWID table.
    rowid: str | None
    #: Columns whose values are unique per row, with the declared primary key first.
    unique_columns: frozenset[str]

    def column(self, name: Any, *, what: str = "column") -> Column:
        """The column called ``name`` (any case); ``InvalidDataError`` if there is none."""
        if isinstance(name, str):
            for column in self.columns:
                if column.name.lower() == name.lower():
                    return column
        raise InvalidDataError(f"table {self.name!r} has no {what} {name!r}")

    @property
    def primary_key(self) -> tuple[Column, ...]:
        """The primary key's columns, in key order (empty without one)."""
        return tuple(sorted((c for c in self.columns if c.pk), key=lambda c: c.pk))

    @property
    def integer_primary_key(self) -> Column | None:
        """The ``INTEGER PRIMARY KEY`` column that is the rowid, if there is one."""
        pk = self.primary_key
        if self.rowid is not None and len(pk) == 1 and pk[0].declared.upper() == "INTEGER":
            return pk[0]
        return None

    @property
    def writable(self) -> tuple[Column, ...]:
        """The columns an INSERT may set (generated columns left out)."""
        return tuple(c for c in self.columns if not c.generated)


def read_table(conn: sqlite3.Connection, name: str) -> Table | None:
    """The schema of table ``name`` (any case), or ``None`` if there is no such table."""
    found = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND lower(name) = lower(?) "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [name],
    ).fetchone()
    if found is None:
        return None
    table = found[0]
    columns = tuple(
        Column(
            name=row[1],
            declared=row[2] or "",
            notnull=bool(row[3]),
            has_default=row[4] is not None,
            pk=row[5],
            generated=row[6] in (2, 3),
        )
        for row in conn.execute("SELECT * FROM pragma_table_xinfo(?)", [table])
        if row[6] != 1  # hidden columns of virtual tables
    )
    taken = {c.name.lower() for c in columns}
    alias = next((a for a in ("rowid", "_rowid_", "oid") if a not in taken), None)
    rowid = None
    if alias is not None:
        try:
            conn.execute(f"SELECT {alias} FROM {quote(table)} LIMIT 0")
            rowid = alias
        except sqlite3.OperationalError:
            rowid = None  # WITHOUT ROWID
    unique = set()
    pk = [c.name for c in columns if c.pk]
    if len(pk) == 1:
        unique.add(pk[0].lower())
    indexes = conn.execute('SELECT name, "unique", partial FROM pragma_index_list(?)', [table])
    for index in indexes.fetchall():
        if index[1] and not index[2]:
            cols = conn.execute("SELECT name FROM pragma_index_info(?)", [index[0]]).fetchall()
            if len(cols) == 1 and cols[0][0] is not None:
                unique.add(cols[0][0].lower())
    return Table(name=table, columns=columns, rowid=rowid, unique_columns=frozenset(unique))


def resolve_table(
    batch_type: str,
    databases: Mapping[str, AllowedDatabase],
    context: Mapping[str, Any],
    *,
    env: str,
) -> tuple[AllowedDatabase, str]:
    """The allowed database and table a context names (checked against the allow-list only).

    ``context["database"]`` may be left out when exactly one database is allowed;
    ``env`` is the environment variable the allow-list may come from.
    """
    if not databases:
        raise InvalidDataError(
            f"{batch_type}: the application allows no database; register the strategy "
            f"with databases={{...}} or set {env}"
        )
    name = context.get("database")
    if name is None and len(databases) == 1:
        name = next(iter(databases))
    if not isinstance(name, str) or name not in databases:
        raise InvalidDataError(
            f"{batch_type}: database {name!r} is not allowed; allowed: "
            + ", ".join(sorted(databases))
        )
    database = databases[name]
    table = context.get("table")
    if not isinstance(table, str) or not table:
        raise InvalidDataError(f"{batch_type}: context.table must name a table")
    if not database.allows(table):
        allowed = ", ".join(sorted(database.tables or ()))
        raise InvalidDataError(
            f"{batch_type}: table {table!r} of database {name!r} is not allowed; allowed: {allowed}"
        )
    return database, table


def open_table(
    batch_type: str, database: AllowedDatabase, table: str, *, write: bool = False
) -> tuple[sqlite3.Connection, Table]:
    """A connection to ``database`` and the schema of its ``table``; refused if it has none."""
    if not database.path.is_file():
        raise InvalidDataError(f"{batch_type}: database {database.name!r} does not exist")
    conn = connect(database.path, write=write)
    try:
        schema = read_table(conn, table)
    except sqlite3.DatabaseError as error:
        conn.close()
        raise InvalidDataError(
            f"{batch_type}: cannot read database {database.name!r}: {error}"
        ) from None
    if schema is None:
        conn.close()
        raise InvalidDataError(f"{batch_type}: database {database.name!r} has no table {table!r}")
    return conn, schema
