"""The built-in strategies install as ``batchjobs.strategies``, from a wheel and editable;
the test tools run at their pins."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_name_maps_to_the_strategies_folder() -> None:
    import batchjobs.strategies

    assert Path(batchjobs.strategies.__file__).resolve() == ROOT / "strategies" / "__init__.py"


@pytest.mark.slow
def test_the_wheel_ships_the_strategies_and_the_console_script(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("batchjobs-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith("entry_points.txt")
        )
    assert "batchjobs/strategies/__init__.py" in names
    assert "batchjobs/py.typed" in names
    # Subpackages are listed in pyproject.toml.
    assert {"batchjobs/cli/__init__.py", "batchjobs/pubsub/__init__.py"} <= names
    # The dashboard's templates and static files are package data.
    assert {
        "batchjobs/http/templates/batchjobs/base.html",
        "batchjobs/http/templates/batchjobs/list.html",
        "batchjobs/http/static/dashboard.js",
        "batchjobs/http/static/dashboard.css",
    } <= names
    assert not any(n.startswith(("strategies/", "tests/")) for n in names)
    assert "batchjobs = batchjobs.cli:main" in entry_points
    assert "[batchjobs.strategies]" in entry_points


def pins() -> dict[str, str]:
    """``constraints-dev.txt`` as {normalised name: version}."""
    found = {}
    for line in (ROOT / "constraints-dev.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
            assert match, f"constraints-dev.txt: {line!r} is not NAME==VERSION"
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def test_the_test_tools_run_at_their_pins() -> None:
    pinned = pins()
    assert {"pytest", "pytest-cov", "coverage", "mypy", "ruff", "freezegun", "huey"} <= set(pinned)
    installed = {
        re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower(): dist.version
        for dist in metadata.distributions()
    }
    # Some pins only matter on some Pythons (tomli on 3.10): those absent are not checked.
    drifted = {
        name: (installed[name], version)
        for name, version in pinned.items()
        if name in installed and installed[name] != version
    }
    assert not drifted, (
        f"installed, not pinned: {drifted}; "
        "reinstall with pip install -c constraints-dev.txt -e '.[dev,bench]'"
    )
