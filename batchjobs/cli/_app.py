"""The group and what its commands work on: ``--db``/``--redis``/``--app``, errors → exit codes."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import click

from ..app import DEFAULT_DB, BatchJobs
from ..errors import BatchJobError, StoreError
from ..store import check_location
from ..strategy import BatchJobStrategy
from ._validators import FilePath, Text

#: A watched or run job ended ``failed``, ``canceled`` or ``paused`` (or did not rest in time).
EXIT_JOB_FAILED = 1
#: Bad input or a refused operation (every ``BatchJobError``).
EXIT_USAGE = 2
#: Interrupted (Ctrl-C): the job stopped at a checkpoint, a worker resumes it.
EXIT_INTERRUPTED = 130


F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """Bad input or a refused operation: the message on stderr, exit status 2."""

    exit_code = EXIT_USAGE


class _Session:
    """The group's options; builds the ``BatchJobs`` on first use and closes what it built."""

    def __init__(
        self,
        db: str,
        redis_url: str | None,
        app: str | None,
        prog: str,
        files_dir: str | None = None,
    ) -> None:
        self.db, self.redis_url, self.app, self.prog = db, redis_url, app, prog
        self.files_dir = files_dir
        self.given: BatchJobs | None = None  # the host's or the --app MODULE:ATTR one
        self._jobs: BatchJobs | None = None
        self._owned = False

    @property
    def jobs(self) -> BatchJobs:
        if self._jobs is None:
            self._jobs = self.given or self._load()
        return self._jobs

    def _load(self) -> BatchJobs:
        target, attr = _split_app(self.app) if self.app else ("", None)
        module = _import(target) if self.app else None
        if module is not None and attr is not None:
            jobs, self._owned = _load_instance(module, attr, self.app or "")
            return jobs
        try:
            check_location(self.db)  # a kind of database this version opens
            Text().convert(self.db, None, None)  # a path the database can open
        except click.BadParameter as error:
            raise click.BadParameter(error.message, param_hint="'--db'") from None
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="'--db'") from None
        try:
            jobs = BatchJobs(self.db, redis_url=self.redis_url, files_dir=self.files_dir)
        except StoreError as error:
            raise CommandError(error.message) from None
        except ValueError as error:
            # The one value BatchJobs checks among these options once the database's is
            # checked: the Redis URL.
            raise click.BadParameter(str(error), param_hint="'--redis'") from None
        self._owned = True
        if module is not None:
            strategies = _strategies_defined_in(module)
            if not strategies:
                jobs.close()
                raise click.BadParameter(
                    f"module {module.__name__!r} defines no BatchJobStrategy subclass "
                    "(name a BatchJobs with MODULE:ATTR)",
                    param_hint="'--app'",
                )
            for strategy in strategies:
                jobs.registry.register(strategy, origin=f"app module {module.__name__}")
        return jobs

    def close(self) -> None:
        if self._jobs is not None and self._owned:
            self._jobs.close()


def _split_app(spec: str) -> tuple[str, str | None]:
    """``--app``'s module or file, and the attribute after its last ``:`` if any."""
    target, sep, attr = spec.rpartition(":")
    if not sep or "/" in attr or "\\" in attr:  # no ATTR; or a drive: C:\app.py
        return spec, None
    return target, attr


def _is_path(target: str) -> bool:
    return target.endswith(".py") or any(s in target for s in ("/", os.sep, os.altsep) if s)


def _import(target: str) -> ModuleType:
    """The module ``--app`` names: a module name, or the path of a .py file or a package."""
    path = None
    if _is_path(target):
        path, name = _locate(target)
    else:
        name = target
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise click.BadParameter(f"{name!r} is not a module name", param_hint="'--app'")
        # Like ``flask --app``: modules next to where the command runs are importable.
        if not {"", ".", os.getcwd()} & set(sys.path):
            sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        raise click.BadParameter(f"cannot import {name!r}: {error}", param_hint="'--app'") from None
    found = getattr(module, "__file__", None)
    if path is not None and (found is None or Path(found).resolve() != path):
        raise click.BadParameter(
            f"{target} imports as {name!r}, which is {found or 'a built-in module'}",
            param_hint="'--app'",
        )
    return module


def _locate(target: str) -> tuple[Path, str]:
    """The file ``target`` names and its module name; makes its top package importable.

    Like ``flask --app``: the name is the file's, under the packages (folders
    with an ``__init__.py``) it sits in, and the folder above the outermost
    one goes on ``sys.path``.
    """
    path = Path(target)
    if not path.exists():
        raise click.BadParameter(f"{target}: no such file", param_hint="'--app'")
    path = path.resolve()
    if path.is_dir():
        path = path / "__init__.py"
        if not path.is_file():
            raise click.BadParameter(
                f"{target} is a folder without an __init__.py, not a package",
                param_hint="'--app'",
            )
    elif path.suffix != ".py":
        raise click.BadParameter(f"{target} is not a .py file", param_hint="'--app'")
    parts = [] if path.stem == "__init__" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    if not parts:  # pragma: no cover - an __init__.py at the file system's root
        raise click.BadParameter(f"{target} is not in a package", param_hint="'--app'")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return path, ".".join(parts)


