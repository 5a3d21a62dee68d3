"""The dashboard's pages through Flask's test client, on a real ``BatchJobs``.

The browser scenarios (JavaScript, live updates, accessibility) are in
``test_dashboard_browser.py``.
"""

from __future__ import annotations

import csv
import io
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Request
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from batchjobs import BatchJob, BatchJobs, BatchJobStrategy, JobRun, Status
from batchjobs.http import _views as views
from batchjobs.http import create_app, dashboard
from batchjobs.http._live import SignalFeed, stream_jobs

TOKENS = {"tok-1": "usr_1", "tok-2": "usr_2"}
SECRET = "test-secret"


class Noisy(BatchJobStrategy):
    """Pre-processing finds two bad records; the template is a context to fill in."""

    batch_type = "noisy"

    def pre_process(self, run: JobRun) -> None:
        run.set_count(3)
        run.add_error("price is not a number", code="invalid", line=3, column="price")
        run.add_error('sku, "quoted"', code="invalid", line=7, column="sku")
        run.result["stat_descriptors"] = [
            {"key": "rows", "name": "Rows to create", "message": "3 rows will be created"}
        ]

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        return min(size, 3 - start)

    def build_template(self) -> str:
        return '{"table": "products", "limit": 10}'


def app_with(jobs: BatchJobs, *, prefix: str | None = None, **options: Any) -> Flask:
    """A host app with the dashboard mounted at ``prefix``."""
    jobs.register(Noisy)
    app = Flask("host")
    app.secret_key = SECRET
    options.setdefault("tokens", TOKENS)
    app.register_blueprint(dashboard.create_blueprint(jobs, **options), url_prefix=prefix)
    return app


@pytest.fixture
def client(jobs: BatchJobs) -> FlaskClient:
    return app_with(jobs).test_client()


def csrf_of(response: TestResponse) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
    assert match, response.text
    return match.group(1)


def log_in(client: FlaskClient, token: str = "tok-1", prefix: str = "") -> TestResponse:
    form = client.get(f"{prefix}/login")
    return client.post(
        f"{prefix}/login", data={"token": token, "csrf_token": csrf_of(form), "next": f"{prefix}/"}
    )


def post_form(client: FlaskClient, page: str, action: str, **data: Any) -> TestResponse:
    """Submit a form of ``page`` to ``action`` with the page's CSRF token, as a browser would."""
    token = csrf_of(client.get(page))
    headers = {"Sec-Fetch-Site": "same-origin"}
    return client.post(action, data={"csrf_token": token, **data}, headers=headers)


def ids_on(response: TestResponse) -> list[str]:
    return re.findall(r'<tr data-job-id="(batch_\w+)"', response.text)


# -- signing in --------------------------------------------------------------------------------


def test_a_visitor_is_sent_to_the_login_form_and_a_token_opens_a_strict_session(
    client: FlaskClient,
) -> None:
    first = client.get("/jobs/batch_X?x=1")
    assert first.status_code == 303
    assert first.headers["Location"] == "/login?next=/jobs/batch_X?x%3D1"
    response = log_in(client)
    assert response.status_code == 303 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{dashboard.COOKIE_NAME}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/;" in cookie
    assert "tok-1" not in cookie
    page = client.get("/")
    assert page.status_code == 200 and "Signed in as <strong>usr_1</strong>" in page.text
    logout = post_form(client, "/", "/logout")
    assert logout.status_code == 303
    assert client.get("/").status_code == 303


def test_an_unknown_token_is_refused_and_sets_no_cookie(client: FlaskClient) -> None:
    response = log_in(client, token="nope")
    assert response.status_code == 200
    assert "That token is not known here." in response.text
    assert "Set-Cookie" not in response.headers
    assert client.get("/").status_code == 303


def test_login_never_redirects_off_the_dashboard(jobs: BatchJobs) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        client = app_with(jobs).test_client()
        form = client.get("/login")
        response = client.post(
            "/login", data={"token": "tok-1", "csrf_token": csrf_of(form), "next": target}
        )
        assert response.headers["Location"] == "/"


def test_a_session_ends_when_its_token_is_removed(jobs: BatchJobs) -> None:
    client = app_with(jobs).test_client()
    log_in(client)
    cookie = client.get_cookie(dashboard.COOKIE_NAME)
    assert cookie is not None
    other = app_with(jobs, tokens={"tok-2": "usr_2"}).test_client()
    other.set_cookie(dashboard.COOKIE_NAME, cookie.value)
    assert other.get("/").status_code == 303


def test_a_forged_cookie_is_ignored(client: FlaskClient) -> None:
    client.set_cookie(dashboard.COOKIE_NAME, '{"u": "usr_1"}')
    assert client.get("/").status_code == 303


