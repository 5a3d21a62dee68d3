"""The built-in strategies install as ``batchjobs.strategies``, from a wheel and editable;
the test tools run at their pins, and only the pytest plugins the suite names; the package
installs and runs without the pins."""

from __future__ import annotations

import functools
import json
import os
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


def test_a_checkout_imported_without_its_install_s_mapping_finds_its_strategies_alone() -> None:
    # What a script started in the checkout's root sees when batchjobs is installed from
    # a wheel: the checkout's copy, and no editable install's mapping of the strategies.
    script = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path"
        " if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        "import batchjobs, batchjobs.strategies\n"
        "print(batchjobs.__file__, batchjobs.strategies.__file__)\n"
        "try:\n"
        "    import batchjobs.tests\n"
        "except ModuleNotFoundError:\n"
        "    print('nothing else')\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    package, strategies, *rest = shown.stdout.split(maxsplit=2)
    rest = [line.strip() for line in rest]
    assert Path(package) == ROOT / "batchjobs" / "__init__.py"
    assert Path(strategies) == ROOT / "strategies" / "__init__.py"
    assert rest == ["nothing else"]  # only that one name maps to the checkout's root


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
    # The first of a name on sys.path is the one that imports (a venv made with
    # --system-site-packages also sees the system's older copies, listed after it).
    installed: dict[str, str] = {}
    for dist in metadata.distributions():
        installed.setdefault(re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower(), dist.version)
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


# What a user of the installed package imports: every module with a third-party import.
IMPORT_ALL = """
import sys
import batchjobs, batchjobs.cli, batchjobs.http, batchjobs.pubsub, batchjobs.store.postgres
from batchjobs.strategies import csv_export, csv_import
assert batchjobs.__file__.startswith(sys.prefix), batchjobs.__file__
"""
#: Prints where ``batchjobs`` was imported from, then the types a ``BatchJobs`` on the
#: database named by argv[1] knows, one a line.
LIST_TYPES = (
    "import sys, batchjobs; print(batchjobs.__file__); "
    "print(*sorted(batchjobs.BatchJobs(sys.argv[1]).registry.types), sep='\\n')"
)


def test_a_pytest_plugin_installed_beside_the_project_does_not_load(tmp_path: Path) -> None:
    # A plugin registered as an installed one is (a ``pytest11`` entry point) that would
    # stop any run it joins, as pytest-benchmark stops one under xdist.
    (tmp_path / "intruder.py").write_text("raise RuntimeError('the intruder plugin loaded')\n")
    info = tmp_path / "intruder-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: intruder\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pytest11]\nintruder = intruder\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    one_test = "tests/test_packaging.py::test_the_import_name_maps_to_the_strategies_folder"

    def collect(*options: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pytest", "--co", "-q", "--no-cov", "-n0", *options]
        return subprocess.run(
            [*command, one_test], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60
        )

    done = collect()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intruder" not in done.stdout + done.stderr
    # Asked for by name, it loads: it is a real plugin, which the run left out.
    asked = collect("-p", "intruder")
    assert asked.returncode != 0
    assert "the intruder plugin loaded" in asked.stdout + asked.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)  # an install with nothing cached downloads every library
def test_without_the_pins_the_newest_releases_install_import_and_run(tmp_path: Path) -> None:
    # As a user installs it: no constraints-dev.txt, so each runtime library comes at the
    # newest release its range allows. A release that breaks us fails here first.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_CONSTRAINT", "PYTHONPATH")}
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    installed = subprocess.run(
        [*install, f"{ROOT}[http,postgres]"], env=env, capture_output=True, text=True, timeout=240
    )
    assert installed.returncode == 0, installed.stderr
    # From elsewhere than the checkout: the installed copy is what runs.
    imported = subprocess.run(
        [str(python), "-W", "error", "-c", IMPORT_ALL], cwd=tmp_path, env=env, capture_output=True
    )
    assert imported.returncode == 0, imported.stderr.decode()
    run = functools.partial(subprocess.run, env=env, capture_output=True, text=True, timeout=60)
    shown = run([str(venv / "bin" / "batchjobs"), "version", "--json"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["batchjobs"] == metadata.version("batchjobs")
    # A script started in the checkout's root imports the checkout's copy, not the
    # installed one: it still has the built-in strategies (strategies/ beside it).
    listed = run([str(python), "-c", LIST_TYPES, str(tmp_path / "root.db")], cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    imported_from, *types = listed.stdout.split()
    assert Path(imported_from) == ROOT / "batchjobs" / "__init__.py"
    assert types == ["csv-export", "csv-import"] and not listed.stderr