def _load_instance(module: ModuleType, attr: str, spec: str) -> tuple[BatchJobs, bool]:
    """The ``BatchJobs`` at ``module``'s ``attr``, and whether the command must close it.

    An attribute of the module is the module's to close; what a factory
    returns is the command's, unless the module holds it too.
    """
    value: Any = module
    try:
        for part in attr.split("."):
            value = getattr(value, part)
    except AttributeError:
        raise click.BadParameter(
            f"module {module.__name__!r} has no attribute {attr!r}", param_hint="'--app'"
        ) from None
    made = callable(value) and not isinstance(value, BatchJobs)
    if made:
        what = f"{spec} is a {type(value).__name__}"
        try:
            inspect.signature(value).bind()
        except TypeError:
            raise click.BadParameter(
                f"{what} that takes arguments: name a BatchJobs or a function that "
                "returns one when called with none",
                param_hint="'--app'",
            ) from None
        except ValueError:  # no signature to read (some built-ins): calling it tells
            pass
        try:
            value = value()  # an application factory
        except TypeError as error:
            raise click.BadParameter(
                f"{what}; calling it failed: {error}", param_hint="'--app'"
            ) from None
    if not isinstance(value, BatchJobs):
        verb = "returned" if made else "is"
        raise click.BadParameter(
            f"{spec} {verb} a {type(value).__name__}, not a BatchJobs", param_hint="'--app'"
        )
    held = any(value is held for held in vars(module).values())
    return value, made and not held


def _strategies_defined_in(module: ModuleType) -> list[type[BatchJobStrategy]]:
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BatchJobStrategy)
        and value is not BatchJobStrategy
        and value.__module__ == module.__name__  # not one imported from elsewhere
        and value.batch_type  # abstract bases leave it empty
    ]


def _session() -> _Session:
    session = click.get_current_context().find_object(_Session)
    if session is None:  # pragma: no cover - only when a command is used outside the group
        raise RuntimeError("batchjobs commands run inside the batchjobs group")
    return session


def pass_jobs(f: F) -> F:
    """Decorate a command so that its first argument is the ``BatchJobs`` to work on."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(_session().jobs, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _Group(click.Group):
    """The command group; at the boundary, turns ``BatchJobError`` into exit status 2
    and a Ctrl-C no command handled into 130 (not click's "Aborted!" and 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchJobError as error:
            raise CommandError(error.message) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


@click.group(name="batchjobs", cls=_Group)
@click.option(
    "--db",
    envvar="BATCHJOBS_DB",
    default=f"./{DEFAULT_DB}",
    show_default=True,
    type=FilePath(dir_okay=False),
    metavar="PATH|URL",
    help="The SQLite file, or a postgresql:// URL [env: BATCHJOBS_DB].",
)
@click.option(
    "--files-dir",
    envvar="BATCHJOBS_FILES_DIR",
    type=FilePath(file_okay=False),
    help="Where job files are kept (default: beside the SQLite file; ./batchjobs-files "
    "with PostgreSQL) [env: BATCHJOBS_FILES_DIR].",
)
@click.option(
    "--redis",
    "redis_url",
    envvar="BATCHJOBS_REDIS_URL",
    type=Text(),
    metavar="URL",
    help="Mirror events to Redis [env: BATCHJOBS_REDIS_URL].",
)
@click.option(
    "--app",
    envvar="BATCHJOBS_APP",
    type=Text(),
    metavar="MODULE[:ATTR]",
    help="MODULE (or a path: app.py): register the strategies it defines; MODULE:ATTR: "
    "use that BatchJobs, or the one that function returns, and its settings "
    "[env: BATCHJOBS_APP].",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Log more, with tracebacks (of failed jobs too).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    db: str,
    files_dir: str | None,
    redis_url: str | None,
    app: str | None,
    verbose: bool,
) -> None:
    """Medusa-style batch jobs in a SQLite file or a PostgreSQL database.

    \b
    Examples:
      batchjobs --app examples.shout run shout --set words='["a", "b"]'
      export BATCHJOBS_APP=examples.shout
      batchjobs create shout --dry-run --set words='["a"]'
      batchjobs list --status pre_processed
      batchjobs worker
    """
    host_jobs = ctx.find_object(BatchJobs)
    session = _Session(db, redis_url or None, app or None, ctx.command_path, files_dir or None)
    session.given = host_jobs
    ctx.obj = session
    ctx.call_on_close(session.close)
    ctx.call_on_close(_log_to_stderr(verbose))


class _LineHandler(logging.Handler):
    """batchjobs' log records as lines on stderr: one line each, unless ``verbose``.

    Without ``verbose``: warnings and errors, no traceback, and no record of
    a job's failure (``batchjobs.jobs``: the command prints the job's errors).
    """

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.INFO if verbose else logging.WARNING)
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("batchjobs.http") and record.levelno < logging.WARNING:
            return  # serve prints its request log itself
        if not self.verbose and record.name == "batchjobs.jobs":
            return
        try:
            line = f"{record.levelname.lower()}: {record.getMessage()}"
            if self.verbose and record.exc_info:
                line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            click.echo(line, err=True)
        except Exception:
            self.handleError(record)


def _log_to_stderr(verbose: bool) -> Callable[[], None]:
    """Print batchjobs' log records on stderr while a command runs; returns the undo."""
    logger = logging.getLogger("batchjobs")
    handler = _LineHandler(verbose)
    level = logger.level
    logger.addHandler(handler)
    if verbose:
        logger.setLevel(logging.INFO)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return undo


def main() -> None:
    """The ``batchjobs`` console script."""
    cli(prog_name="batchjobs")
