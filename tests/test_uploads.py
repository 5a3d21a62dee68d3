"""Medusa's upload routes: files in, signed download links out, each caller's files its own.

Flask's test client first; then the whole import and export flows through a
real server (waitress) and a real HTTP client (urllib), on loopback.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import re
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import flask
import pytest
from freezegun import freeze_time
from werkzeug.test import TestResponse

from batchjobs import BatchJobs, Status
from batchjobs.files import NOT_OWNER_MESSAGE
from batchjobs.http import (
    DEFAULT_LINK_SECONDS,
    UPLOADS_PREFIX,
    AdminServer,
    ServerLimits,
    UploadSettings,
    create_app,
    dashboard,
)
from batchjobs.limits import MAX_UPLOAD_BYTES
from tests.conftest import shop_rows
from tests.test_builtin_strategies import shop_csv, table_rows

TOKENS = {"tok-1": "usr_1", "tok-2": "usr_2"}
BEARER = {user: {"Authorization": f"Bearer {token}"} for token, user in TOKENS.items()}
JOBS = "/admin/batch-jobs"
SECRET = "a secret key of the tests, 32 chars"
Api = Callable[..., TestResponse]
ROWS = 12


@pytest.fixture
def shop_jobs(csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]) -> BatchJobs:
    """``BatchJobs`` with csv-export and csv-import over a shop of ``ROWS`` products."""
    return csv_jobs(make_shop(rows=ROWS))


@pytest.fixture
def make_api(shop_jobs: BatchJobs) -> Callable[..., Api]:
    """``make_api(**settings)``: ``api(method, path, as_user="usr_1", **kwargs)`` on an app
    with those ``UploadSettings``."""

    def make(**settings: Any) -> Api:
        uploads = UploadSettings(**{"secret_key": SECRET, **settings})
        client = create_app(shop_jobs, tokens=TOKENS, uploads=uploads).test_client()

        def call(method: str, path: str, *, as_user: str | None = "usr_1", **kwargs: Any) -> Any:
            headers = {**(BEARER[as_user] if as_user else {}), **kwargs.pop("headers", {})}
            # Buffered: the answer read whole, its file closed.
            kwargs.setdefault("buffered", True)
            return client.open(path, method=method, headers=headers, **kwargs)

        return call

    return make


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def error_of(response: TestResponse) -> tuple[int, str, str]:
    body = response.get_json()
    assert set(body) == {"type", "message"}, body
    return response.status_code, body["type"], body["message"]


def upload(api: Api, *files: tuple[str, bytes], as_user: str = "usr_1") -> list[dict[str, str]]:
    """Upload ``(name, data)`` files in one request; the answer's ``uploads``."""
    data = {"files": [(_stream(content), name) for name, content in files]}
    response = api("POST", UPLOADS_PREFIX, as_user=as_user, data=data)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert list(body) == ["uploads"]
    uploads: list[dict[str, str]] = body["uploads"]
    return uploads


def _stream(content: bytes) -> io.BytesIO:
    return io.BytesIO(content)


def download_url(api: Api, key: str, as_user: str = "usr_1") -> str:
    response = api(
        "POST", f"{UPLOADS_PREFIX}/download-url", as_user=as_user, json={"file_key": key}
    )
    assert response.status_code == 200, response.get_json()
    assert list(response.get_json()) == ["download_url"]
    url: str = response.get_json()["download_url"]
    return url


def path_of(url: str) -> str:
    return urlsplit(url).path


# -- uploads -----------------------------------------------------------------------------------


def test_an_upload_stores_each_file_for_the_caller(api: Api, shop_jobs: BatchJobs) -> None:
    first, second = upload(api, ("products.csv", b"id,sku\r\n1,A\r\n"), ("Été 2024.csv", b"x"))
    for answer in (first, second):
        assert list(answer) == ["url", "key"]
        assert answer["key"].startswith("uploads/")
        assert shop_jobs.files.owner(answer["key"]) == "usr_1"
    assert first["key"].endswith(".csv") and "/products-" in first["key"]
    assert "/t_2024-" in second["key"]
    with shop_jobs.files.open_read(first["key"]) as source:
        assert source.read() == b"id,sku\r\n1,A\r\n"
    # The url is a download link for the caller.
    response = api("GET", path_of(first["url"]))
    assert (response.status_code, response.data) == (200, b"id,sku\r\n1,A\r\n")
    # The same name twice is two files.
    again = upload(api, ("products.csv", b"other"))[0]
    assert again["key"] != first["key"]


