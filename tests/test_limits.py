"""Input limits: the library refuses, before writing, what the CLI and the HTTP API refuse."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from batchjobs import BatchJobs, InvalidDataError, NotFoundError
from batchjobs.limits import (
    MAX_ID_LENGTH,
    MAX_INTEGER,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_LIST_LIMIT,
    check_json_object,
    dumps,
    parse_json,
)
from batchjobs.models import new_job_id


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` levels deep (itself level 1), built without recursion."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def count_jobs(jobs: BatchJobs) -> int:
    return jobs.list_and_count(limit=0)[1]


def test_an_id_is_exactly_as_long_as_the_limit() -> None:
    assert len(new_job_id()) == MAX_ID_LENGTH


def test_a_context_may_nest_up_to_the_depth_limit(jobs: BatchJobs) -> None:
    job = jobs.create("uncounted", nested(MAX_JSON_DEPTH))
    assert jobs.retrieve(job.id).context == nested(MAX_JSON_DEPTH)
    assert json.loads(json.dumps(job.to_dict()))["context"] == nested(MAX_JSON_DEPTH)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 971, 100_000])
def test_a_context_nested_deeper_is_refused_and_nothing_is_written(
    jobs: BatchJobs, depth: int
) -> None:
    with pytest.raises(InvalidDataError) as refused:
        jobs.create("uncounted", nested(depth))
    assert refused.value.message.startswith(
        f"context is nested more than {MAX_JSON_DEPTH} levels deep (at context.a.a."
    )
    assert count_jobs(jobs) == 0


def test_lists_count_as_levels_too(jobs: BatchJobs) -> None:
    value: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        value = [value]
    with pytest.raises(InvalidDataError, match=r"nested more than 64 levels deep \(at context.x\["):
        jobs.create("uncounted", {"x": value})
    assert count_jobs(jobs) == 0


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"x": math.inf}, "context.x is inf: numbers must be finite"),
        ({"x": -math.inf}, "context.x is -inf: numbers must be finite"),
        ({"x": [1, {"y": math.nan}]}, "context.x[1].y is nan: numbers must be finite"),
        ({"a b": {"c": float("1e400")}}, 'context["a b"].c is inf: numbers must be finite'),
        ({1: "a"}, "context has a key that is not a string: 1"),
        ({"x": "\udcff"}, "context.x is not valid UTF-8 text"),
        ({"\ud800": 1}, "a key in context is not valid UTF-8 text"),
        ({"x": {1, 2}}, "context.x is of type set, which JSON cannot hold"),
        ({"x": "a" * MAX_JSON_BYTES}, f"context is {MAX_JSON_BYTES + 8} bytes as JSON; the limit"),
    ],
)
def test_what_json_cannot_carry_is_refused_and_nothing_is_written(
    jobs: BatchJobs, context: dict[Any, Any], message: str
) -> None:
    with pytest.raises(InvalidDataError) as refused:
        jobs.create("uncounted", context)
    assert refused.value.message.startswith(message)
    assert count_jobs(jobs) == 0


def test_update_checks_what_it_merges(jobs: BatchJobs) -> None:
    job = jobs.create("uncounted", {"a": 1})
    with pytest.raises(InvalidDataError, match="^result.x is nan: numbers must be finite$"):
        jobs.update(job.id, result={"x": math.nan})
    with pytest.raises(InvalidDataError, match="^context is nested more than 64 levels deep"):
        jobs.update(job.id, context=nested(MAX_JSON_DEPTH + 1))
    assert jobs.retrieve(job.id) == job


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"created_by": "\udcff"}, "created_by is not valid UTF-8 text"),
        ({"dry_run": 1}, "dry_run must be a boolean, not 1"),
    ],
)
def test_text_fields_must_be_utf8(jobs: BatchJobs, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidDataError, match=f"^{message}$"):
        jobs.create("uncounted", {}, **kwargs)
    with pytest.raises(InvalidDataError, match="^type is not valid UTF-8 text$"):
        jobs.create("\udcff", {})
    assert count_jobs(jobs) == 0


def test_a_page_is_at_most_the_list_limit(jobs: BatchJobs) -> None:
    assert jobs.list_and_count(limit=MAX_LIST_LIMIT) == ([], 0)
    for limit in (MAX_LIST_LIMIT + 1, 10**12):
        with pytest.raises(InvalidDataError, match=f"^limit must be at most 1000, not {limit}$"):
            jobs.list_and_count(limit=limit)
    with pytest.raises(InvalidDataError, match=f"^offset must be at most {MAX_INTEGER}, not "):
        jobs.list_and_count(offset=MAX_INTEGER + 1)


@pytest.mark.parametrize(
    ("id", "shown"),
    [
        ("batch_" + "0" * 27, "batch_" + "0" * 27),
        ("x" * 70_000, "x" * 64 + "… (70000 characters)"),
        ("\udcff", "\\xff"),
        ("\ud800", "\\ud800"),
    ],
)
def test_an_id_no_job_can_have_is_not_found(jobs: BatchJobs, id: str, shown: str) -> None:
    with pytest.raises(NotFoundError) as missing:
        jobs.retrieve(id)
    assert missing.value.message == f"Batch job with id {shown} was not found"
    assert missing.value.id == id
    for operation in (jobs.cancel, jobs.confirm, jobs.retry):
        with pytest.raises(NotFoundError):
            operation(id)


def test_parse_json_refuses_what_is_not_strict_json_before_parsing_too_much() -> None:
    assert parse_json("body", '{"a": [1.5, "x"]}') == {"a": [1.5, "x"]}
    for text, message in [
        ('{"a": NaN}', "body is not valid JSON: NaN is not valid JSON"),
        ('{"a": -Infinity}', "body is not valid JSON: -Infinity is not valid JSON"),
        ("[" * 100_000, "body is nested more than 64 levels deep"),
        (b"\xff", "body is not valid JSON: "),
        ('"' + "a" * 11 + '"', "body is 13 bytes; the limit is 12"),
    ]:
        with pytest.raises(InvalidDataError) as refused:
            parse_json("body", text, max_bytes=12 if "a" * 11 in str(text) else MAX_JSON_BYTES)
        assert refused.value.message.startswith(message)
    # 1e400 is JSON: it parses, to a number no check lets through.
    with pytest.raises(InvalidDataError, match="^body.a is inf: numbers must be finite$"):
        check_json_object("body", parse_json("body", '{"a": 1e400}'))


def test_what_the_library_writes_is_json_that_every_parser_reads() -> None:
    assert dumps({"a": [1, 2.5, None]}) == '{"a":[1,2.5,null]}'
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            dumps({"a": value})
