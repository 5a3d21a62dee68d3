"""The built-in strategies install as ``batchjobs.strategies``, from a wheel and editable."""

from __future__ import annotations

import subprocess
import sys
import zipfile
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
    assert not any(n.startswith(("strategies/", "tests/")) for n in names)
    assert "batchjobs = batchjobs.cli:main" in entry_points
    assert "[batchjobs.strategies]" in entry_points