def test_an_upload_without_files_is_invalid_and_stores_nothing(
    api: Api, shop_jobs: BatchJobs
) -> None:
    message = "send the files as multipart/form-data, in a field named files"
    for kwargs in (
        {"data": {"file": (_stream(b"x"), "a.csv")}},
        {"data": {"files": "not a file"}},
        {"json": {"files": ["a"]}},
        {},
    ):
        assert error_of(api("POST", UPLOADS_PREFIX, **kwargs)) == (400, "invalid_data", message)
    assert list(shop_jobs.files.keys()) == []


def test_an_upload_over_the_limit_is_413_and_stores_nothing(
    make_api: Callable[..., Api], shop_jobs: BatchJobs
) -> None:
    api = make_api(max_bytes=1000)
    assert upload(api, ("small.csv", b"x" * 500))
    response = api("POST", UPLOADS_PREFIX, data={"files": [(_stream(b"x" * 2000), "big.csv")]})
    assert error_of(response) == (
        413,
        "invalid_data",
        "the upload is larger than 1000 bytes, the most it may be",
    )
    assert [key for key in list(shop_jobs.files.keys()) if "big" in key] == []
    # Unless told, an upload may be 100 MiB.
    assert UploadSettings().max_bytes == MAX_UPLOAD_BYTES == 100 * 1024 * 1024


def test_a_failed_rollback_of_an_upload_is_logged_and_the_upload_s_own_error_answered(
    shop_jobs: BatchJobs, caplog: pytest.LogCaptureFixture
) -> None:
    files = shop_jobs.files

    class Failing(io.BytesIO):
        """The second file: while it is read, the first one's owner changes (so the
        rollback may not delete it), then the read fails as a broken disk does."""

        def read(self, size: int | None = -1) -> bytes:
            (first,) = files.keys()
            files.put(first, [b"taken"])  # the application's file now, not usr_1's
            raise OSError(errno.EIO, "the second file could not be read")

    class Request(flask.Request):
        def _get_file_stream(  # where werkzeug spools each uploaded file
            self,
            total_content_length: int | None,
            content_type: str | None,
            filename: str | None = None,
            content_length: int | None = None,
        ) -> IO[bytes]:
            if filename == "second.csv":
                return Failing()
            return super()._get_file_stream(
                total_content_length, content_type, filename, content_length
            )

    app = create_app(shop_jobs, tokens=TOKENS, uploads=UploadSettings(secret_key=SECRET))
    app.request_class = Request
    data = {"files": [(_stream(b"a"), "first.csv"), (_stream(b"b"), "second.csv")]}
    with caplog.at_level(logging.ERROR, logger="batchjobs.http"):
        response = app.test_client().post(UPLOADS_PREFIX, headers=BEARER["usr_1"], data=data)
    status, type, message = error_of(response)
    assert (status, type) == (500, "unknown_error")  # the upload's error, not the rollback's
    assert "the second file could not be read" in caplog.text
    (first,) = files.keys()
    assert f"could not remove {first} after a failed upload" in caplog.text
    assert NOT_OWNER_MESSAGE in caplog.text  # why it could not


# -- links -------------------------------------------------------------------------------------


