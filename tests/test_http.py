"""The admin HTTP API: Flask's test client on a real ``BatchJobs``, then a real server."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask, Request
from werkzeug.test import TestResponse

from batchjobs import BatchJobs, BatchJobStrategy, JobDraft, JobRun, Status
from batchjobs.cli import cli
from batchjobs.http import (
    DEFAULT_LIMIT,
    DEFAULT_STREAMS,
    DEFAULT_THREADS,
    MAX_BODY_BYTES,
    NOT_OWNER_MESSAGE,
    OPENAPI_PATH,
    AdminServer,
    create_app,
    create_blueprint,
    openapi_document,
)
from batchjobs.limits import MAX_JSON_DEPTH, MAX_LIST_LIMIT, MAX_URL_BYTES
from tests.test_uploads import multipart

pytestmark = pytest.mark.backends("sqlite", "postgres")

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {"tok-1": "usr_1", "tok-2": "usr_2"}
BEARER = {user: {"Authorization": f"Bearer {token}"} for token, user in TOKENS.items()}
URL = "/admin/batch-jobs"
TIME = re.compile(r"\d\d:\d\d:\d\d ")  # the stamp of serve's log lines
NO_AUTH = "Authentication required: send Authorization: Bearer <token>"
Api = Callable[..., TestResponse]


class Crashing(BatchJobStrategy):
    """``prepare`` fails the way a bug does."""

    batch_type = "crashing"

    def prepare(self, draft: JobDraft) -> JobDraft:
        raise RuntimeError("a bug in prepare")

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:  # pragma: no cover
        return 0


@pytest.fixture
def api(jobs: BatchJobs) -> Api:
    """``api(method, path, as_user="usr_1", **kwargs)``: a request with that user's token."""
    jobs.register(Crashing)
    client = create_app(jobs, tokens=TOKENS).test_client()

    def call(method: str, path: str = URL, *, as_user: str | None = "usr_1", **kwargs: Any) -> Any:
        headers = {**(BEARER[as_user] if as_user else {}), **kwargs.pop("headers", {})}
        return client.open(path, method=method, headers=headers, **kwargs)

    return call


def error_of(response: TestResponse) -> tuple[int, str, str]:
    body = response.get_json()
    assert set(body) == {"type", "message"}, body
    return response.status_code, body["type"], body["message"]


def count_jobs(jobs: BatchJobs) -> int:
    return jobs.list_and_count(limit=0)[1]


def listed(api: Api, query: str = "", as_user: str = "usr_1") -> list[str]:
    response = api("GET", f"{URL}?{query}", as_user=as_user)
    assert response.status_code == 200, response.get_json()
    return [job["id"] for job in response.get_json()["batch_jobs"]]


# -- routes ------------------------------------------------------------------------------------


def test_create_returns_201_and_the_job_created_by_the_caller(api: Api, jobs: BatchJobs) -> None:
    response = api("POST", json={"type": "words", "context": {"words": ["a"]}, "dry_run": True})
    assert response.status_code == 201
    body = response.get_json()
    assert list(body) == ["batch_job"]
    job = body["batch_job"]
    assert list(job) == list(jobs.retrieve(job["id"]).to_dict())  # Medusa's field order
    assert job == jobs.retrieve(job["id"]).to_dict()
    assert (job["type"], job["status"], job["created_by"]) == ("words", "created", "usr_1")
    assert (job["context"], job["dry_run"]) == ({"words": ["a"]}, True)
    assert response.headers["Location"] == f"{URL}/{job['id']}"


def test_create_needs_only_a_type(api: Api, jobs: BatchJobs) -> None:
    job = api("POST", json={"type": "uncounted"}).get_json()["batch_job"]
    assert (job["context"], job["dry_run"], job["created_by"]) == ({}, False, "usr_1")
    job = api("POST", json={"type": "uncounted", "context": None}).get_json()["batch_job"]
    assert job["context"] == {}


def test_create_with_a_key_answers_the_caller_s_job_that_has_it(api: Api, jobs: BatchJobs) -> None:
    first = api("POST", json={"type": "uncounted", "key": "nightly"})
    again = api("POST", json={"type": "uncounted", "key": "nightly", "context": {"x": 1}})
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    theirs = api("POST", json={"type": "uncounted", "key": "nightly"}, as_user="usr_2")
    assert theirs.get_json()["batch_job"]["id"] != first.get_json()["batch_job"]["id"]
    other_type = api("POST", json={"type": "words", "key": "nightly", "context": {"words": []}})
    assert error_of(other_type)[:2] == (400, "invalid_data")
    assert count_jobs(jobs) == 2