def test_the_host_apps_authenticate_and_bearer_tokens_name_the_caller(jobs: BatchJobs) -> None:
    def authenticate(request: Request) -> str | None:
        return request.headers.get("X-User")

    client = app_with(jobs, authenticate=authenticate, tokens=None).test_client()
    jobs.create("words", {"words": ["a"]}, created_by="usr_9")
    page = client.get("/", headers={"X-User": "usr_9"})
    assert page.status_code == 200 and len(ids_on(page)) == 1
    refused = client.get("/")
    assert refused.status_code == 401
    assert "Sign in to the application" in refused.text
    assert client.get("/login").status_code == 401
    bearer = app_with(jobs).test_client().get("/", headers={"Authorization": "Bearer tok-2"})
    assert bearer.status_code == 200 and "usr_2" in bearer.text


def test_create_blueprint_refuses_bad_settings(jobs: BatchJobs) -> None:
    with pytest.raises(ValueError, match="needs authenticate or tokens"):
        dashboard.create_blueprint(jobs)
    with pytest.raises(ValueError, match="tokens map non-empty token strings"):
        dashboard.create_blueprint(jobs, tokens={"": "usr_1"})
    with pytest.raises(ValueError, match="max_streams must be a whole number"):
        dashboard.create_blueprint(jobs, tokens=TOKENS, max_streams=-1)
    app = Flask("keyless")
    with pytest.raises(ValueError, match="secret_key"):
        app.register_blueprint(dashboard.create_blueprint(jobs, tokens=TOKENS))
    keyed = dashboard.create_blueprint(jobs, tokens=TOKENS, secret_key="k")
    Flask("keyed").register_blueprint(keyed)


# -- forms are guarded -------------------------------------------------------------------------


def test_a_cross_site_post_is_refused_and_changes_nothing(
    client: FlaskClient, jobs: BatchJobs
) -> None:
    log_in(client)
    job = jobs.create("words", {"words": ["a"]}, dry_run=True, created_by="usr_1")
    jobs.run_until_idle()
    token = csrf_of(client.get(f"/jobs/{job.id}"))
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        response = client.post(
            f"/jobs/{job.id}/confirm", data={"csrf_token": token}, headers=headers
        )
        assert response.status_code == 403
        assert "Cross-site request refused." in response.text
    missing = client.post(f"/jobs/{job.id}/confirm", headers={"Sec-Fetch-Site": "same-origin"})
    assert missing.status_code == 403 and "This form has expired" in missing.text
    assert jobs.retrieve(job.id).status == Status.PRE_PROCESSED


def test_a_csrf_token_belongs_to_its_session(jobs: BatchJobs) -> None:
    first, second = app_with(jobs).test_client(), app_with(jobs).test_client()
    log_in(first)
    log_in(second, "tok-2")
    job = jobs.create("words", {"words": ["a"]}, dry_run=True, created_by="usr_2")
    jobs.run_until_idle()
    stolen = csrf_of(first.get("/"))
    response = second.post(f"/jobs/{job.id}/confirm", data={"csrf_token": stolen})
    assert response.status_code == 403
    assert jobs.retrieve(job.id).status == Status.PRE_PROCESSED


def test_pages_forbid_inline_script_and_framing(client: FlaskClient) -> None:
    log_in(client)
    response = client.get("/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script>" not in response.text and " on" + "click=" not in response.text
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_static_files_are_served_without_a_session(client: FlaskClient) -> None:
    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "text/css")):
        response = client.get(f"/_static/{name}")
        assert response.status_code == 200 and kind in response.mimetype
        response.close()


# -- the job list ------------------------------------------------------------------------------


def test_the_list_shows_the_callers_jobs_newest_first_with_counts(
    client: FlaskClient, jobs: BatchJobs
) -> None:
    made = [jobs.create("words", {"words": ["a", "b"]}, created_by="usr_1") for _ in range(3)]
    jobs.create("words", {"words": ["a"]}, created_by="usr_2")
    jobs.run_until_idle()
    failed = jobs.create("broken", created_by="usr_1")
    jobs.run_until_idle()
    log_in(client)
    page = client.get("/")
    assert ids_on(page) == [failed.id] + [job.id for job in reversed(made)]
    text = page.text
    assert re.search(r'aria-current="page">All <span class="count">4</span>', text)
    assert re.search(r">Completed <span class=\"count\">3</span>", text)
    assert re.search(r">Failed <span class=\"count\">1</span>", text)
    assert '<progress data-field="progress" aria-label="Progress of ' in text
    assert 'max="2" value="2">2 of 2 (100%)</progress>' in text
    assert 'class="status status-completed" data-field="status_label">Completed</span>' in text
    assert "Jobs 1–4 of 4, newest first" in text