def test_a_download_link_streams_the_file_as_an_attachment(api: Api, shop_jobs: BatchJobs) -> None:
    data = "sku,name\r\nA,Crème brûlée\r\n".encode() * 1000
    key = upload(api, ("menu.csv", data))[0]["key"]
    url = download_url(api, key)
    assert url.startswith("http://localhost/admin/uploads/download/")
    response = api("GET", path_of(url), buffered=False)
    assert response.is_streamed  # a file, read as it is sent
    assert response.status_code == 200
    assert response.get_data() == data
    response.close()
    name = key.rsplit("/", 1)[1]
    assert response.headers["Content-Disposition"] == f"attachment; filename={name}"
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["Cache-Control"] == "private, no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_link_alone_downloads_the_file_as_a_browser_opens_it(api: Api) -> None:
    key = upload(api, ("report.csv", b"id\r\n1\r\n"))[0]["key"]
    url = path_of(download_url(api, key))
    # No Authorization header, no cookie: the signed link is the authority.
    response = api("GET", url, as_user=None)
    assert (response.status_code, response.data) == (200, b"id\r\n1\r\n")
    name = key.rsplit("/", 1)[1]
    assert response.headers["Content-Disposition"] == f"attachment; filename={name}"
    assert response.headers["Cache-Control"] == "private, no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    # The link's own user may send credentials too.
    assert api("GET", url, as_user="usr_1").data == b"id\r\n1\r\n"
    # Credentials that are sent must be valid.
    assert error_of(api("GET", url, as_user=None, headers={"Authorization": "Bearer nope"})) == (
        401,
        "unauthorized",
        "Invalid bearer token",
    )


def test_a_link_lasts_an_hour_unless_told(api: Api) -> None:
    assert DEFAULT_LINK_SECONDS == UploadSettings().link_seconds == 3600


@pytest.mark.parametrize("as_user", [None, "usr_1"])
def test_a_link_expires(api: Api, as_user: str | None) -> None:
    key = upload(api, ("a.csv", b"x"))[0]["key"]
    with freeze_time("2026-03-01T12:00:00Z") as clock:
        url = download_url(api, key)
        clock.tick(timedelta(seconds=DEFAULT_LINK_SECONDS - 1))
        assert api("GET", path_of(url), as_user=as_user).status_code == 200
        clock.tick(timedelta(seconds=1))
        assert error_of(api("GET", path_of(url), as_user=as_user)) == (
            400,
            "not_allowed",
            "This download link expired at 2026-03-01T13:00:00+00:00; ask for a new one",
        )


def test_links_last_as_long_as_the_settings_say(make_api: Callable[..., Api]) -> None:
    api = make_api(link_seconds=60)
    key = upload(api, ("a.csv", b"x"))[0]["key"]
    with freeze_time("2026-03-01T12:00:00Z") as clock:
        url = download_url(api, key)
        clock.tick(timedelta(seconds=60))
        assert error_of(api("GET", path_of(url)))[1] == "not_allowed"


def test_an_altered_link_or_one_signed_with_another_key_is_not_found(
    api: Api, make_api: Callable[..., Api]
) -> None:
    mine = upload(api, ("a.csv", b"mine"))[0]["key"]
    theirs = upload(api, ("b.csv", b"theirs"), as_user="usr_2")[0]["key"]
    url = path_of(download_url(api, mine))
    token = url.rsplit("/", 1)[1]
    payload, signature = token.rsplit(".", 1)
    forged = base64.urlsafe_b64encode(
        json.dumps({"key": theirs, "user": "usr_1", "expires": 2**40}).encode()
    ).rstrip(b"=")
    not_found = (404, "not_found", "Download link not found: it is not one this server made, "
                 "or was altered")  # fmt: skip
    for altered in (
        f"{forged.decode()}.{signature}",
        f"{payload}.{signature[:-2]}xx",
        payload,
        "nonsense",
    ):
        for as_user in ("usr_1", None):
            path = f"{UPLOADS_PREFIX}/download/{altered}"
            assert error_of(api("GET", path, as_user=as_user)) == not_found
    # Another key signs other links; the same key (another process) reads them.
    other = make_api(secret_key="another secret key, 32 characters")
    assert error_of(other("GET", url, as_user=None)) == not_found
    assert make_api()("GET", url, as_user=None).data == b"mine"