def test_retrieve_confirm_and_cancel_return_the_job(api: Api, jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a"]}, dry_run=True, created_by="usr_1")
    retrieved = api("GET", f"{URL}/{job.id}")
    assert (retrieved.status_code, retrieved.get_json()) == (200, {"batch_job": job.to_dict()})
    jobs.run_until_idle(timeout=10)
    confirmed = api("POST", f"{URL}/{job.id}/confirm")
    assert confirmed.status_code == 200
    assert confirmed.get_json() == {"batch_job": jobs.retrieve(job.id).to_dict()}
    assert confirmed.get_json()["batch_job"]["status"] == "confirmed"
    canceled = api("POST", f"{URL}/{job.id}/cancel")
    assert canceled.status_code == 200
    assert canceled.get_json() == {"batch_job": jobs.retrieve(job.id).to_dict()}
    assert canceled.get_json()["batch_job"]["status"] == "canceled"
    again = api("POST", f"{URL}/{job.id}/cancel")  # canceling a canceled job changes nothing
    assert (again.status_code, again.get_json()) == (200, canceled.get_json())


def test_a_dry_run_created_and_confirmed_over_http_runs_to_completion(
    api: Api, jobs: BatchJobs
) -> None:
    words = ["batch", "jobs", "over", "http", "!"]
    created = api("POST", json={"type": "words", "context": {"words": words}, "dry_run": True})
    job_id = created.get_json()["batch_job"]["id"]
    jobs.run_until_idle(timeout=10)
    previewed = api("GET", f"{URL}/{job_id}").get_json()["batch_job"]
    assert previewed["status"] == "pre_processed"
    assert previewed["result"]["stat_descriptors"] == [
        {"key": "words", "name": "Words", "message": "5 words"}
    ]
    assert "shouted" not in previewed["result"]  # a dry run changes nothing
    assert api("POST", f"{URL}/{job_id}/confirm").status_code == 200
    jobs.run_until_idle(timeout=10)
    done = api("GET", f"{URL}/{job_id}").get_json()["batch_job"]
    assert done["status"] == "completed"
    assert done["result"]["shouted"] == [w.upper() for w in words]
    assert done["result"]["advancement_count"] == 5 and done["result"]["progress"] == 1
    assert done["confirmed_at"] and done["completed_at"]


# -- listing -----------------------------------------------------------------------------------


def test_the_list_holds_only_the_callers_jobs(api: Api, jobs: BatchJobs) -> None:
    mine = [api("POST", json={"type": "uncounted"}).get_json()["batch_job"]["id"] for _ in range(3)]
    theirs = api("POST", json={"type": "uncounted"}, as_user="usr_2").get_json()["batch_job"]
    jobs.create("uncounted")  # nobody's: created from the library
    jobs.create("uncounted", created_by="usr_3")
    response = api("GET")
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["batch_jobs", "count", "offset", "limit"]
    assert (body["count"], body["offset"], body["limit"]) == (3, 0, DEFAULT_LIMIT)
    assert [job["id"] for job in body["batch_jobs"]] == mine[::-1]  # newest first
    assert body["batch_jobs"][0] == jobs.retrieve(mine[-1]).to_dict()
    assert listed(api, as_user="usr_2") == [theirs["id"]]


def test_the_list_pages_and_orders(api: Api, jobs: BatchJobs) -> None:
    ids = [jobs.create("uncounted", created_by="usr_1").id for _ in range(12)]
    assert listed(api) == ids[::-1][:DEFAULT_LIMIT]
    page = api("GET", f"{URL}?limit=3&offset=2").get_json()
    assert [j["id"] for j in page["batch_jobs"]] == ids[::-1][2:5]
    assert (page["count"], page["offset"], page["limit"]) == (12, 2, 3)
    assert listed(api, "order=created_at&limit=2") == ids[:2]
    assert listed(api, "order=-created_at&limit=2") == ids[::-1][:2]
    assert listed(api, "offset=12") == []
    empty = api("GET", f"{URL}?limit=0").get_json()
    assert (empty["batch_jobs"], empty["count"]) == ([], 12)


def test_the_list_filters_the_medusa_way(api: Api, jobs: BatchJobs) -> None:
    first = jobs.create("uncounted", created_by="usr_1")
    words = jobs.create("words", {"words": ["a"]}, dry_run=True, created_by="usr_1")
    jobs.run_until_idle(timeout=10)  # first completed, words pre_processed
    ledger = jobs.create("ledger", {"n": 1}, created_by="usr_1")
    jobs.cancel(ledger.id)
    assert listed(api, "type=words") == [words.id]
    assert listed(api, "type[]=words&type[]=ledger") == [ledger.id, words.id]
    assert listed(api, "type[0]=words&type[1]=uncounted") == [words.id, first.id]  # qs indices
    assert listed(api, "type=words&type=ledger") == [ledger.id, words.id]
    assert listed(api, "status[]=pre_processed&status[]=canceled") == [ledger.id, words.id]
    assert listed(api, "status=completed") == [first.id]
    assert listed(api, f"id[]={first.id}&id[]={ledger.id}") == [ledger.id, first.id]
    middle = words.created_at.isoformat()  # type: ignore[union-attr]
    assert listed(api, f"created_at[gt]={middle.replace('+', '%2B')}") == [ledger.id]
    assert listed(api, f"created_at[gte]={middle.replace('+', '%2B')}") == [ledger.id, words.id]
    assert listed(api, f"created_at[lt]={middle.replace('+', '%2B')}") == [first.id]
    # An unencoded "+" reads as a space; the offset is still understood.
    assert listed(api, f"created_at[gt]={middle}") == [ledger.id]
    assert listed(api, f"created_at[lt]={middle.replace('+00:00', 'Z')}") == [first.id]
    assert listed(api, "canceled_at[gt]=2000-01-01T00:00:00Z") == [ledger.id]
    assert listed(api, "status[]=completed&type[]=words") == []
    assert listed(api, "expand=created_by_user&fields=id,status&type=words") == [words.id]
    assert listed(api, "type[]=words", as_user="usr_2") == []
    # Any offset, compared as the instant it names; beyond what UTC can write: refused.
    paris = words.created_at.astimezone(timezone(timedelta(hours=2)))  # type: ignore[union-attr]
    assert listed(api, f"created_at[gt]={paris.isoformat().replace('+', '%2B')}") == [ledger.id]
    for edge in ("0001-01-01T00:00:00%2B14:00", "9999-12-31T23:00:00-14:00"):
        refused = api("GET", f"{URL}?created_at[gt]={edge}")
        assert refused.status_code == 400, refused.get_data(as_text=True)
        assert "is out of range in UTC" in refused.get_json()["message"]


def test_every_medusa_list_filter_answers(api: Api, jobs: BatchJobs) -> None:
    done = jobs.create("uncounted", created_by="usr_1")
    words = jobs.create("words", {"words": ["a"]}, dry_run=True, created_by="usr_1")
    jobs.run_until_idle(timeout=10)  # done completed, words pre_processed
    canceled = jobs.create("ledger", {"n": 1}, created_by="usr_1")
    jobs.cancel(canceled.id)
    failed = jobs.create("broken", created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(failed.id).status == Status.FAILED
    everyone = [failed.id, canceled.id, words.id, done.id]
    assert listed(api, "completed_at=null") == [failed.id, canceled.id, words.id]
    assert listed(api, "canceled_at=null&failed_at=null") == [words.id, done.id]
    assert listed(api, "pre_processed_at=null") == [failed.id, canceled.id]
    assert listed(api, "confirmed_at=null&order=created_at") == [words.id, canceled.id, failed.id]
    epoch = "2000-01-01T00:00:00Z"
    for name, ids in [
        ("created_at", everyone),
        ("updated_at", everyone),
        ("pre_processed_at", [words.id, done.id]),
        ("confirmed_at", [done.id]),
        ("completed_at", [done.id]),
        ("failed_at", [failed.id]),
        ("canceled_at", [canceled.id]),
    ]:
        assert listed(api, f"{name}[gt]={epoch}") == ids, name
        assert listed(api, f"{name}[gte]={epoch}&{name}[lte]=2999-01-01") == ids, name
        assert listed(api, f"{name}[lt]={epoch}") == [], name
        assert len(listed(api, f"{name}=null")) == 4 - len(ids), name
    assert listed(api, "order=status") == [canceled.id, done.id, failed.id, words.id]
    assert listed(api, "order=-type&limit=2&offset=1") == [done.id, canceled.id]
    assert listed(api, "order=completed_at&status[]=completed&expand=created_by_user") == [done.id]


def test_fields_selects_the_fields_of_each_job_and_always_the_id(api: Api, jobs: BatchJobs) -> None:
    job = jobs.create("uncounted", created_by="usr_1")
    body = api("GET", f"{URL}?fields=status,created_at").get_json()
    assert body["batch_jobs"] == [
        {"id": job.id, "status": "created", "created_at": job.to_dict()["created_at"]}
    ]
    assert body["count"] == 1
    same = api("GET", f"{URL}?fields[]=created_at&fields[]=status,%20id").get_json()
    assert same["batch_jobs"] == body["batch_jobs"]
    assert api("GET", f"{URL}?fields=").get_json()["batch_jobs"] == [job.to_dict()]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=-1", "limit must be a non-negative integer, not '-1'"),
        ("limit=ten", "limit must be a non-negative integer, not 'ten'"),
        ("offset=1.5", "offset must be a non-negative integer, not '1.5'"),
        ("limit=1&limit=2", "limit is given 2 times"),
        (f"offset={2**63}", f"offset must be at most {2**63 - 1}, not {2**63}"),
        (
            "order=-password",
            "order must be one of id, type, status, created_by, created_at, "
            "updated_at, pre_processed_at, confirmed_at, processing_at, completed_at, "
            "canceled_at, failed_at, deleted_at, paused_at (with - for descending), "
            "not '-password'",
        ),
        ("status[]=done", "unknown status 'done'"),
        (
            "created_at=2024-01-01",
            "created_at needs an operator or null: created_at[gt], "
            "created_at[gte], created_at[lt], created_at[lte] or created_at=null",
        ),
        (
            "completed_at=null&completed_at[gt]=2024-01-01",
            "completed_at=null cannot be combined with completed_at[...]",
        ),
        (
            "completed_at[gt]=2024-01-01&completed_at=null",
            "completed_at=null cannot be combined with completed_at[...]",
        ),
        (
            "fields=id,password",
            "unknown field 'password' in fields; a batch job has id, type, status, created_by, "
            "dry_run, context, result, created_at, updated_at, pre_processed_at, confirmed_at, "
            "processing_at, completed_at, canceled_at, failed_at, deleted_at, paused_at",
        ),
        (
            "created_at[after]=2024-01-01",
            "created_at: unknown operator 'after'; use gt, gte, lt or lte",
        ),
        ("created_at[gt]=yesterday", "created_at: 'yesterday' is not an ISO 8601 date"),
        (
            "created_by=usr_2",
            "unknown query parameter 'created_by'; use limit, offset, order, fields, expand, "
            "id, type, status or a date filter such as created_at[gt] or completed_at=null",
        ),
        (
            "q=x",
            "unknown query parameter 'q'; use limit, offset, order, fields, expand, id, type, "
            "status or a date filter such as created_at[gt] or completed_at=null",
        ),
    ],
)
def test_bad_list_queries_are_invalid_data(api: Api, query: str, message: str) -> None:
    assert error_of(api("GET", f"{URL}?{query}")) == (400, "invalid_data", message)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("POST", "/confirm"), ("POST", "/cancel")]
)
def test_unknown_ids_are_not_found(api: Api, method: str, suffix: str) -> None:
    response = api(method, f"{URL}/batch_nope{suffix}")
    assert error_of(response) == (404, "not_found", "Batch job with id batch_nope was not found")


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("POST", "/confirm"), ("POST", "/cancel")]
)
@pytest.mark.parametrize("owner", ["usr_2", None])
def test_another_users_job_is_not_allowed_and_unchanged(
    api: Api, jobs: BatchJobs, method: str, suffix: str, owner: str | None
) -> None:
    job = jobs.create("words", {"words": ["a"]}, dry_run=True, created_by=owner)
    jobs.run_until_idle(timeout=10)
    before = jobs.retrieve(job.id)
    response = api(method, f"{URL}/{job.id}{suffix}")
    assert error_of(response) == (400, "not_allowed", NOT_OWNER_MESSAGE)
    assert jobs.retrieve(job.id) == before


