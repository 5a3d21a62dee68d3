"""Strategies the tests use. Importable by worker subprocesses too."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from batchjobs import BatchJobStrategy, InvalidDataError, JobDraft, JobRun


def _append(path: str, lines: list[str]) -> None:
    # One write per chunk with O_APPEND: atomic enough for a ledger shared by processes.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(f"{line}\n" for line in lines).encode())
    finally:
        os.close(fd)


def read_ledger(path: str | Path) -> list[str]:
    """The lines a ledger strategy wrote, in order."""
    p = Path(path)
    return p.read_text().splitlines() if p.exists() else []


class Words(BatchJobStrategy):
    """The DESIGN's example: uppercases ``context["words"]``, a chunk at a time."""

    batch_type = "words"
    chunk_size = 2

    def prepare(self, draft: JobDraft) -> JobDraft:
        words = draft.context.get("words")
        if not isinstance(words, list):
            raise InvalidDataError("context.words must be a list of strings")
        return draft

    def pre_process(self, run: JobRun) -> None:
        run.set_count(len(run.job.context["words"]))
        run.result["stat_descriptors"] = [
            {"key": "words", "name": "Words", "message": f"{run.result['count']} words"}
        ]

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        words = run.job.context["words"][start : start + size]
        shouted = run.result.get("shouted", []) + [w.upper() for w in words]
        run.result["shouted"] = shouted
        return len(words)


class Ledger(BatchJobStrategy):
    """Counts ``context["n"]`` records, appending each record's index to ``context["ledger"]``.

    Context knobs: ``sleep`` (seconds per chunk), ``fail_at`` (raise when a
    chunk starts there), ``retry`` (should_retry answer), ``exit_at`` (the
    process exits hard when a chunk starts there, every time), ``cursor``
    (check ``run.cursor`` matches each chunk's start), ``tagged`` (prefix ledger
    lines with the job id).
    """

    batch_type = "ledger"
    chunk_size = 10

    def pre_process(self, run: JobRun) -> None:
        run.set_count(run.job.context["n"])

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        ctx: dict[str, Any] = run.job.context
        if ctx.get("exit_at") == start:
            os._exit(3)
        if ctx.get("fail_at") == start:
            raise RuntimeError(f"chunk at {start} failed")
        if ctx.get("sleep"):
            time.sleep(ctx["sleep"])
        if "cursor" in ctx and run.cursor.get("next", 0) != start:
            raise AssertionError(f"cursor {run.cursor} does not match start {start}")
        end = min(start + size, ctx["n"])
        if ctx.get("ledger"):
            prefix = f"{run.job.id}:" if ctx.get("tagged") else ""
            _append(ctx["ledger"], [f"{prefix}{i}" for i in range(start, end)])
        run.cursor["next"] = end
        return end - start

    def should_retry(self, run: JobRun, error: Exception) -> bool:
        return bool(run.job.context.get("retry"))


class Uncounted(BatchJobStrategy):
    """Never sets a count: processing ends when a chunk returns 0."""

    batch_type = "uncounted"
    chunk_size = 3

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        return max(0, min(size, run.job.context.get("n", 7) - start))


class Broken(BatchJobStrategy):
    """Fails in pre_process."""

    batch_type = "broken"

    def pre_process(self, run: JobRun) -> None:
        raise ValueError("cannot count the records")

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:  # pragma: no cover
        return 0


ALL = [Words, Ledger, Uncounted, Broken]
