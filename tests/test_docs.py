"""The README is checked: every CLI command documented and helped, its commands run as shown."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchjobs import BatchJobs, Status
from batchjobs.cli import cli
from batchjobs.runner import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS
from examples.shout import Shout

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The README's ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def first_commands() -> list[str]:
    """The commands of the README's first code block (comments left out)."""
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block, "README.md starts with no ```sh block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def installed_path() -> str:
    """PATH with the directory of this interpreter's ``batchjobs`` command first."""
    scripts = Path(sysconfig.get_path("scripts"))
    if not (scripts / "batchjobs").exists():
        pytest.fail("the batchjobs command is not installed: pip install -e .")
    return f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"


def shell(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash the way a person would, stdout and stderr in one stream."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHJOBS_")}
    # A terminal shows a program's output as it comes; a pipe would hold stdout back.
    env.update(PATH=installed_path(), PYTHONUNBUFFERED="1")
    # A session of its own: on a time-out the whole group goes, workers it started included.
    with subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def normalise(text: str) -> str:
    """Number ids in order of appearance; blank out dates and times."""
    ids: dict[str, str] = {}
    text = re.sub(r"batch_[0-9A-Z]{26}", lambda m: ids.setdefault(m[0], f"<id{len(ids)}>"), text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", "<date>", text)
    return re.sub(r"^\d\d:\d\d:\d\d ", "<time> ", text, flags=re.M)


def test_every_command_is_documented_in_the_readme() -> None:
    documented = section("Command line")
    for name in cli.commands:
        assert re.search(rf"`{re.escape(name)}\b", documented), f"`{name}` is not in the README"


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^  Examples?:\n    batchjobs ", result.output, re.M), result.output


def test_the_group_has_help_with_examples() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert "Examples:" in result.output and "BATCHJOBS_DB" in result.output


def test_the_help_and_the_package_name_both_stores() -> None:
    helped = CliRunner().invoke(cli, ["--help"]).output
    summary = helped.split("\n\n")[1]  # the line under "Usage:"
    assert "SQLite" in summary and "PostgreSQL" in summary, summary
    assert "one SQLite file" not in helped
    found = re.search(r'^description = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found and "SQLite" in found.group(1) and "PostgreSQL" in found.group(1)


def test_ci_runs_the_readme_test_command() -> None:
    commands = first_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, f"{commands[1]!r} is not a line of .ci/run"


@pytest.mark.slow
def test_the_readme_first_command_runs_a_job_through_the_cli(tmp_path: Path) -> None:
    install, _, run = first_commands()[0].partition(" && ")
    assert install == "pip install ." and run.startswith("batchjobs ")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # as in the repository root
    result = shell(run, tmp_path)
    assert result.returncode == 0, result.stdout
    assert "100%  5/5  completed" in result.stdout and "BATCH JOBS" in result.stdout


def check_transcript(title: str, tmp_path: Path) -> None:
    """Run the ```console transcript of README section ``title``; compare its output."""
    transcript = re.search(r"```console\n(.*?)```", section(title), re.S)
    assert transcript, f"the {title} section has no ```console transcript"
    expected = transcript.group(1)
    commands = [line[2:] for line in expected.splitlines() if line.startswith("$ ")]
    # Echo each command as the transcript shows it, then run it, in one shell session.
    script = "set -e\n" + "".join(f"echo {shlex.quote('$ ' + c)}\n{c}\n" for c in commands)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # as in the repository root
    result = shell(script, tmp_path)
    assert result.returncode == 0, result.stdout
    assert normalise(result.stdout) == normalise(expected)


@pytest.mark.slow
def test_the_readme_cli_transcript_gives_the_same_results(tmp_path: Path) -> None:
    check_transcript("Command line", tmp_path)


def run_example(title: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the ```python example of README section ``title`` in ``cwd``."""
    block = re.search(r"```python\n(.*?)```", section(title), re.S)
    assert block, f"the {title} section has no python example"
    return subprocess.run(
        [sys.executable, "-c", block.group(1)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_readme_library_example_runs_as_written(tmp_path: Path) -> None:
    block = re.search(r"```python\n(.*?)```", section("At a glance"), re.S)
    assert block and len([line for line in block.group(1).splitlines() if line.strip()]) <= 15
    done = run_example("At a glance", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["A B", "C", "completed"]
    assert (tmp_path / "app.db").exists()


@pytest.mark.slow
def test_the_readme_recurring_jobs_transcript_gives_the_same_results(tmp_path: Path) -> None:
    check_transcript("Recurring jobs", tmp_path)


def test_the_readme_recurring_jobs_example_runs_as_written(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # as in the repository root
    done = run_example("Recurring jobs", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["06:00", "1", "GOOD MORNING", "GOOD MORNING"]


def test_the_readme_pause_example_runs_as_written(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # as in the repository root
    done = run_example("Pause and resume", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ONE TWO",
        "THREE FOUR",
        "paused 4",
        "FIVE SIX",
        "completed",
    ]


NIGHTLY = ["GOOD NIGHT", "SLEEP TIGHT", "SEE YOU", "IN THE", "MORNING"]


def test_the_readme_resuming_section_states_the_defaults() -> None:
    text = " ".join(section("Resuming after a crash").split())
    assert f"`lease_seconds` (default `{DEFAULT_LEASE_SECONDS:g}`:" in text
    assert f"`max_attempts` times (default {DEFAULT_MAX_ATTEMPTS})" in text


def test_the_readme_resume_example_runs_as_written_and_again(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # as in the repository root
    done = run_example("Resuming after a crash", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [*NIGHTLY, "completed"]
    again = run_example("Resuming after a crash", tmp_path)  # its key: the same job, done
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["completed"]


@pytest.mark.slow
def test_the_readme_resume_example_killed_mid_job_resumes_at_once(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    block = re.search(r"```python\n(.*?)```", section("Resuming after a crash"), re.S)
    assert block
    (tmp_path / "nightly.py").write_text(block.group(1))
    command = [sys.executable, "nightly.py"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    ) as first:
        assert first.stdout is not None
        printed = [first.stdout.readline().strip(), first.stdout.readline().strip()]
        first.kill()  # kill -9 after two chunks, its lease good for 30 s more
    assert printed == NIGHTLY[:2]
    started = time.monotonic()
    second = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    *rest, status = second.stdout.splitlines()
    assert status == "completed"
    # It resumed from a checkpoint (at most the chunk in progress again), long before
    # the dead process's lease ran out.
    assert rest in (NIGHTLY[2:], NIGHTLY[1:]), rest
    assert took < DEFAULT_LEASE_SECONDS / 3, f"took {took:.1f} s"


def test_the_readme_and_pyproject_name_the_same_python_versions() -> None:
    stated = re.search(r"runs on Python 3\.(\d+) to 3\.(\d+)", README)
    assert stated, "README.md does not say which Python versions it runs on"
    oldest, newest = int(stated[1]), int(stated[2])
    pyproject = (ROOT / "pyproject.toml").read_text()
    classified = sorted(
        map(int, re.findall(r'"Programming Language :: Python :: 3\.(\d+)"', pyproject))
    )
    assert classified == list(range(oldest, newest + 1))
    assert f'requires-python = ">=3.{oldest}"' in pyproject
    # The tools check the code for the oldest one.
    assert f'target-version = "py3{oldest}"' in pyproject
    assert f'python_version = "3.{oldest}"' in pyproject


def test_run_s_exit_statuses_are_in_its_help_and_the_readme() -> None:
    helped = CliRunner().invoke(cli, ["run", "--help"]).output
    for status in ("0", "1", "2", "130"):
        assert re.search(rf"^    {status} +\S", helped, re.M), helped
    text = " ".join(section("Command line").split())
    assert "130 when `run` is interrupted by Ctrl-C, its job's id still on stdout" in text


def test_the_readme_postgres_extra_is_pyproject_s_and_the_pool_the_store_s() -> None:
    text = " ".join(section("PostgreSQL").split())
    assert "pip install 'batchjobs[postgres]'" in text
    found = re.search(r"^postgres = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert found and re.findall(r'"([a-z_\[\]-]+)[<>=]', found[1]) == [
        "psycopg[binary]",
        "psycopg-pool",
    ]
    from batchjobs.store.postgres import POOL_SPARE

    assert f"a pool of up to `concurrency + {POOL_SPARE}` connections" in text


@pytest.mark.slow
def test_the_readme_migrate_command_moves_a_file_s_jobs_into_postgresql(
    tmp_path: Path, make_database: Callable[..., str]
) -> None:
    block = re.search(r"```sh\n(batchjobs migrate .*?)\n```", section("PostgreSQL"), re.S)
    assert block, "the PostgreSQL section shows no batchjobs migrate command"
    url = make_database(empty=True)
    command = re.sub(r"postgresql://\S+", url, block[1])  # the README's server is made up
    assert command == f"batchjobs migrate --from jobs.db --to {url}"
    with BatchJobs(tmp_path / "jobs.db") as jobs:
        jobs.register(Shout)
        job = jobs.create("shout", {"words": ["a", "b", "c"]})
    result = shell(command, tmp_path)
    assert result.returncode == 0, result.stdout
    with BatchJobs(url, files_dir=tmp_path / "files") as moved:
        moved.register(Shout)
        moved.run_until_idle(timeout=30)
        assert moved.retrieve(job.id).status == Status.COMPLETED
