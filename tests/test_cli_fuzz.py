"""A property of the whole command line: whatever the arguments, exit 0, 1 or 2, no traceback.

Hypothesis draws a command (every one that returns by itself), its options
and values from what breaks parsers: huge and negative numbers, non-finite
floats, text that is not UTF-8, deep JSON, empty strings. The same examples
each run (``FUZZ_RANDOM=1`` for new ones, ``FUZZ_EXAMPLES=N`` for more).
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchjobs.cli import cli

#: Commands that run until a signal, or follow a job until it rests: not for a fuzz.
LONG_RUNNING = {"serve", "worker", "watch", "events"}
#: Options that make a command wait for a worker.
WAITING = {"--wait", "--follow"}
ENV: dict[str, str | None] = {
    "BATCHJOBS_DB": None,
    "BATCHJOBS_APP": None,
    "BATCHJOBS_REDIS_URL": None,
    "BATCHJOBS_TOKENS": None,
}

NASTY = [
    "",
    "0",
    "-1",
    "1",
    "1001",
    str(2**63),
    str(-(2**63) - 1),
    "9" * 5000,
    "1e308",
    "1e400",
    "-0.0",
    "nan",
    "inf",
    "\udcff",
    "\ud800",
    "é",
    "\x00",
    "\x1b[31m",
    "[" * 3000,
    "{}",
    "[]",
    '{"words": ["a"]}',
    '{"a": 1e400}',
    '{"a": NaN}',
    "words=[]",
    "w=" + "[" * 3000,
    "x=1e400",
    "@-",
    "@/nonexistent/file.json",
    "batch_01JD5Z2W4V7X8Y9Z0A1B2C3D4E",
    "x" * 70_000,
    "words",
    "uncounted",
    "csv-export",
    "created_at[gt]=2024-01-01",
    "completed_at=null",
    "created_at[gt]=99999-99-99",
    "-created_at",
    "30d",
    "999999999999w",
    "*/5 * * * *",
    "61 * * * *",
    "Mars/Olympus",
    "UTC",
]
VALUES = st.one_of(st.sampled_from(NASTY), st.text(max_size=20))


def commands() -> list[tuple[str, ...]]:
    """Every command path that returns by itself: ``("list",)``, ``("schedule", "add")``."""
    found: list[tuple[str, ...]] = []

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            if name in LONG_RUNNING:
                continue
            if isinstance(command, click.Group):
                walk(command, (*path, name))
            else:
                found.append((*path, name))

    walk(cli, ())
    return found


def options_of(path: tuple[str, ...]) -> list[tuple[str, bool]]:
    """The options of a command, each with whether it takes a value."""
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return [
        (name, not param.is_flag)
        for param in command.params
        if isinstance(param, click.Option)
        for name in param.opts
        if name not in WAITING and name != "--help"
    ]


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    path = draw(st.sampled_from(commands()))
    args = list(path)
    options = options_of(path)
    for _ in range(draw(st.integers(0, 4))):
        if options and draw(st.booleans()):
            name, takes_value = draw(st.sampled_from(options))
            args.append(name)
            if takes_value:
                args.append(draw(VALUES))
        else:
            args.append(draw(VALUES))  # an argument, or a stray word
    return args


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "jobs.db"


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 600)),
    deadline=None,
    database=None,
    derandomize=os.environ.get("FUZZ_RANDOM") is None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=command_lines())
def test_any_command_line_exits_0_1_or_2_without_a_traceback(
    db: Path, tmp_path_factory: pytest.TempPathFactory, args: list[str]
) -> None:
    group = ["--db", str(db), "--app", "tests.strategies"]
    result = CliRunner(env=ENV).invoke(cli, [*group, *args], input="")
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output[-2000:])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args,
        repr(result.exception),
    )
    assert "Traceback" not in result.output, (args, result.output[-2000:])