def test_filters_live_in_the_url_and_combine(client: FlaskClient, jobs: BatchJobs) -> None:
    words = jobs.create("words", {"words": ["a"]}, created_by="usr_1")
    ledger = jobs.create("ledger", {"n": 5}, created_by="usr_1")
    jobs.run_until_idle()
    broken = jobs.create("broken", created_by="usr_1")
    jobs.run_until_idle()
    log_in(client)
    assert ids_on(client.get("/?type=ledger")) == [ledger.id]
    assert ids_on(client.get("/?status=failed")) == [broken.id]
    assert ids_on(client.get("/?status=completed&type=words")) == [words.id]
    by_id = client.get(f"/?q={words.id.lower()}")
    assert ids_on(by_id) == [words.id]
    assert ids_on(client.get(f"/?q={words.id[6:]}")) == [words.id]
    assert ids_on(client.get("/?q=batch_NOPE")) == []
    chips = client.get("/?type=ledger&status=completed").text
    assert 'href="/?status=failed&amp;type=ledger"' in chips
    assert re.search(r'aria-current="page">Completed <span class="count">1</span>', chips)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=done", "status &#39;done&#39; is not a status of a batch job"),
        ("page=0", "page must be a positive whole number, not &#39;0&#39;"),
        ("page=x", "page must be a positive whole number, not &#39;x&#39;"),
    ],
)
def test_bad_list_filters_say_what_is_wrong(client: FlaskClient, query: str, message: str) -> None:
    log_in(client)
    response = client.get(f"/?{query}")
    assert response.status_code == 400
    assert message in response.text


def test_the_list_pages_through_the_jobs(client: FlaskClient, jobs: BatchJobs) -> None:
    made = [jobs.create("uncounted", created_by="usr_1") for _ in range(dashboard.PAGE_SIZE + 2)]
    log_in(client)
    first = client.get("/")
    assert ids_on(first) == [job.id for job in reversed(made)][: dashboard.PAGE_SIZE]
    assert 'rel="next" href="/?page=2"' in first.text and "Page 1 of 2" in first.text
    second = client.get("/?page=2")
    assert ids_on(second) == [made[1].id, made[0].id]
    assert 'rel="prev" href="/?page=1"' in second.text
    assert "Jobs 26–27 of 27" in second.text


# -- a job's page ------------------------------------------------------------------------------


def test_a_jobs_page_shows_timeline_stats_errors_and_context(
    client: FlaskClient, jobs: BatchJobs
) -> None:
    job = jobs.create("noisy", {"table": "t", "note": "<b>"}, dry_run=True, created_by="usr_1")
    jobs.run_until_idle()
    log_in(client)
    text = client.get(f"/jobs/{job.id}").text
    record = jobs.retrieve(job.id)
    assert record.pre_processed_at is not None
    assert f'<time datetime="{record.pre_processed_at.isoformat()}">' in text
    assert "<td>Rows to create</td><td>3 rows will be created</td>" in text
    assert '<th scope="col">Line</th><th scope="col">Column</th>' in text
    assert "<td>3</td><td>price</td><td>invalid</td><td>price is not a number</td>" in text
    assert "&#34;note&#34;: &#34;&lt;b&gt;&#34;" in text  # formatted JSON, escaped
    assert "Download errors as CSV" in text
    assert 'data-action="confirm">' in text and 'data-action="retry" hidden>' in text


def test_the_errors_download_as_csv(client: FlaskClient, jobs: BatchJobs) -> None:
    job = jobs.create("noisy", dry_run=True, created_by="usr_1")
    jobs.run_until_idle()
    log_in(client)
    response = client.get(f"/jobs/{job.id}/errors.csv")
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="{job.id}-errors.csv"'
    )
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows == [
        ["line", "column", "code", "message"],
        ["3", "price", "invalid", "price is not a number"],
        ["7", "sku", "invalid", 'sku, "quoted"'],
    ]


