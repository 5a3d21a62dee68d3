"""The OpenAPI description stays true: schemathesis fuzzes the real app against it.

Bounded in examples per operation (and so in time): every answer is no 5xx,
matches the description, errors are ``{"type", "message"}``, and a 4xx
leaves the database as it was.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.control import SkipTest
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from batchjobs import BatchJobs
from batchjobs.http import OPENAPI_PATH, create_app, openapi_document

TOKENS = {"tok-1": "usr_1"}
AUTH = {"Authorization": "Bearer tok-1"}
#: Examples per operation and mode: enough to find the classic crashes, small enough for CI
#: (``FUZZ_EXAMPLES=N`` for more, ``FUZZ_RANDOM=1`` for new ones).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 100))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def snapshot(db_path: Path) -> list[tuple[Any, ...]]:
    """Every row of every table: what a refused request must leave as it was."""
    with closing(sqlite3.connect(db_path)) as conn:
        tables = [
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return [(t, *row) for t in sorted(tables) for row in conn.execute(f'SELECT * FROM "{t}"')]


def test_the_description_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }


#: Every operation of the description, by label ("GET /admin/batch-jobs"): one test each,
#: which the suite's workers share. Loaded from the app, the description leaves out its
#: own path.
OPERATIONS = [
    label
    for label in (
        result.ok().label
        for result in schemathesis.openapi.from_dict(openapi_document()).get_all_operations()
    )
    if label != f"GET {OPENAPI_PATH}"
]

#: The operations a valid request can succeed on without naming a job or a file.
NEEDS_NO_ID = {
    "GET /admin/batch-jobs",
    "GET /admin/batch-jobs/events",
    "POST /admin/batch-jobs",
    "POST /admin/uploads",
}


@pytest.mark.slow
@pytest.mark.parametrize("label", OPERATIONS)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_app_answers_as_described_whatever_it_is_sent(
    jobs: BatchJobs, db_path: Path, mode: GenerationMode, label: str
) -> None:
    jobs.create("words", {"words": ["a"]}, dry_run=True, created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    app = create_app(jobs, tokens=TOKENS)
    schema = schemathesis.openapi.from_wsgi(OPENAPI_PATH, app)
    schema.config.generation.update(modes=[mode])
    (operation,) = [
        result.ok() for result in schema.get_all_operations() if result.ok().label == label
    ]
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=os.environ.get("FUZZ_RANDOM") is None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_described(case: Any) -> None:
        before = snapshot(db_path)
        case.headers = {**(case.headers or {}), **AUTH}  # 401s are tested elsewhere
        try:
            response = case.call()
        except (AttributeError, TypeError):
            # schemathesis could not encode the case (e.g. a multipart body that is
            # a bare boolean): nothing reached the app. The app's own errors are
            # answers (500 at worst), never exceptions out of the call.
            reject()
        case.validate_response(response, checks=CHECKS)
        status = response.status_code
        seen[status] = seen.get(status, 0) + 1
        if status >= 400:
            body = response.json()
            assert isinstance(body, dict) and set(body) == {"type", "message"}, body
        if 400 <= status < 500:
            assert snapshot(db_path) == before, f"a {status} wrote: {case.as_curl_command()}"

    try:
        answers_as_described()
    except SkipTest:
        # Nothing to send wrong: a download takes any token, and credentials or none.
        assert (mode, label) == (GenerationMode.NEGATIVE, "GET /admin/uploads/download/{token}")
        return
    # Valid requests reach answers where no id must be guessed, invalid ones refusals.
    if mode == GenerationMode.NEGATIVE:
        assert any(400 <= status < 500 for status in seen), seen
    elif label in NEEDS_NO_ID:
        assert any(200 <= status < 300 for status in seen), seen
    else:
        assert seen, "no request reached the app"