def test_refused_transitions_are_not_allowed(api: Api, jobs: BatchJobs) -> None:
    created = jobs.create("words", {"words": ["a"]}, created_by="usr_1")
    assert error_of(api("POST", f"{URL}/{created.id}/confirm")) == (
        400,
        "not_allowed",
        "Cannot confirm processing for a batch job that is not pre processed",
    )
    failed = jobs.create("broken", created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(created.id).status == Status.COMPLETED
    assert jobs.retrieve(failed.id).status == Status.FAILED
    assert error_of(api("POST", f"{URL}/{created.id}/cancel")) == (
        400,
        "not_allowed",
        "Cannot cancel completed batch job",
    )
    assert error_of(api("POST", f"{URL}/{failed.id}/cancel")) == (
        400,
        "not_allowed",
        "Cannot cancel failed batch job",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the request body must be a JSON object with a type"),
        (
            b'{"type": "words",',
            "the request body is not valid JSON: Expecting property name "
            "enclosed in double quotes: line 1 column 18 (char 17)",
        ),
        (b"\xff\xfe{", "the request body is not valid JSON: "),
        (
            b'{"type": "uncounted", "context": {"n": NaN}}',
            "the request body is not valid JSON: NaN is not valid JSON",
        ),
        (b'["words"]', "the request body must be a JSON object, not array"),
        (b"{}", "type is required"),
        (b'{"type": 7}', "type must be a string, not number"),
        (b'{"type": "words", "context": ["a"]}', "context must be a JSON object, not array"),
        (b'{"type": "words", "context": "{}"}', "context must be a JSON object, not string"),
        (b'{"type": "uncounted", "dry_run": "yes"}', "dry_run must be a boolean, not string"),
        (b'{"type": "uncounted", "dry_run": 1}', "dry_run must be a boolean, not number"),
        (
            b'{"type": "uncounted", "created_by": "usr_2"}',
            "unknown field 'created_by'; a batch job takes type, context, dry_run and key",
        ),
        (b'{"type": "uncounted", "key": 7}', "key must be a string, not number"),
        (b'{"type": "uncounted", "key": ""}', "key must be 1 to 255 characters, not 0"),
        (b'{"type": "nope"}', "Unknown batch job type 'nope'; registered types: "),
        (
            b'{"type": "words", "context": {"words": "a"}}',
            "context.words must be a list of strings",
        ),
    ],
)
def test_bad_create_input_is_invalid_data_and_writes_nothing(
    api: Api, jobs: BatchJobs, body: bytes, message: str
) -> None:
    response = api("POST", data=body, headers={"Content-Type": "application/json"})
    status, type, text = error_of(response)
    assert (status, type) == (400, "invalid_data")
    # A message ending in ": " goes on with details from the JSON parser or the registry.
    assert text.startswith(message) if message.endswith(": ") else text == message
    assert count_jobs(jobs) == 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_only_a_json_body_is_read(api: Api, jobs: BatchJobs, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = api("POST", data=b'{"type": "uncounted"}', headers=headers)
    assert error_of(response) == (
        400,
        "invalid_data",
        "the request body must be sent as Content-Type: application/json",
    )
    assert count_jobs(jobs) == 0


def test_a_body_too_large_is_refused_unread(api: Api, jobs: BatchJobs) -> None:
    body = json.dumps({"type": "words", "context": {"words": ["a"] * MAX_BODY_BYTES}})
    response = api("POST", data=body, headers={"Content-Type": "application/json"})
    assert error_of(response) == (
        413,
        "invalid_data",
        f"the request body is larger than {MAX_BODY_BYTES} bytes",
    )
    assert count_jobs(jobs) == 0


@pytest.mark.parametrize("as_user", ["usr_1", None])
def test_unknown_routes_and_methods_answer_json(api: Api, as_user: str | None) -> None:
    assert error_of(api("GET", "/admin/nope", as_user=as_user)) == (
        404,
        "not_found",
        "GET /admin/nope is not a route of this API",
    )
    assert error_of(api("GET", f"{URL}/batch_1/retry")) == (
        404,
        "not_found",
        f"GET {URL}/batch_1/retry is not a route of this API",
    )
    response = api("DELETE", URL)
    assert error_of(response) == (405, "not_allowed", f"DELETE is not allowed on {URL}")
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


def test_an_unexpected_error_is_a_500_without_details(
    api: Api, jobs: BatchJobs, caplog: pytest.LogCaptureFixture
) -> None:
    response = api("POST", json={"type": "crashing"})
    request_id = response.headers["X-Request-Id"]
    assert error_of(response) == (
        500,
        "unknown_error",
        f"An unknown error occurred (request {request_id}).",
    )
    assert "a bug in prepare" not in response.get_data(as_text=True)
    assert f"POST /admin/batch-jobs failed (request {request_id})" in caplog.text
    assert "a bug in prepare" in caplog.text
    assert count_jobs(jobs) == 0


def deep_body(depth: int) -> bytes:
    """A create request whose context nests ``depth`` levels."""
    return b'{"type": "uncounted", "context": ' + b'{"a": ' * (depth - 1) + b"{}" + b"}" * depth


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (deep_body(MAX_JSON_DEPTH + 1), "context is nested more than 64 levels deep (at context"),
        (deep_body(971), "is nested more than 64 levels deep"),  # the body or its context
        (b"[" * 100_000, "the request body is nested more than 64 levels deep"),
        (b'{"type": "uncounted", "context": {"x": 1e400}}', "context.x is inf: numbers must"),
        (b'{"type": "uncounted", "context": {"x": NaN}}', "the request body is not valid JSON: "),
        (b'{"type": "uncounted", "context": {"x": "\\udcff"}}', "context.x is not valid UTF-8"),
    ],
)
def test_json_past_the_limits_is_invalid_data_and_writes_nothing(
    api: Api, jobs: BatchJobs, body: bytes, message: str
) -> None:
    response = api("POST", data=body, headers={"Content-Type": "application/json"})
    status, type, text = error_of(response)
    assert (status, type) == (400, "invalid_data")
    assert message in text and text.startswith(("context", "the request body")), text
    assert count_jobs(jobs) == 0