def test_without_a_secret_key_links_work_in_the_app_that_made_them(shop_jobs: BatchJobs) -> None:
    apps = [create_app(shop_jobs, tokens=TOKENS).test_client() for _ in range(2)]
    created = apps[0].post(
        UPLOADS_PREFIX, data={"files": [(_stream(b"x"), "a.csv")]}, headers=BEARER["usr_1"]
    )
    url = path_of(created.get_json()["uploads"][0]["url"])
    assert apps[0].get(url, buffered=True).data == b"x"
    assert apps[1].get(url, buffered=True).status_code == 404


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_bytes": 0}, "max_bytes must be a positive integer, not 0"),
        ({"max_bytes": 1.5}, "max_bytes must be a positive integer, not 1.5"),
        ({"link_seconds": 0}, "link_seconds must be a positive number, not 0"),
        ({"link_seconds": float("inf")}, "link_seconds must be a positive number, not inf"),
        ({"secret_key": "short"}, "secret_key must be a string or bytes of 16 characters"),
        ({"secret_key": 42}, "secret_key must be a string or bytes of 16 characters"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UploadSettings(**settings)


# -- deleting ----------------------------------------------------------------------------------


def test_deleting_a_file_answers_medusa_s_shape(api: Api, shop_jobs: BatchJobs) -> None:
    key = upload(api, ("a.csv", b"x"))[0]["key"]
    url = path_of(download_url(api, key))
    response = api("DELETE", UPLOADS_PREFIX, json={"file_key": key})
    assert (response.status_code, response.get_json()) == (
        200,
        {"id": key, "object": "file", "deleted": True},
    )
    assert not shop_jobs.files.exists(key)
    gone = (404, "not_found", f"File with key {key} was not found")
    assert error_of(api("DELETE", UPLOADS_PREFIX, json={"file_key": key})) == gone
    assert error_of(api("GET", url)) == gone
    assert error_of(api("GET", url, as_user=None)) == gone
    missing = {"file_key": key}
    assert error_of(api("POST", f"{UPLOADS_PREFIX}/download-url", json=missing)) == gone


@pytest.mark.parametrize("route", ["download-url", "delete"])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json": {}}, 'the request body must be {"file_key": "<key>"}'),
        ({"json": {"file_key": "a", "x": 1}}, 'the request body must be {"file_key": "<key>"}'),
        ({"json": ["a"]}, 'the request body must be {"file_key": "<key>"}'),
        ({"json": {"file_key": 3}}, "file key must be a non-empty string"),
        ({"json": {"file_key": "../jobs.db"}}, "invalid file key '../jobs.db'"),
        ({"data": "file_key=a"}, "the request body must be sent as Content-Type: application/json"),
        (
            {"data": "{", "content_type": "application/json"},
            "the request body is not valid JSON",
        ),
    ],
)
def test_bad_bodies_are_invalid_data(
    api: Api, route: str, kwargs: dict[str, Any], message: str
) -> None:
    method, path = ("DELETE", UPLOADS_PREFIX) if route == "delete" else (
        "POST", f"{UPLOADS_PREFIX}/download-url"
    )  # fmt: skip
    status, type, text = error_of(api(method, path, **kwargs))
    assert (status, type) == (400, "invalid_data")
    assert text.startswith(message)


# -- owners ------------------------------------------------------------------------------------


def test_another_user_is_refused_on_each_of_a_users_keys_and_links(
    api: Api, shop_jobs: BatchJobs
) -> None:
    key = upload(api, ("products.csv", shop_csv(shop_rows(2))))[0]["key"]
    export = api("POST", JOBS, json={"type": "csv-export", "context": {"table": "products"}})
    shop_jobs.run_until_idle(timeout=10)
    exported = shop_jobs.retrieve(export.get_json()["batch_job"]["id"]).result["file_key"]
    assert shop_jobs.files.owner(exported) == "usr_1"
    refused = (400, "not_allowed", NOT_OWNER_MESSAGE)
    jobs_before = shop_jobs.list_and_count(limit=0)[1]
    for file_key in (key, exported):
        link = path_of(download_url(api, file_key))
        body = {"file_key": file_key}
        assert error_of(api("GET", link, as_user="usr_2")) == refused
        linked = api("POST", f"{UPLOADS_PREFIX}/download-url", as_user="usr_2", json=body)
        assert error_of(linked) == refused
        assert error_of(api("DELETE", UPLOADS_PREFIX, as_user="usr_2", json=body)) == refused
        context = {"table": "products_copy", "file_key": file_key}
        created = api(
            "POST", JOBS, as_user="usr_2", json={"type": "csv-import", "context": context}
        )
        assert error_of(created) == refused
        assert api("GET", link).status_code == 200  # still there, still usr_1's
        assert api("GET", link, as_user=None).status_code == 200  # the link alone
    assert shop_jobs.list_and_count(limit=0)[1] == jobs_before  # no job was created
    assert (
        table_rows(shop_jobs.strategy("csv-import").databases["shop"].path, "products_copy") == []
    )


