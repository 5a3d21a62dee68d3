"""``csv-import``: a CSV file into an allow-listed SQLite table, upserting by a key.

The application says which databases (and tables) may be written and which
directories files may be read from; a job's context only picks among them::

    jobs.register(CsvImport(databases={"shop": {"path": "shop.db", "tables": ["products"]}},
                            paths=["uploads"]))
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
import errno
import io
import json
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from batchjobs import BatchJobStrategy, InvalidDataError, JobDraft, JobRun
from batchjobs.files import FileStore

from ._csv_checks import _Layout
from ._csv_input import _Input, _Plan
from ._csv_lines import _Batch, _RowReader
from ._sqlite import (
    allowed_databases,
    check_context_keys,
    connect,
    open_table,
    quote,
    resolve_table,
    type_prefixed,
)

__all__ = [
    "EMPTY_AS",
    "ENV_DATABASES",
    "ENV_PATHS",
    "ON_ERROR_POLICIES",
    "ROW_ERRORS_KEPT",
    "CsvImport",
]

#: The allow-list of the instance the entry point registers: a JSON object of
#: name -> path, or name -> {"path": ..., "tables": [...]}.
ENV_DATABASES = "BATCHJOBS_CSV_IMPORT_DATABASES"
#: Directories (or files) a context's ``path`` may name, joined by ``os.pathsep``.
ENV_PATHS = "BATCHJOBS_CSV_IMPORT_PATHS"
CONTEXT_KEYS = ("database", "table", "file_key", "path", "key", "on_error", "empty_as")
ON_ERROR_POLICIES = ("fail", "skip")
#: ``empty_as``: PostgreSQL's ``COPY … CSV`` convention (an empty unquoted field
#: is NULL, ``""`` an empty string), or every empty field NULL (other tools' files).
EMPTY_AS_COPY, EMPTY_AS_NULL = "copy", "null"
EMPTY_AS = (EMPTY_AS_COPY, EMPTY_AS_NULL)
#: Row errors kept in ``result.errors``; ``result.invalid_count`` counts them all.
ROW_ERRORS_KEPT = 50
#: Rows validated (and keys looked up) at a time while pre-processing.
VALIDATION_BATCH = 5000
ROW_ERROR_CODE = "invalid_row"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)


def _open_regular_file(path: Path, batch_type: str) -> IO[bytes]:
    """``path`` open for reading, refused unless it is a regular file (checked on the
    open descriptor, so nothing swapped in after a check is read instead).

    Opened without blocking, then set back to blocking reads: opening a FIFO
    swapped in for the file would otherwise wait for a writer, for ever.
    """
    flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC | _BINARY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InvalidDataError(f"{batch_type}: no file at path {str(path)!r}") from None
    except OSError as error:
        if error.errno == errno.ELOOP:  # the last part became a link
            raise InvalidDataError(f"{batch_type}: {str(path)!r} is a link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidDataError(f"{batch_type}: {str(path)!r} is not a regular file")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class CsvImport(BatchJobStrategy):
    """Import a CSV file into an allow-listed SQLite table (``csv-import``).

    ``databases`` maps the names contexts use to ``{"path": ..., "tables":
    [...]}``, the tables jobs may write (``"tables": "*"``: every table, said
    explicitly; a bare path is refused with ``ValueError``); ``paths`` lists
    the directories (or files) a context's ``path`` may read. Left out, they
    are read from ``BATCHJOBS_CSV_IMPORT_DATABASES`` (JSON) and
    ``BATCHJOBS_CSV_IMPORT_PATHS`` (joined by ``os.pathsep``); without them
    nothing may be imported. Files in the file store (``file_key``) may be
    read when the job's creator owns them.

    Context: ``table``; ``database`` (optional when one is allowed);
    ``file_key`` or ``path``; ``key`` (a unique column, default the primary
    key); ``on_error``: ``fail`` (default: an invalid row fails the job
    before anything is written) or ``skip`` (invalid rows are left out);
    ``empty_as``: ``copy`` (default, PostgreSQL's ``COPY … CSV``: an empty
    unquoted field is NULL, ``""`` is an empty string, as ``csv-export``
    writes them) or ``null`` (every empty field is NULL). An empty field in a
    NOT NULL text column is ``''``; BLOB columns take hexadecimal.
    """

    batch_type = "csv-import"
    chunk_size = 5000

    def __init__(
        self,
        databases: Mapping[str, Any] | None = None,
        *,
        paths: Iterable[str | os.PathLike[str]] | None = None,
    ) -> None:
        self.databases = allowed_databases(
            databases, ENV_DATABASES, batch_type=self.batch_type, require_tables=True
        )
        if paths is None:
            paths = [p for p in os.environ.get(ENV_PATHS, "").split(os.pathsep) if p]
        elif isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = tuple(Path(p).resolve() for p in paths)

    # -- the plan -----------------------------------------------------------------

    def _plan(self, context: Mapping[str, Any], *, creating: bool = False) -> _Plan:
        """What ``context`` imports, checked; ``creating``: also that its path is a
        file now (while a job runs, opening the file checks that)."""
        kind = self.batch_type
        database, name = resolve_table(kind, self.databases, context, env=ENV_DATABASES)
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
        empty_as = context.get("empty_as", EMPTY_AS_COPY)
        if empty_as not in EMPTY_AS:
            raise InvalidDataError(f"{kind}: context.empty_as must be 'copy' or 'null'")
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
            empty_as=empty_as,
            file_key=file_key,
            path=None if path is None else self._allowed_path(path, check_file=creating),
        )

    def _allowed_path(self, raw: Any, *, check_file: bool) -> Path:
        """``raw`` resolved, refused unless it is under an allowed directory (and,
        with ``check_file``, a file now: the open checks again, on the descriptor)."""
        if not isinstance(raw, str) or not raw or "\x00" in raw:
            raise InvalidDataError(f"{self.batch_type}: context.path must be a file path")
        path = Path(raw).resolve()
        if not self.paths:
            raise InvalidDataError(
                f"{self.batch_type}: the application allows no directory to import from; "
                f"register the strategy with paths=[...] or set {ENV_PATHS}"
            )
        if not any(path == allowed or allowed in path.parents for allowed in self.paths):
            raise InvalidDataError(
                f"{self.batch_type}: path {raw!r} is outside the directories the application "
                f"allows imports from (paths=[...] or {ENV_PATHS})"
            )
        if check_file and not path.is_file():
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
        path = self._allowed_path(str(plan.path), check_file=False)
        return _open_regular_file(path, self.batch_type)

    @staticmethod
    def _fingerprint(source: IO[bytes]) -> dict[str, int]:
        info = os.fstat(source.fileno())
        return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}

    # -- hooks --------------------------------------------------------------------

    @type_prefixed
    def prepare(self, draft: JobDraft) -> JobDraft:
        """Refuse a context that names anything the application does not allow,
        or a ``file_key`` of a file the job's creator does not own."""
        check_context_keys(self.batch_type, draft.context, CONTEXT_KEYS)
        plan = self._plan(draft.context, creating=True)
        files, key = draft.files, plan.file_key
        # A missing file fails the job when it is read; another's is refused now.
        if key is not None and files is not None and files.exists(key):
            files.check_owner(key)
        context = {
            **draft.context,
            "database": plan.database.name,
            "table": plan.table.name,
            "key": plan.key.name,
            "on_error": plan.on_error,
            "empty_as": plan.empty_as,
        }
        if plan.path is not None:
            context["path"] = str(plan.path)
        draft.context = context
        return draft

    @type_prefixed
    def pre_process(self, run: JobRun) -> None:
        """Validate every row; count creates and updates into ``stat_descriptors``.

        With ``on_error: fail`` an invalid row fails the job here, before
        anything is written; with ``skip`` invalid rows are reported in
        ``result.errors`` (the first 50) and counted in ``result.invalid_count``.
        """
        plan = self._plan(run.job.context)
        self._forget_row_errors(run)
        rows, invalid, to_create, to_update, saved = self._validate(run, plan)
        run.cursor.update(saved)
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

    def _validate(self, run: JobRun, plan: _Plan) -> tuple[int, int, int, int, dict[str, Any]]:
        """Read the whole file: rows, invalid rows, to create, to update, and what
        processing relies on (for the run's cursor): the file's fingerprint, the
        columns with empty values, whether its lines can be split (none has a
        quote) and whether some fields are written ``""``."""
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
                reader = _RowReader(
                    text,
                    len(layout.columns),
                    header.line_num,
                    mark_quoted=plan.empty_as == EMPTY_AS_COPY,
                )
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
        saved = {
            "source": fingerprint,
            "empty": sorted(empty),
            "split": reader is not None and not reader.parsed,
            "quoted": reader is not None and reader.quoted_empty > 0,
        }
        return rows, invalid, created, existing, saved

    def _row_error(
        self, run: JobRun, line: int, column: str | None, message: str, *, kept: int
    ) -> None:
        where = f"line {line}" + (f", column {column!r}" if column else "")
        if kept < ROW_ERRORS_KEPT:
            run.add_error(f"{where}: {message}", ROW_ERROR_CODE, line=line, column=column)
        else:
            run.result["error_count"] = run.result.get("error_count", 0) + 1

    @type_prefixed
    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        """Upsert data rows ``[start, start + size)`` in one transaction."""
        try:
            state = self._input(run, start)
            batch = state.read(size)
            if batch is None:
                return 0
            state.position += batch.count
            if state.plan.on_error == "skip" and run.result.get("invalid_count"):
                rows = state.values(self._valid_columns(state, batch))
            else:
                rows = state.values(batch)
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
    def _valid_columns(state: _Input, batch: _Batch) -> Sequence[Sequence[str]]:
        """The values of the valid rows of ``batch``, by column."""
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
        return layout.valid(columns, problems)

    @type_prefixed
    def finalize(self, run: JobRun) -> None:
        """Close the file and the database; record how many rows were imported."""
        self._close(run)
        run.result["imported"] = run.result.get("count", 0) - run.result.get("invalid_count", 0)

    def on_cancel(self, run: JobRun) -> None:
        """Close the file and the database (chunks already committed stay)."""
        self._close(run)

    def tables(self) -> list[tuple[str, str]]:
        """The ``(database, table)`` pairs a job may import into, for a chooser."""
        choices: list[tuple[str, str]] = []
        for allowed in self.databases.values():
            names: Iterable[str] = sorted(allowed.tables or ())
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
            choices.extend((allowed.name, name) for name in names)
        return choices

    @type_prefixed
    def build_template(self, table: str | None = None, database: str | None = None) -> str:
        """The header row of the table to import into (``table`` when several are allowed)."""
        choices = [
            (self.databases[d], t)
            for d, t in self.tables()
            if (database is None or d == database) and (table is None or t.lower() == table.lower())
        ]
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
                plan,
                source,
                conn,
                cursor.get("empty"),
                split=cursor.get("split", False),
                quoted=cursor.get("quoted", False),
            )
            state.skip_to(start, VALIDATION_BATCH)
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