def test_a_context_at_the_depth_limit_is_saved_and_read_back(api: Api, jobs: BatchJobs) -> None:
    created = api("POST", data=deep_body(MAX_JSON_DEPTH), content_type="application/json")
    assert created.status_code == 201
    job_id = created.get_json()["batch_job"]["id"]
    assert api("GET", f"{URL}/{job_id}").status_code == 200
    assert [job["id"] for job in api("GET", URL).get_json()["batch_jobs"]] == [job_id]
    assert api("POST", f"{URL}/{job_id}/cancel").status_code == 200


@pytest.mark.parametrize("limit", ["1001", "1000000000000", "9" * 5000])
def test_a_page_larger_than_the_cap_is_refused_naming_the_cap(api: Api, limit: str) -> None:
    status, type, message = error_of(api("GET", f"{URL}?limit={limit}"))
    assert (status, type) == (400, "invalid_data")
    assert message == f"limit must be at most {MAX_LIST_LIMIT}, not {limit[:40]}"
    assert api("GET", f"{URL}?limit={MAX_LIST_LIMIT}").status_code == 200


def test_an_id_longer_than_any_id_is_not_found(api: Api) -> None:
    status, type, message = error_of(api("GET", f"{URL}/{'x' * 8000}"))
    assert (status, type) == (404, "not_found")
    assert message == f"Batch job with id {'x' * 64}… (8000 characters) was not found"


