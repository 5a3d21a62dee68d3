"""The benchmark script runs: ``scripts/bench.py --quick`` prints its whole table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench.py"
HEADER = "| scenario | ours | baseline | ratio | goal | met? |"
#: The first words of each scenario's rows, in the order they are printed.
SCENARIOS = [
    "lifecycle:",
    "scheduler:",
    "one job of",
    "one job of",  # the same job with the Redis mirror on
    "wake-up in process",
    "pick-up by another process",
    "claim the next job",
    "list_and_count()",
    "dashboard list page",
    "csv-export",
    "csv-import",
    "PostgreSQL",
]


@pytest.mark.slow
@pytest.mark.timeout(360)  # about a minute alone; several times that beside the other tests
def test_quick_run_prints_every_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("batchjobs benchmark (quick): ")
    assert "Python" in lines[0] and "SQLite" in lines[0]
    start = lines.index(HEADER)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert all(len(cells) == 6 for cells in rows), rows
    names = [cells[0] for cells in rows]
    position = 0
    for prefix in SCENARIOS:
        found = [i for i, name in enumerate(names) if name.startswith(prefix) and i >= position]
        assert found, f"no row for {prefix!r} in {names}"
        position = found[0] + 1
    for scenario, ours, _baseline, ratio, goal, met in rows:
        assert goal, scenario
        assert not ours.startswith("error"), scenario
        if ours == "not available":
            assert f"{scenario}: not available: " in done.stdout
        else:
            assert met in ("yes", "**no**", ""), scenario
            if met:
                assert ratio.endswith("x"), scenario
