"""The benchmark script runs: ``scripts/bench.py --quick`` prints its whole table."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench.py"
HEADER = "| scenario | ours | baseline | ratio | goal | met? |"
#: The scenarios, in groups run by separate ``--only`` runs (so that the suite's workers
#: share them), each with the first words of its rows in the order they are printed.
GROUPS = {
    "sqlite": {
        "lifecycle": ["lifecycle:"],
        "scheduler": ["scheduler: drain", "scheduler: create and run"],
        "checkpoints": ["one job of"],
        "mirror": ["one job of", "lifecycle of"],  # the same job, and the lifecycle, mirror on
        "wakeup": ["wake-up in process", "wake-up in process"],
        "scale": ["claim the next job", "list_and_count()", "list_and_count(user"],
        "dashboard": ["dashboard list page"],
        "csv": ["csv-export", "csv-export", "csv-import", "csv-import"],
        "outbox": ["lifecycle of"],
        "events": ["events(after=", "events(after="],
    },
    "processes": {
        "pickup": ["pick-up by another process", "pick-up by another process"],
        "processes": ["3 worker processes on one file", "3 worker processes on one file"],
        "follow": ["follow:", "follow:"],
    },
    "postgres": {"postgres": ["PostgreSQL"]},
}


def load_bench() -> Any:
    """The benchmark script, imported as a module."""
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules[spec.name]
    return bench


def test_the_groups_cover_every_scenario() -> None:
    grouped = [name for group in GROUPS.values() for name in group]
    assert sorted(grouped) == sorted(load_bench().SCENARIOS)


def test_cpu_between_two_readings_counts_a_process_started_in_between_whole() -> None:
    # The server opens a process per new connection as the workers' pools grow.
    bench = load_bench()
    before = {10: 1.0, 11: 5.0}
    after = {10: 1.5, 12: 0.25}  # 11 ended meanwhile (left out), 12 started
    assert bench.cpu_since(before, after) == 0.75
    assert bench.cpu_since(None, after) is None
    use = bench.CpuUse.between((before, before, 2.0, 100.0), (after, None, 2.5, 100.5))
    assert (use.workers, use.server, use.poll, use.wall) == (0.75, None, 0.5, 0.5)
    assert use.busy == 2.5


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_a_process_s_cpu_read_from_proc_is_the_cpu_it_used_threads_that_ended_included() -> None:
    bench = load_bench()
    pid = os.getpid()

    def spin(seconds: float) -> None:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass

    first, started = bench.cpu_seconds([pid])[pid], time.process_time()
    spinner = threading.Thread(target=spin, args=(0.3,))
    spinner.start()
    spinner.join()  # ended before the second reading: its CPU still counts
    spin(0.1)
    used = bench.cpu_seconds([pid])[pid] - first
    assert abs(used - (time.process_time() - started)) < 0.03, used
    assert used > 0.35
    assert bench.cpu_seconds([2**22 + 1]) == {}  # no such process: left out


@pytest.mark.slow
@pytest.mark.timeout(240)  # under 30 s alone; several times that beside the other tests
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_quick_run_prints_every_scenario(group: str, tmp_path: Path) -> None:
    scenarios = GROUPS[group]
    only = [arg for name in scenarios for arg in ("--only", name)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path), *only],
        capture_output=True,
        text=True,
        timeout=200,
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
    for prefix in [prefix for prefixes in scenarios.values() for prefix in prefixes]:
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