def test_another_users_job_is_not_shown(client: FlaskClient, jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a"]}, created_by="usr_2")
    log_in(client)
    for path in (f"/jobs/{job.id}", f"/jobs/{job.id}/errors.csv"):
        response = client.get(path)
        assert response.status_code == 403
        assert "does not belong to the logged in user" in response.text
    missing = client.get("/jobs/batch_NOPE")
    assert missing.status_code == 404
    assert "Batch job with id batch_NOPE was not found" in missing.text


def test_confirm_cancel_and_retry_are_posts_that_come_back_to_the_job(
    client: FlaskClient, jobs: BatchJobs
) -> None:
    log_in(client)
    job = jobs.create("words", {"words": ["a"]}, dry_run=True, created_by="usr_1")
    jobs.run_until_idle()
    page = f"/jobs/{job.id}"
    assert client.get(f"{page}/confirm").status_code == 405
    confirmed = post_form(client, page, f"{page}/confirm")
    assert confirmed.status_code == 303 and confirmed.headers["Location"] == f"{page}?done=confirm"
    assert jobs.retrieve(job.id).status == Status.CONFIRMED
    shown = client.get(confirmed.headers["Location"]).text
    assert "Job confirmed: it will be processed." in shown and "data-focus-on-load" in shown
    jobs.run_until_idle()
    refused = post_form(client, page, f"{page}/cancel")
    assert refused.status_code == 200
    assert 'role="alert" tabindex="-1" data-focus-on-load>Cannot cancel completed batch job<' in (
        refused.text
    )
    broken = jobs.create("broken", created_by="usr_1")
    jobs.run_until_idle()
    retried = post_form(client, f"/jobs/{broken.id}", f"/jobs/{broken.id}/retry")
    assert retried.status_code == 303
    assert jobs.retrieve(broken.id).status == Status.CREATED
    unknown = post_form(client, page, f"{page}/explode")
    assert unknown.status_code == 404


def test_pause_and_resume_are_posts_and_a_refusal_shows_the_services_message(
    client: FlaskClient, jobs: BatchJobs
) -> None:
    log_in(client)
    job = jobs.create("words", {"words": ["a", "b"]}, dry_run=True, created_by="usr_1")
    page = f"/jobs/{job.id}"
    refused = post_form(client, page, f"{page}/pause")
    assert refused.status_code == 200
    assert 'role="alert" tabindex="-1" data-focus-on-load>Cannot pause a batch job with status' in (
        refused.text
    )
    assert jobs.retrieve(job.id).status == Status.CREATED
    jobs.run_next()
    jobs.confirm(job.id)
    shown = client.get(page).text
    assert re.search(r'data-action="pause">\s*<input[^>]*>\s*<button type="submit"', shown)
    paused = post_form(client, page, f"{page}/pause")
    assert paused.status_code == 303 and paused.headers["Location"] == f"{page}?done=pause"
    shown = client.get(paused.headers["Location"]).text
    assert "Job paused: it stops at its next checkpoint." in shown
    assert '<span class="status status-paused" data-field="status_label">Paused</span>' in shown
    assert "<span>Paused</span>" in shown  # the timeline
    assert re.search(r'data-action="resume">\s*<input', shown)
    assert re.search(r'data-action="pause" hidden>', shown)
    assert re.search(r'data-action="cancel">\s*<input', shown)
    assert 'status-paused"' in client.get("/").text and ">Paused <span" in client.get("/").text
    resumed = post_form(client, page, f"{page}/resume")
    assert resumed.status_code == 303 and resumed.headers["Location"] == f"{page}?done=resume"
    assert jobs.retrieve(job.id).status == Status.CONFIRMED
    assert (
        "Job resumed: it continues from its last checkpoint."
        in client.get(resumed.headers["Location"]).text
    )
    again = post_form(client, page, f"{page}/resume")
    assert "data-focus-on-load>Cannot resume a batch job with status" in again.text
    jobs.run_until_idle()
    assert jobs.retrieve(job.id).status == Status.COMPLETED


def test_a_finished_export_offers_its_file_to_its_owner_only(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = csv_jobs(make_shop(rows=30))
    client = app_with(jobs).test_client()
    log_in(client)
    job = jobs.create("csv-export", {"table": "products"}, created_by="usr_1")
    assert 'data-section="file" hidden>' in client.get(f"/jobs/{job.id}").text
    early = client.get(f"/jobs/{job.id}/file")
    assert early.status_code == 404
    assert f"Batch job {job.id} has no file to download (yet)" in early.text
    jobs.run_until_idle()
    with jobs.files.open_read(f"exports/{job.id}.csv") as source:
        data = source.read()
    assert len(data) > 1000
    shown = client.get(f"/jobs/{job.id}").text
    assert (
        f'<a href="/jobs/{job.id}/file" download="{job.id}.csv" data-download>'
        f"Download {job.id}.csv</a>"
    ) in shown
    assert f"({len(data):,} bytes ({len(data) / 1000:.1f} KB))" in shown
    response = client.get(f"/jobs/{job.id}/file")
    assert response.status_code == 200 and response.data == data
    assert response.headers["Content-Disposition"] == f"attachment; filename={job.id}.csv"
    assert response.headers["Content-Length"] == str(len(data))
    response.close()
    other = app_with(jobs).test_client()
    log_in(other, token="tok-2")
    refused = other.get(f"/jobs/{job.id}/file")
    assert refused.status_code == 403 and "does not belong" in refused.text
    assert "Download" not in other.get(f"/jobs/{job.id}").text
    jobs.files.delete(f"exports/{job.id}.csv")
    gone = client.get(f"/jobs/{job.id}/file")
    assert gone.status_code == 404 and f"The file of batch job {job.id} is gone" in gone.text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (999, "999 bytes"),
        (1234, "1,234 bytes (1.2 KB)"),
        (5_600_000, "5,600,000 bytes (5.6 MB)"),
        (3 * 10**9, "3,000,000,000 bytes (3.0 GB)"),
    ],
)
def test_a_file_size_is_shown_exact_and_rounded(size: int, text: str) -> None:
    assert views.size_text(size) == text


