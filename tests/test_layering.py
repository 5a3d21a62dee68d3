"""Imports point one way: errors ← models ← {signals, store, strategy, files} ←
service ← {pubsub, scheduler} ← app ← http ← cli; each third-party library
is imported by one module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batchjobs"
LAYERS = {
    "errors": 0,
    "models": 1,
    "signals": 2,
    "store": 2,
    "strategy": 2,
    "files": 2,
    "service": 3,
    "runner": 3,
    "pubsub": 4,
    "scheduler": 4,
    "app": 5,
    "http": 6,
    "cli": 7,  # `batchjobs serve` serves the http app
}
THIRD_PARTY = {
    "sqlite_utils": {"store"},
    "blinker": {"signals"},
    "apscheduler": {"scheduler"},
    "click": {"cli"},
    "redis": {"pubsub"},
    "ulid": {"models"},
    "flask": {"http"},
    "werkzeug": {"http"},
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.update(
                    f".{node.module}" if node.module else f".{alias.name}" for alias in node.names
                )
            elif node.module:
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_imports_flow_one_way() -> None:
    for path in PACKAGE.glob("*.py"):
        module = path.stem
        if module == "__init__":
            continue
        assert module in LAYERS, f"{module}.py has no layer in this test"
        for imported in imports_of(path):
            if imported.startswith("."):
                target = imported[1:].split(".")[0]
                assert LAYERS[target] < LAYERS[module], f"{module} imports {target}"
            elif imported in THIRD_PARTY:
                assert module in THIRD_PARTY[imported], f"{module} imports {imported}"


def test_the_engine_never_imports_the_built_in_strategies() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [f"{'.' * node.level}{node.module or ''}"]
                names += [f"{names[0]}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                assert not name.startswith(("batchjobs.strategies", ".strategies")), path.name