def test_a_url_too_long_is_414_in_our_shape(api: Api) -> None:
    assert error_of(api("GET", f"{URL}?type={'x' * MAX_URL_BYTES}")) == (
        414,
        "invalid_data",
        f"the URL is longer than {MAX_URL_BYTES} bytes",
    )


def test_nothing_the_api_writes_is_invalid_json(api: Api, jobs: BatchJobs) -> None:
    job = jobs.create("uncounted", {"x": 1.5}, created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    for path in (URL, f"{URL}/{job.id}"):
        response = api("GET", path)
        text = response.get_data(as_text=True)
        assert "NaN" not in text and "Infinity" not in text
        json.loads(text, parse_constant=pytest.fail)  # NaN, Infinity: not JSON


def test_a_write_that_committed_is_never_answered_500(
    api: Api, jobs: BatchJobs, caplog: pytest.LogCaptureFixture
) -> None:
    def spoil(sender: Any, *, job: Any, **extra: Any) -> None:
        job.context["spoiled"] = math.nan  # after the commit: the answer cannot encode it

    jobs.subscribe("batch.created", spoil)
    response = api("POST", json={"type": "uncounted"})
    assert response.status_code == 201
    job_id = response.get_json()["batch_job"]["id"]
    assert response.get_json() == {"batch_job": {"id": job_id}}
    assert jobs.retrieve(job_id).context == {}  # as saved
    request_id = response.headers["X-Request-Id"]
    assert f"failed after batch job {job_id} was saved (request {request_id})" in caplog.text


def test_the_openapi_description_names_every_route(api: Api, jobs: BatchJobs) -> None:
    response = api("GET", OPENAPI_PATH, as_user=None)
    assert response.status_code == 200
    document = response.get_json()
    assert document == openapi_document(jobs.registry.types)
    assert document["openapi"].startswith("3.")
    create = document["components"]["schemas"]["CreateBatchJob"]
    assert create["properties"]["type"]["enum"] == sorted(jobs.registry.types)
    app = create_app(jobs, tokens=TOKENS)
    routes = {
        (re.sub(r"<(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert described == routes


# -- who calls ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, NO_AUTH),
        ({"Authorization": "Bearer tok-3"}, "Invalid bearer token"),
        ({"Authorization": "Bearer "}, "Invalid bearer token"),
        ({"Authorization": "Bearer tok-1x"}, "Invalid bearer token"),
        ({"Authorization": "Basic dXNyXzE6cHc="}, "Invalid bearer token"),
        ({"Authorization": "tok-1"}, "Invalid bearer token"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", URL),
        ("GET", URL),
        ("GET", f"{URL}/batch_1"),
        ("POST", f"{URL}/batch_1/confirm"),
        ("POST", f"{URL}/batch_1/cancel"),
    ],
)
def test_no_valid_credentials_is_401_on_every_route(
    api: Api, jobs: BatchJobs, headers: dict[str, str], message: str, method: str, path: str
) -> None:
    response = api(method, path, as_user=None, headers=headers, json={"type": "uncounted"})
    assert error_of(response) == (401, "unauthorized", message)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert count_jobs(jobs) == 0


def test_the_bearer_scheme_is_case_insensitive(api: Api) -> None:
    response = api("GET", as_user=None, headers={"Authorization": "bearer  tok-2 "})
    assert response.status_code == 200


def test_the_application_may_say_who_calls(jobs: BatchJobs) -> None:
    def from_header(request: Request) -> str | None:
        return request.headers.get("X-User")

    client = create_app(jobs, authenticate=from_header).test_client()
    created = client.post(URL, json={"type": "uncounted"}, headers={"X-User": "usr_9"})
    assert created.get_json()["batch_job"]["created_by"] == "usr_9"
    assert error_of(client.get(URL)) == (401, "unauthorized", "Authentication required")
    assert error_of(client.get(URL, headers={"Authorization": "Bearer tok-1"})) == (
        401,
        "unauthorized",
        "Authentication required",
    )
    both = create_app(jobs, authenticate=from_header, tokens=TOKENS).test_client()
    assert both.get(URL, headers={"X-User": "usr_9"}).get_json()["count"] == 1
    assert both.get(URL, headers=BEARER["usr_1"]).get_json()["count"] == 0
    assert both.get(URL, headers={**BEARER["usr_1"], "X-User": "usr_9"}).get_json()["count"] == 1


def test_the_api_needs_a_way_to_know_who_calls(jobs: BatchJobs) -> None:
    with pytest.raises(ValueError, match="needs authenticate or tokens"):
        create_app(jobs)
    with pytest.raises(ValueError, match="needs authenticate or tokens"):
        create_app(jobs, tokens={})
    for tokens in ({"": "usr_1"}, {" ": "usr_1"}, {"tok": ""}, {"tok": 1}):
        with pytest.raises(ValueError, match="non-empty token strings to non-empty user ids"):
            create_app(jobs, tokens=tokens)  # type: ignore[arg-type]


def test_an_authenticate_answer_that_is_no_user_id(
    jobs: BatchJobs, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[Any] = ["", 42]
    client = create_app(jobs, authenticate=lambda request: answers.pop(0)).test_client()
    assert error_of(client.get(URL)) == (401, "unauthorized", "Authentication required")
    status, type, message = error_of(client.get(URL))
    assert (status, type) == (500, "unknown_error")
    assert message.startswith("An unknown error occurred (request ")
    assert "authenticate() returned 42, not a user id (str) or None" in caplog.text


def test_the_blueprint_mounts_in_a_host_app(jobs: BatchJobs) -> None:
    host = Flask("host")

    @host.get("/")
    def home() -> str:
        return "home"

    host.register_blueprint(create_blueprint(jobs, authenticate=lambda r: "usr_1"))
    client = host.test_client()
    assert client.get("/").get_data(as_text=True) == "home"
    assert client.post(URL, json={"type": "uncounted"}).status_code == 201
    assert error_of(client.get(f"{URL}/batch_nope"))[:2] == (404, "not_found")
    assert error_of(client.post(URL, json={"type": 1}))[:2] == (400, "invalid_data")


# -- the server --------------------------------------------------------------------------------


def request_json(url: str, *, method: str = "GET", token: str = "tok-1", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.load(response)


def test_the_server_answers_on_a_bounded_pool_of_threads(jobs: BatchJobs) -> None:
    threads: set[str] = set()

    def who(request: Request) -> str:
        threads.add(threading.current_thread().name)
        return "usr_1"

    server = AdminServer(create_app(jobs, authenticate=who), port=0)
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    try:
        assert server.url == f"http://127.0.0.1:{server.port}"
        status, body = request_json(f"{server.url}{URL}", method="POST", body={"type": "uncounted"})
        assert (status, body["batch_job"]["created_by"]) == (201, "usr_1")

        def client() -> None:
            for _ in range(10):
                assert request_json(f"{server.url}{URL}")[1]["count"] == 1

        clients = [threading.Thread(target=client) for _ in range(DEFAULT_THREADS + 4)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        with pytest.raises(urllib.error.HTTPError) as refused:
            request_json(f"{server.url}/nope")
        assert refused.value.code == 404
        assert json.load(refused.value)["type"] == "not_found"
        refused.value.close()
    finally:
        assert server.shutdown() is True
        serving.join(timeout=5)
    assert not serving.is_alive()
    # Each thread keeps a database connection: their number must stay bounded.
    assert 1 <= len(threads) <= DEFAULT_THREADS + DEFAULT_STREAMS
    assert all(name.startswith("batchjobs-http") for name in threads)
    with pytest.raises(OSError):
        request_json(f"{server.url}{URL}")  # no longer listening


def test_a_taken_port_is_an_error(jobs: BatchJobs) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            AdminServer(create_app(jobs, tokens=TOKENS), port=port)
        result = serve_command(jobs, "--token", "tok=usr_1", "--port", str(port))
        assert result.exit_code == 2
        assert f"Cannot listen on 127.0.0.1:{port}:" in result.stderr


def test_a_server_never_started_shuts_down_at_once(jobs: BatchJobs) -> None:
    server = AdminServer(create_app(jobs, tokens=TOKENS), port=0)
    assert server.shutdown(grace=1) is True


# -- batchjobs serve ---------------------------------------------------------------------------


def serve_command(jobs: BatchJobs, *args: str, env: dict[str, str] | None = None) -> Any:
    clean: dict[str, str | None] = {
        "BATCHJOBS_DB": None,
        "BATCHJOBS_APP": None,
        "BATCHJOBS_REDIS_URL": None,
        "BATCHJOBS_TOKENS": None,
    }
    group = [
        "--db",
        jobs.store.location,
        "--files-dir",
        str(jobs.files.root),
        "--app",
        "tests.strategies",
    ]
    return CliRunner(env={**clean, **(env or {})}).invoke(cli, [*group, "serve", *args])


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "Name the API's users: --token TOKEN=USER (repeatable) or BATCHJOBS_TOKENS"),
        (("--token", "s3cret"), {}, "expected TOKEN=USER (the value is not shown"),
        (("--token", "=usr_1"), {}, "expected TOKEN=USER"),
        ((), {"BATCHJOBS_TOKENS": "a=usr_1 a=usr_2"}, "One --token is given for two users"),
        (("--port", "70000"), {}, "70000 is not in the range 0<=x<=65535"),
        (
            ("--token", "a=usr_1", "--secret-key", "s3cret"),
            {},
            "secret_key must be a string or bytes of 16 characters or more",
        ),
        (
            ("--token", "a=usr_1"),
            {"BATCHJOBS_SECRET_KEY": "s3cret"},
            "secret_key must be a string or bytes of 16 characters or more",
        ),
        (("--token", "a=usr_1", "--max-upload", "0"), {}, "Invalid value for '--max-upload'"),
    ],
)
def test_serve_refuses_bad_options(
    jobs: BatchJobs, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = serve_command(jobs, *args, env=env)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "s3cret" not in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_serve_runs_the_api_and_the_workers_until_sigterm(
    db_url: str | Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHJOBS_")}
    env["BATCHJOBS_TOKENS"] = "tok-1=usr_1 tok-2=usr_2"
    env["BATCHJOBS_FILES_DIR"] = str(tmp_path / "jobs-files")
    # The checkout's code, whichever batchjobs is installed; --app from the repository root.
    command = [sys.executable, "-m", "batchjobs.cli", "--db", str(db_url)]
    command += ["--app", "tests.strategies", "serve", "--port", "0", "--max-upload", "5000"]
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert server.stderr is not None
        first = server.stderr.readline()
        assert "Dashboard on http://127.0.0.1:" in first, first
        assert " and admin API on http://127.0.0.1:" in first, first
        # http://127.0.0.1:PORT/admin/batch-jobs
        base = first.split(" admin API on ", 1)[1].split()[0]
        status, body = request_json(
            base, method="POST", body={"type": "ledger", "context": {"n": 25}}
        )
        assert status == 201
        job_id = body["batch_job"]["id"]
        deadline = time.monotonic() + 15
        while (job := request_json(f"{base}/{job_id}")[1]["batch_job"])["status"] != "completed":
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["result"]["advancement_count"] == 25 and job["created_by"] == "usr_1"
        assert request_json(base, token="tok-2")[1]["count"] == 0
        # Uploads up to --max-upload, a JSON 413 past it.
        uploads = base.replace("/batch-jobs", "/uploads")
        for size, expected in [(1000, 200), (6000, 413)]:
            body, content_type = multipart(("a.csv", b"x" * size))
            headers = {"Authorization": "Bearer tok-1", "Content-Type": content_type}
            sent = urllib.request.Request(uploads, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(sent, timeout=10) as answer:
                    status, payload = answer.status, json.load(answer)
            except urllib.error.HTTPError as error:
                with error:
                    status, payload = error.code, json.load(error)
            assert status == expected, payload
        assert payload["message"] == "the request body is larger than 5000 bytes"
        # A client's terminal codes reach the log escaped.
        port = urllib.parse.urlsplit(base).port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"GET /admin/batch-jobs/\x1b[31mred HTTP/1.0\r\n\r\n")
            with raw.makefile("rb") as reply:
                assert reply.readline().split()[1] == b"401"
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, stderr
    assert stdout == ""
    assert f"{job_id} ledger completed 25/25" in stderr
    # Our request log, a line each, and no terminal codes in a log that is not a terminal.
    lines = [line.split(" ", 1)[1] for line in stderr.splitlines() if TIME.match(line)]
    assert "POST /admin/batch-jobs 201" in lines
    assert f"GET /admin/batch-jobs/{job_id} 200" in lines
    assert "GET /admin/batch-jobs/\\x1b[31mred 401" in lines
    assert "\x1b" not in stderr
    assert stderr.rstrip().endswith("Stopped.") and "Traceback" not in stderr
    with BatchJobs(db_url, files_dir=tmp_path / "jobs-files") as jobs:
        assert jobs.retrieve(job_id).status == Status.COMPLETED