def test_a_link_is_refused_once_its_file_is_no_longer_its_users(
    api: Api, shop_jobs: BatchJobs
) -> None:
    key = upload(api, ("a.csv", b"x"))[0]["key"]
    url = path_of(download_url(api, key))
    shop_jobs.files.put(key, [b"the application's now"])
    for as_user in ("usr_1", None):
        assert error_of(api("GET", url, as_user=as_user)) == (
            400,
            "not_allowed",
            NOT_OWNER_MESSAGE,
        )
    # Nor once another user's: re-owned after the link was made.
    shop_jobs.files.delete(key)
    shop_jobs.files.for_user("usr_2").put(key, [b"usr_2's now"])
    for as_user in ("usr_1", "usr_2", None):
        assert error_of(api("GET", url, as_user=as_user)) == (
            400,
            "not_allowed",
            NOT_OWNER_MESSAGE,
        )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", UPLOADS_PREFIX),
        ("POST", f"{UPLOADS_PREFIX}/download-url"),
        ("DELETE", UPLOADS_PREFIX),
    ],
)
def test_every_upload_route_but_the_download_needs_a_caller(
    api: Api, method: str, path: str
) -> None:
    response = api(method, path, as_user=None, json={"file_key": "a.csv"})
    assert error_of(response) == (
        401,
        "unauthorized",
        "Authentication required: send Authorization: Bearer <token>",
    )
    # The download's link is its credential: without a good one, not found.
    assert error_of(api("GET", f"{UPLOADS_PREFIX}/download/anything", as_user=None)) == (
        404,
        "not_found",
        "Download link not found: it is not one this server made, or was altered",
    )


def test_an_application_s_own_authentication_is_optional_on_a_link_too(
    shop_jobs: BatchJobs,
) -> None:
    def authenticate(request: Any) -> str | None:
        user: str | None = request.headers.get("X-User")
        return user

    client = create_app(
        shop_jobs, authenticate=authenticate, uploads=UploadSettings(secret_key=SECRET)
    ).test_client()
    created = client.post(
        UPLOADS_PREFIX, data={"files": [(_stream(b"x"), "a.csv")]}, headers={"X-User": "usr_1"}
    )
    url = path_of(created.get_json()["uploads"][0]["url"])
    assert client.get(url, buffered=True).data == b"x"
    assert client.get(url, headers={"X-User": "usr_1"}, buffered=True).data == b"x"
    refused = client.get(url, headers={"X-User": "usr_2"}, buffered=True)
    assert error_of(refused) == (400, "not_allowed", NOT_OWNER_MESSAGE)
    # Every other route still needs the caller.
    assert client.get(JOBS).status_code == 401


# -- the flows end to end, with Flask's client ---------------------------------------------------


def test_import_upload_preview_confirm_complete_over_http(api: Api, shop_jobs: BatchJobs) -> None:
    data = shop_csv(shop_rows(5))
    key = upload(api, ("products.csv", data))[0]["key"]
    context = {"table": "products_copy", "file_key": key}
    created = api("POST", JOBS, json={"type": "csv-import", "context": context, "dry_run": True})
    assert created.status_code == 201
    job_id = created.get_json()["batch_job"]["id"]
    shop_jobs.run_until_idle(timeout=10)
    preview = api("GET", f"{JOBS}/{job_id}").get_json()["batch_job"]
    assert preview["status"] == "pre_processed"
    assert [d["message"] for d in preview["result"]["stat_descriptors"]] == [
        "5 rows will be created in shop.products_copy",
        "0 rows will be updated in shop.products_copy",
    ]
    path = shop_jobs.strategy("csv-import").databases["shop"].path
    assert table_rows(path, "products_copy") == []  # a dry run writes nothing
    assert api("POST", f"{JOBS}/{job_id}/confirm").get_json()["batch_job"]["status"] == "confirmed"
    shop_jobs.run_until_idle(timeout=10)
    done = api("GET", f"{JOBS}/{job_id}").get_json()["batch_job"]
    assert (done["status"], done["result"]["imported"]) == ("completed", 5)
    assert table_rows(path, "products_copy") == table_rows(path, "products")[:5]


