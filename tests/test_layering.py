"""Imports point one way: errors ← {models, limits} ← {signals, store, strategy, files} ←
service ← {pubsub, scheduler, schedules} ← app ← http ← cli; each third-party
library is imported by one module or package (APScheduler by two, for two uses).

A module of a package (``batchjobs/cli/_jobs.py``) has the package's layer
(``cli``); it may import the modules of its own package, and what its layer may.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batchjobs"
LAYERS = {
    "_checkout": 0,  # where a checkout's built-in strategies are (imports nothing of ours)
    "errors": 0,
    "models": 1,
    "limits": 1,
    "signals": 2,
    "store": 2,
    "strategy": 2,
    "files": 2,
    "service": 3,
    "runner": 3,
    "migrate": 3,
    "events": 3,
    "pubsub": 4,
    "scheduler": 4,
    "schedules": 4,
    "app": 5,
    "http": 6,
    "testing": 6,  # the testing kit: fault injection, crashes
    "cli": 7,  # `batchjobs serve` serves the http app
    "__main__": 8,  # python -m batchjobs
}
THIRD_PARTY = {
    # The database drivers stay behind the store protocol.
    "sqlite3": {"store"},
    "sqlite_utils": {"store"},
    "psycopg": {"store"},
    "psycopg_pool": {"store"},
    "blinker": {"signals"},
    # Two uses of APScheduler: scheduler.py runs this process's timers, schedules.py
    # asks its triggers for the fire times of recurring jobs (no scheduler there).
    "apscheduler": {"scheduler", "schedules"},
    "click": {"cli"},
    "redis": {"pubsub"},
    "ulid": {"models"},
    "flask": {"http"},
    "werkzeug": {"http"},
    "waitress": {"http"},
    "itsdangerous": {"http"},
}


def modules() -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Every module of the package, and its dotted name's parts (``batchjobs.cli._jobs``)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield path, parts[:-1] if parts[-1] == "__init__" else parts


def imported_names(path: Path, name: tuple[str, ...]) -> set[str]:
    """What ``path`` imports, as absolute names: ``from ..app import BatchJobs`` in
    ``batchjobs/cli/_jobs.py`` is ``batchjobs.app.BatchJobs``."""
    package = name if path.name == "__init__.py" else name[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_imports_flow_one_way() -> None:
    for path, name in modules():
        if len(name) == 1:
            continue  # batchjobs/__init__.py re-exports from every layer
        layer = name[1]
        where = path.relative_to(PACKAGE.parent)
        assert layer in LAYERS, f"{where} has no layer in this test"
        for imported in imported_names(path, name):
            top, _, rest = imported.partition(".")
            if top == "batchjobs":
                target = rest.split(".")[0]
                if target == layer and path.parent != PACKAGE:
                    continue  # a module of a package imports its siblings
                assert target in LAYERS, f"{where} imports {imported}, which has no layer"
                assert LAYERS[target] < LAYERS[layer], f"{where} imports {target}"
            elif top in THIRD_PARTY:
                assert layer in THIRD_PARTY[top], f"{where} imports {top}"


def test_the_engine_never_imports_the_built_in_strategies() -> None:
    for path, name in modules():
        for imported in imported_names(path, name):
            where = path.relative_to(PACKAGE.parent)
            assert not imported.startswith("batchjobs.strategies"), f"{where} imports {imported}"


def test_relative_imports_resolve_from_a_package() -> None:
    cli = PACKAGE / "cli" / "_jobs.py"
    names = imported_names(cli, ("batchjobs", "cli", "_jobs"))
    assert {"batchjobs.app.BatchJobs", "batchjobs.cli._app.cli", "click"} <= names
    init = PACKAGE / "cli" / "__init__.py"
    assert "batchjobs.cli._app.cli" in imported_names(init, ("batchjobs", "cli"))


def test_no_class_of_the_runner_is_over_300_lines() -> None:
    for path in sorted((PACKAGE / "runner").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                assert lines <= 300, f"{path.name}: {node.name} has {lines} lines"


def test_the_runner_s_modules_import_one_way() -> None:
    # claims → job → leases, claims → holders: leases.py and holders.py import none.
    allowed = {
        "claims": {"job", "leases", "holders"},
        "job": {"leases"},
        "leases": set(),
        "holders": set(),
    }
    for name, may in allowed.items():
        path = PACKAGE / "runner" / f"{name}.py"
        siblings = {
            imported.split(".")[2]
            for imported in imported_names(path, ("batchjobs", "runner", name))
            if imported.startswith("batchjobs.runner.")
        }
        assert siblings <= may, f"runner/{name}.py imports {siblings - may}"