# -- the CSV import wizard ---------------------------------------------------------------------


def upload_csv(client: FlaskClient, data: bytes, name: str = "prices.csv", **form: Any) -> Any:
    """Post the import wizard's form with a file, as a browser would."""
    token = csrf_of(client.get("/import"))
    return client.post(
        "/import",
        data={"csrf_token": token, "file": (io.BytesIO(data), name), **form},
        headers={"Sec-Fetch-Site": "same-origin"},
        content_type="multipart/form-data",
    )


@pytest.fixture
def shop_client(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> tuple[FlaskClient, BatchJobs]:
    jobs = csv_jobs(make_shop(rows=30))
    client = app_with(jobs).test_client()
    log_in(client)
    return client, jobs


def test_an_upload_becomes_a_dry_run_import_whose_preview_is_confirmed(
    shop_client: tuple[FlaskClient, BatchJobs],
) -> None:
    client, jobs = shop_client
    form = client.get("/import").text
    assert 'enctype="multipart/form-data"' in form and 'type="file" id="file" name="file"' in form
    assert '<option value="shop.products">products (shop)</option>' in form
    assert 'href="/import/template?table=shop.products" download' in form
    assert 'href="/import">Import CSV</a>' in form
    data = b"id,sku,name,price,qty\r\n1,SKU-00001,renamed,9.5,1\r\n100,NEW-1,new,2,3\r\n"
    response = upload_csv(client, data, table="shop.products")
    assert response.status_code == 303
    (job,), _ = jobs.list_and_count()
    assert response.headers["Location"] == f"/jobs/{job.id}?done=uploaded"
    assert (job.type, job.dry_run, job.created_by) == ("csv-import", True, "usr_1")
    key = job.context["file_key"]
    assert key.startswith("uploads/prices-") and key.endswith(".csv")
    assert job.context["table"] == "products" and job.context["on_error"] == "fail"
    assert jobs.files.owner(key) == "usr_1"
    with jobs.files.open_read(key) as source:
        assert source.read() == data
    shown = client.get(response.headers["Location"]).text
    assert "File uploaded. A dry run is checking it" in shown and "data-focus-on-load" in shown
    jobs.run_until_idle()
    preview = client.get(f"/jobs/{job.id}").text
    assert "<td>Rows to create</td><td>1 rows will be created in shop.products</td>" in preview
    assert "<td>Rows to update</td><td>1 rows will be updated in shop.products</td>" in preview
    assert "This is a preview: nothing has been written yet." in preview
    confirmed = post_form(client, f"/jobs/{job.id}", f"/jobs/{job.id}/confirm")
    assert confirmed.status_code == 303
    jobs.run_until_idle()
    assert jobs.retrieve(job.id).status == Status.COMPLETED
    assert jobs.retrieve(job.id).result["imported"] == 2


def test_invalid_rows_are_shown_with_line_and_column_and_skipped_when_asked(
    shop_client: tuple[FlaskClient, BatchJobs],
) -> None:
    client, jobs = shop_client
    data = b"id,sku,name,price,qty\r\n200,A,a,1,1\r\n201,B,b,cheap,1\r\n202,C,c,3,many\r\n"
    upload_csv(client, data, table="shop.products_copy", skip_invalid="on")
    (job,), _ = jobs.list_and_count()
    assert job.context["on_error"] == "skip"
    jobs.run_until_idle()
    assert jobs.retrieve(job.id).status == Status.PRE_PROCESSED
    page = client.get(f"/jobs/{job.id}").text
    assert "<td>Invalid rows</td><td>2 invalid rows will be skipped</td>" in page
    assert re.search(r"<tr><td>3</td><td>price</td><td>invalid_row</td><td>line 3", page)
    assert re.search(r"<tr><td>4</td><td>qty</td><td>invalid_row</td><td>line 4", page)
    rows = list(csv.reader(io.StringIO(client.get(f"/jobs/{job.id}/errors.csv").text)))
    assert [r[:3] for r in rows] == [
        ["line", "column", "code"],
        ["3", "price", "invalid_row"],
        ["4", "qty", "invalid_row"],
    ]


def test_the_wizard_refuses_a_bad_upload_and_writes_nothing(
    shop_client: tuple[FlaskClient, BatchJobs],
) -> None:
    client, jobs = shop_client
    cases = [
        ({"table": "shop.products"}, b"", "", "Choose the CSV file to upload."),
        ({"table": ""}, b"id\r\n1\r\n", "a.csv", "Choose the table to import into."),
        (
            {"table": "shop.secrets"},
            b"id\r\n1\r\n",
            "a.csv",
            "&#39;shop.secrets&#39; is not a table this application lets you import into.",
        ),
    ]
    for form, data, name, message in cases:
        response = upload_csv(client, data, name, **form)
        assert response.status_code == 200
        assert f'role="alert" id="form-error" tabindex="-1" data-focus-on-load>{message}<' in (
            response.text
        )
    assert jobs.list_and_count(limit=0)[1] == 0
    assert list(jobs.files.keys()) == []


def test_an_upload_over_the_limit_is_refused_with_413(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = csv_jobs(make_shop(rows=3))
    client = app_with(jobs, max_upload_bytes=2000).test_client()
    log_in(client)
    response = upload_csv(client, b"id\r\n" + b"1\r\n" * 1000, table="shop.products")
    assert response.status_code == 413
    assert "The file is larger than 2,000 bytes (2.0 KB), the most an upload may be." in (
        response.text
    )
    assert jobs.list_and_count(limit=0)[1] == 0 and list(jobs.files.keys()) == []
    with pytest.raises(ValueError, match="max_upload_bytes must be a positive whole number"):
        dashboard.create_blueprint(jobs, tokens=TOKENS, max_upload_bytes=0)


def test_the_template_is_the_tables_header_row(
    shop_client: tuple[FlaskClient, BatchJobs],
) -> None:
    client, _ = shop_client
    response = client.get("/import/template?table=shop.products")
    assert response.status_code == 200
    assert response.text == "id,sku,name,price,qty,photo\r\n"
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="shop.products-template.csv"'
    )
    assert client.get("/import/template?table=shop.nope").status_code == 400


def test_where_csv_import_allows_no_table_the_wizard_says_so(client: FlaskClient) -> None:
    log_in(client)  # the entry point's csv-import, with no allow-list in the environment
    page = client.get("/import")
    assert page.status_code == 200 and "The csv-import here allows no table" in page.text
    assert 'type="file"' not in page.text
    refused = client.get("/import/template?table=a.b")
    assert refused.status_code == 400
    assert "&#39;a.b&#39; is not a table this application lets you import into." in refused.text


def test_a_read_only_user_cannot_upload(
    csv_jobs: Callable[..., BatchJobs], make_shop: Callable[..., Path]
) -> None:
    jobs = csv_jobs(make_shop(rows=3))
    client = app_with(jobs, read_only=True).test_client()
    log_in(client)
    response = upload_csv(client, b"id\r\n1\r\n", table="shop.products")
    assert response.status_code == 403 and "read-only" in response.text
    assert list(jobs.files.keys()) == []


def test_a_read_only_user_may_look_but_not_act(jobs: BatchJobs) -> None:
    client = app_with(jobs, read_only=lambda user: user == "usr_1").test_client()
    log_in(client)
    job = jobs.create("words", {"words": ["a"]}, dry_run=True, created_by="usr_1")
    jobs.run_until_idle()
    page = client.get(f"/jobs/{job.id}")
    assert "(read-only)" in page.text and 'data-action="confirm"' not in page.text
    assert 'href="/new"' not in client.get("/").text
    token = csrf_of(page)
    refused = client.post(f"/jobs/{job.id}/confirm", data={"csrf_token": token})
    assert refused.status_code == 403 and "read-only" in refused.text
    created = client.post("/new", data={"csrf_token": token, "type": "words", "context": "{}"})
    assert created.status_code == 403
    assert jobs.retrieve(job.id).status == Status.PRE_PROCESSED
    assert jobs.list_and_count(limit=0)[1] == 1


# -- creating a job ----------------------------------------------------------------------------


def test_a_job_of_any_registered_type_is_created_from_its_form(
    client: FlaskClient, jobs: BatchJobs
) -> None:
    log_in(client)
    choose = client.get("/new").text
    for batch_type in jobs.registry.types:
        assert f'<option value="{batch_type}">{batch_type}</option>' in choose
    form = client.get("/new?type=noisy").text
    assert "&#34;table&#34;: &#34;products&#34;" in form  # prefilled from the template
    assert "{}</textarea>" in client.get("/new?type=words").text
    response = post_form(
        client, "/new?type=words", "/new", type="words", context='{"words": ["x"]}', dry_run="on"
    )
    assert response.status_code == 303
    (job,), _ = jobs.list_and_count()
    assert response.headers["Location"] == f"/jobs/{job.id}?done=created"
    assert (job.type, job.context, job.dry_run, job.created_by) == (
        "words",
        {"words": ["x"]},
        True,
        "usr_1",
    )


@pytest.mark.parametrize(
    ("batch_type", "context", "message"),
    [
        ("words", '{"words": [', "context is not valid JSON: Expecting value"),
        ("words", "[1]", "context must be a JSON object ({...})"),
        ("words", '{"words": 3}', "context.words must be a list of strings"),
        ("nope", "{}", "nope"),
    ],
)
def test_a_bad_context_keeps_the_text_and_says_why(
    client: FlaskClient, jobs: BatchJobs, batch_type: str, context: str, message: str
) -> None:
    log_in(client)
    response = post_form(client, "/new?type=words", "/new", type=batch_type, context=context)
    assert response.status_code == 200
    assert message in response.text.replace("&#39;", "'")
    assert 'aria-invalid="true"' in response.text or batch_type == "nope"
    assert jobs.list_and_count(limit=0)[1] == 0


# -- mounted in a host app ---------------------------------------------------------------------


def test_mounted_under_a_prefix_every_link_and_form_stays_under_it(jobs: BatchJobs) -> None:
    prefix = "/admin/jobs"
    app = app_with(jobs, prefix=prefix)
    client = app.test_client()
    assert client.get("/").status_code == 404  # the host's root is the host's
    assert client.get(prefix).status_code == 308
    redirected = client.get(f"{prefix}/")
    assert redirected.headers["Location"] == f"{prefix}/login?next={prefix}/"
    cookie = log_in(client, prefix=prefix).headers["Set-Cookie"]
    assert f"Path={prefix};" in cookie
    job = jobs.create("noisy", dry_run=True, created_by="usr_1")
    jobs.run_until_idle()
    pages = [f"{prefix}/", f"{prefix}/jobs/{job.id}", f"{prefix}/new?type=noisy"]
    for page in pages:
        text = client.get(page).text
        targets = re.findall(r'\s(?:href|src|action)="([^"#]+)"', text)
        outside = [t for t in targets if not t.startswith((prefix, "data:"))]
        assert targets and not outside, outside
        for target in targets:
            if not target.startswith("data:") and "/logout" not in target:
                response = client.get(target.replace("&amp;", "&"))
                assert response.status_code in (200, 405), target
                response.close()


# -- live updates ------------------------------------------------------------------------------


def read_events(chunks: Any, count: int) -> list[tuple[str, Any]]:
    """The next ``count`` events of an SSE body (comments and ``retry`` skipped)."""
    import json

    found: list[tuple[str, Any]] = []
    while len(found) < count:
        chunk = next(chunks)
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        match = re.match(r"event: (\w+)\ndata: (.*)\n\n", text)
        if match:
            found.append((match.group(1), json.loads(match.group(2))))
    return found


def test_the_live_stream_sends_each_change_and_ends_at_a_resting_status(
    client: FlaskClient, jobs: BatchJobs
) -> None:
    log_in(client)
    job = jobs.create("ledger", {"n": 30}, created_by="usr_1")
    response = client.get(f"/live?ids={job.id}", buffered=False)
    assert response.mimetype == "text/event-stream"
    chunks = iter(response.response)
    ((kind, first),) = read_events(chunks, 1)
    assert (kind, first["status"]) == ("job", "created")
    jobs.run_until_idle()
    events = []
    while not events or events[-1][0] != "end":
        events += read_events(chunks, 1)
    views_sent = [data for kind, data in events if kind == "job"]
    assert views_sent[-1]["status"] == "completed"
    assert views_sent[-1]["progress_text"] == "30 of 30 (100%)"
    response.close()


def test_the_list_stream_announces_new_jobs_of_the_caller_only(
    client: FlaskClient, jobs: BatchJobs
) -> None:
    log_in(client)
    response = client.get("/live?new=1", buffered=False)
    chunks = iter(response.response)
    assert next(chunks).startswith(b"retry:")  # the watch is open from here on
    jobs.create("words", {"words": ["a"]}, created_by="usr_2")
    mine = jobs.create("words", {"words": ["a"]}, created_by="usr_1")
    assert read_events(chunks, 1) == [("new", {"id": mine.id})]
    response.close()


def test_streams_past_the_cap_are_refused_so_the_page_polls(jobs: BatchJobs) -> None:
    client = app_with(jobs, max_streams=0).test_client()
    log_in(client)
    job = jobs.create("words", {"words": ["a"]}, created_by="usr_1")
    refused = client.get(f"/live?ids={job.id}")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
    polled = client.get(f"/live.json?ids={job.id},batch_NOPE")
    assert [view["id"] for view in polled.get_json()["jobs"]] == [job.id]


def test_another_users_job_is_not_streamed(client: FlaskClient, jobs: BatchJobs) -> None:
    log_in(client)
    theirs = jobs.create("words", {"words": ["a"]}, created_by="usr_2")
    assert client.get(f"/live.json?ids={theirs.id}").get_json() == {"jobs": []}
    response = client.get(f"/live?ids={theirs.id}", buffered=False)
    assert read_events(iter(response.response), 1) == [("end", {})]


def test_closing_the_feed_ends_open_streams(jobs: BatchJobs) -> None:
    feed = SignalFeed(jobs)
    job = jobs.create("words", {"words": ["a"]}, created_by="usr_1")
    events = stream_jobs(
        feed,
        ids=[job.id],
        visible=lambda j: True,
        load=lambda ids: [jobs.retrieve(i) for i in ids],
        view=lambda j: {"id": j.id},
        poll_seconds=30,
    )
    assert next(events).startswith("retry:")
    assert next(events).startswith("event: job")
    closer = threading.Timer(0.05, feed.close)
    closer.start()
    assert list(events) == []  # returns as soon as the feed closes, not after 30 s
    assert feed.watch().changes(timeout=0) is None


def test_a_stream_rereads_its_jobs_when_no_event_comes(jobs: BatchJobs, make_jobs: Any) -> None:
    other = make_jobs()  # another process's BatchJobs on the same file: no shared signals
    job = jobs.create("words", {"words": ["a"]}, created_by="usr_1")
    events = stream_jobs(
        SignalFeed(jobs),
        ids=[job.id],
        visible=lambda j: True,
        load=lambda ids: [jobs.retrieve(i) for i in ids],
        view=lambda j: {"status": j.status.value},
        poll_seconds=0.01,
    )
    assert next(events).startswith("retry:")
    assert next(events) == 'event: job\ndata: {"status":"created"}\n\n'
    other.run_until_idle()
    rest = list(events)
    assert 'event: job\ndata: {"status":"completed"}\n\n' in rest
    assert rest[-1] == "event: end\ndata: {}\n\n"


# -- how a job is shown ------------------------------------------------------------------------

T0 = datetime(2024, 11, 28, 9, 0, tzinfo=timezone.utc)


def record(**fields: Any) -> BatchJob:
    fields.setdefault("status", Status.PROCESSING)
    return BatchJob(id="batch_1", type="t", created_at=T0, **fields)


def test_progress_rate_eta_and_stalled() -> None:
    job = record(
        result={"count": 1000, "advancement_count": 250},
        processing_at=T0,
        updated_at=T0 + timedelta(seconds=50),
    )
    view = views.job_view(job, T0 + timedelta(seconds=60), lease_seconds=30)
    assert view["progress_text"] == "250 of 1,000 (25%)" and view["percent"] == 25
    assert view["rate_text"] == "5.0 records/s" and view["eta_text"] == "2 min"
    assert view["stalled"] is False
    assert views.job_view(job, T0 + timedelta(seconds=81), 30)["stalled"] is True
    assert (
        views.job_view(job.replace(status=Status.COMPLETED), T0 + timedelta(days=1), 30)["stalled"]
        is False
    )
    unknown = views.job_view(record(result={"advancement_count": 1}), T0, 30)
    assert (unknown["progress_text"], unknown["percent"], unknown["rate_text"]) == (
        "1 record",
        None,
        "-",
    )
    assert views.progress_of(record(result={"count": 0})).text == "0 of 0 (100%)"
    bars = [
        views.job_view(record(status=status, result=result), T0, 30)
        for status, result in (
            (Status.PROCESSING, {"count": 0}),
            (Status.PROCESSING, {}),
            (Status.COMPLETED, {"advancement_count": 4}),
            (Status.CANCELED, {}),
        )
    ]
    assert [(v["bar_max"], v["bar_value"]) for v in bars] == [(1, 1), (1, None), (1, 1), (1, 0)]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "just now"),
        (45, "45 s ago"),
        (180, "3 min ago"),
        (7500, "2 h 5 min ago"),
        (7200, "2 h ago"),
        (3 * 86400, "3 d ago"),
    ],
)
def test_ages_are_rounded_for_people(seconds: float, text: str) -> None:
    assert views.age_text(T0, T0 + timedelta(seconds=seconds)) == text


def test_the_timeline_follows_the_lifecycle() -> None:
    job = record(processing_at=T0 + timedelta(seconds=2), confirmed_at=T0 + timedelta(seconds=1))
    steps = [step["label"] for step in views.job_view(job, T0, 30)["timeline"]]
    assert steps == ["Created", "Confirmed", "Processing started"]


def test_serve_mounts_the_dashboard_at_the_root(jobs: BatchJobs) -> None:
    app = create_app(jobs, tokens=TOKENS)
    app.secret_key = SECRET
    app.register_blueprint(dashboard.create_blueprint(jobs, tokens=TOKENS))
    client = app.test_client()
    assert client.get("/").headers["Location"] == "/login?next=/"
    api = client.get("/admin/batch-jobs", headers={"Authorization": "Bearer tok-1"})
    assert api.get_json()["count"] == 0