def test_export_then_download_the_file_byte_for_byte_over_http(
    api: Api, shop_jobs: BatchJobs
) -> None:
    created = api("POST", JOBS, json={"type": "csv-export", "context": {"table": "products"}})
    job_id = created.get_json()["batch_job"]["id"]
    shop_jobs.run_until_idle(timeout=10)
    job = api("GET", f"{JOBS}/{job_id}").get_json()["batch_job"]
    assert job["status"] == "completed"
    response = api("GET", path_of(download_url(api, job["result"]["file_key"])))
    assert response.status_code == 200
    with shop_jobs.files.open_read(job["result"]["file_key"]) as source:
        assert response.data == source.read()
    path = shop_jobs.strategy("csv-export").databases["shop"].path
    assert response.data == shop_csv(table_rows(path, "products"))
    assert len(response.data) == job["result"]["file_size"]


# -- the same flows with a real server and a real HTTP client ----------------------------------


@contextmanager
def serving(jobs: BatchJobs, **limits: Any) -> Iterator[AdminServer]:
    app = create_app(jobs, tokens=TOKENS, uploads=UploadSettings(secret_key=SECRET))
    app.secret_key = SECRET
    upload_bytes = limits.get("upload_bytes", MAX_UPLOAD_BYTES)
    # The dashboard at the root, as serve mounts it: its import wizard takes uploads too.
    app.register_blueprint(
        dashboard.create_blueprint(jobs, tokens=TOKENS, max_upload_bytes=upload_bytes)
    )
    server = AdminServer(app, port=0, limits=ServerLimits(**limits))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    jobs.start()
    try:
        yield server
    finally:
        jobs.shutdown()
        assert server.shutdown(grace=5) is True
        thread.join(timeout=10)


def call(
    url: str,
    *,
    method: str = "GET",
    user: str | None = "usr_1",
    body: bytes | None = None,
    content_type: str | None = None,
    payload: Any = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with urllib; status, headers and body, errors included."""
    headers = dict(BEARER[user]) if user else {}
    if payload is not None:
        body, content_type = json.dumps(payload).encode(), "application/json"
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with closing(error):
            return error.code, dict(error.headers), error.read()


def multipart(*files: tuple[str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with ``files`` in the field ``files``, and its type."""
    boundary = f"batchjobs-{secrets.token_hex(8)}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: text/csv\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.slow
def test_both_flows_through_a_real_server_and_client(
    shop_jobs: BatchJobs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchjobs.http")
    with serving(shop_jobs) as server:
        base = server.url
        # Import: upload, dry run with the key, preview, confirm, completed.
        body, content_type = multipart(("products.csv", shop_csv(shop_rows(ROWS))))
        status, _, answer = call(
            f"{base}{UPLOADS_PREFIX}", method="POST", body=body, content_type=content_type
        )
        assert status == 200, answer
        key = json.loads(answer)["uploads"][0]["key"]
        context = {"table": "products_copy", "file_key": key}
        status, _, answer = call(
            f"{base}{JOBS}",
            method="POST",
            payload={"type": "csv-import", "context": context, "dry_run": True},
        )
        assert status == 201, answer
        job_id = json.loads(answer)["batch_job"]["id"]
        assert shop_jobs.wait(job_id, timeout=30).status == Status.PRE_PROCESSED
        _, _, answer = call(f"{base}{JOBS}/{job_id}")
        descriptors = json.loads(answer)["batch_job"]["result"]["stat_descriptors"]
        assert descriptors[0]["message"] == f"{ROWS} rows will be created in shop.products_copy"
        status, _, _ = call(f"{base}{JOBS}/{job_id}/confirm", method="POST")
        assert status == 200
        assert shop_jobs.wait(job_id, timeout=30).status == Status.COMPLETED
        path = shop_jobs.strategy("csv-import").databases["shop"].path
        assert table_rows(path, "products_copy") == table_rows(path, "products")
        # Export: create, completed, a download link, the file byte for byte.
        exporting = {"type": "csv-export", "context": {"table": "products"}}
        status, _, answer = call(f"{base}{JOBS}", method="POST", payload=exporting)
        export_id = json.loads(answer)["batch_job"]["id"]
        file_key = shop_jobs.wait(export_id, timeout=30).result["file_key"]
        status, _, answer = call(
            f"{base}{UPLOADS_PREFIX}/download-url", method="POST", payload={"file_key": file_key}
        )
        link = json.loads(answer)["download_url"]
        assert link.startswith(f"{base}{UPLOADS_PREFIX}/download/")
        # As a browser opens it: the link alone, no credentials.
        status, headers, data = call(link, user=None)
        assert status == 200
        with shop_jobs.files.open_read(file_key) as source:
            assert data == source.read()
        assert headers["Content-Disposition"] == f"attachment; filename={export_id}.csv"
        assert headers["Cache-Control"] == "private, no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert call(link)[2] == data  # and with its user's credentials
        # Another user is refused on the link and the keys.
        uploads = f"{base}{UPLOADS_PREFIX}"
        for url, kwargs in [
            (link, {}),
            (f"{uploads}/download-url", {"method": "POST", "payload": {"file_key": key}}),
            (uploads, {"method": "DELETE", "payload": {"file_key": file_key}}),
        ]:
            status, _, answer = call(url, user="usr_2", **kwargs)
            assert (status, json.loads(answer)) == (
                400,
                {"type": "not_allowed", "message": NOT_OWNER_MESSAGE},
            )
    # The link is a secret: the request log names the route, never the token.
    token = link.rsplit("/", 1)[1]
    logged = [r.getMessage() for r in caplog.records if r.name == "batchjobs.http"]
    assert f"GET {UPLOADS_PREFIX}/download/<token> 200" in logged
    assert not [line for line in logged if token in line]


@pytest.mark.slow
def test_the_server_takes_uploads_up_to_their_own_limit(shop_jobs: BatchJobs) -> None:
    with serving(shop_jobs, body_bytes=10_000, upload_bytes=100_000) as server:
        big = b"x" * 50_000  # over the body limit, under the upload limit
        body, content_type = multipart(("big.csv", big))
        status, _, answer = call(
            f"{server.url}{UPLOADS_PREFIX}", method="POST", body=body, content_type=content_type
        )
        assert status == 200, answer
        with shop_jobs.files.open_read(json.loads(answer)["uploads"][0]["key"]) as source:
            assert source.read() == big
        # Any other route keeps the body limit.
        context = {"words": ["x" * 20_000]}
        status, _, answer = call(
            f"{server.url}{JOBS}", method="POST", payload={"type": "csv-export", "context": context}
        )
        assert (status, json.loads(answer)["type"]) == (413, "invalid_data")
        assert json.loads(answer)["message"] == "the request body is larger than 10000 bytes"
        # An upload over its limit is answered 413 by the server, as JSON.
        body, content_type = multipart(("huge.csv", b"x" * 150_000))
        status, _, answer = call(
            f"{server.url}{UPLOADS_PREFIX}", method="POST", body=body, content_type=content_type
        )
        assert (status, json.loads(answer)) == (
            413,
            {"type": "invalid_data", "message": "the request body is larger than 100000 bytes"},
        )
        # So does the dashboard's import wizard, a form posting the file.
        _, _, page = call(f"{server.url}{dashboard.IMPORT_PATH}")
        token = re.search(rb'name="csrf_token" value="([^"]+)"', page)
        assert token is not None
        fields = {"csrf_token": token.group(1), "table": b"shop.products_copy"}
        head = "".join(
            f'--B\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value.decode()}\r\n'
            for name, value in fields.items()
        )
        csv_file = b"id,sku,qty\r\n" + b"".join(b"%d,S%d,1\r\n" % (i, i) for i in range(5000))
        assert 10_000 < len(csv_file) < 100_000
        body = (
            head.encode()
            + b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
            + b"Content-Type: text/csv\r\n\r\n"
            + csv_file
            + b"\r\n--B--\r\n"
        )
        status, _, answer = call(
            f"{server.url}{dashboard.IMPORT_PATH}",
            method="POST",
            body=body,
            content_type="multipart/form-data; boundary=B",
        )
        assert status == 200, answer  # the job's page, after the redirect
        (job,), _ = shop_jobs.list_and_count(type="csv-import")
        with shop_jobs.files.open_read(job.context["file_key"]) as source:
            assert source.read() == csv_file
    assert [key for key in list(shop_jobs.files.keys()) if "huge" in key] == []
