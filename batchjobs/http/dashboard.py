"""The dashboard: server-rendered pages over a ``BatchJobs``, as a Flask blueprint.

>>> from batchjobs.http import dashboard
>>> app.register_blueprint(dashboard.create_blueprint(jobs, tokens={"s3cret": "usr_1"}),
...                        url_prefix="/admin/jobs")

Pages: the job list (status chips with counts, a type filter, search by id,
paging, newest first), a job's page (timeline, progress with rate and ETA,
stat descriptors, errors with a CSV download, the file a finished job made
(an export) to download, context, confirm/cancel/retry/pause/resume), a form
creating a job of any registered type, and the CSV import wizard (a file
uploaded, previewed by a dry run, confirmed; ``_imports``). Everything works
with JavaScript off (plain forms and links); ``static/dashboard.js`` adds live
updates (Server-Sent Events from ``live``, polling when those fail), a guard
against double submits, focus management and dropping a file on the wizard.

A caller is who the application's ``authenticate(request)`` says, else who a
token typed into the login form names (kept in a signed, ``HttpOnly``,
``SameSite=Strict`` cookie scoped to the dashboard), else who an
``Authorization: Bearer`` header names. As with the API, a caller sees and
acts on its own jobs only. Every form carries a CSRF token, and a POST whose
``Sec-Fetch-Site`` (or ``Origin``) says it comes from another site is refused
with 403. Responses carry a Content-Security-Policy allowing no inline script.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    send_file,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseReturnValue
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import RequestEntityTooLarge

from ..app import BatchJobs
from ..errors import BatchJobError, InvalidDataError, NotAllowedError, NotFoundError
from ..limits import MAX_UPLOAD_BYTES
from ..models import BatchJob, Status, utcnow
from . import _imports, _live, _views
from .api import NOT_OWNER_MESSAGE, Authenticate, _bearer_user

__all__ = [
    "COOKIE_NAME",
    "DEFAULT_MAX_STREAMS",
    "IMPORT_PATH",
    "PAGE_SIZE",
    "SESSION_SECONDS",
    "JobFeed",
    "SignalFeed",
    "create_blueprint",
]

JobFeed = _live.JobFeed
SignalFeed = _live.SignalFeed

#: Jobs per page of the list.
PAGE_SIZE = 25
#: The login cookie's name.
COOKIE_NAME = "batchjobs_dashboard"
#: Seconds a login (and a form's CSRF token) lasts.
SESSION_SECONDS = 12 * 3600
#: Live-update streams open at once; past that a page polls instead.
DEFAULT_MAX_STREAMS = 4
#: Jobs a page may ask live updates for.
MAX_WATCHED = 100
#: The import wizard's page (its form posts a file here), under the dashboard's prefix.
IMPORT_PATH = "/import"
_ACTIONS = ("confirm", "cancel", "retry", "pause", "resume")
_READ_ONLY = "This dashboard is read-only for you: you may look but not act."
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
_DONE_MESSAGES = {
    "created": "Job created.",
    "confirm": "Job confirmed: it will be processed.",
    "cancel": "Job canceled.",
    "retry": "Job sent back to be retried.",
    "uploaded": (
        "File uploaded. A dry run is checking it: its preview comes here, and nothing is "
        "imported until you confirm."
    ),
    "pause": "Job paused: it stops at its next checkpoint.",
    "resume": "Job resumed: it continues from its last checkpoint.",
}
#: Error columns shown first, in this order; any other keys follow.
_ERROR_COLUMNS = ("line", "record", "column", "code", "message")


class _Refused(Exception):
    """A request the dashboard answers with an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class _Dashboard:
    """The views of one blueprint, and what they share."""

    def __init__(
        self,
        jobs: BatchJobs,
        *,
        authenticate: Authenticate | None,
        tokens: Mapping[str, str],
        read_only: bool | Callable[[str], bool],
        secret_key: str | bytes | None,
        feed: JobFeed,
        max_streams: int,
        max_upload_bytes: int,
    ) -> None:
        self.jobs = jobs
        self.authenticate = authenticate
        self.tokens = dict(tokens)
        self.users_by_fingerprint = {_fingerprint(t): u for t, u in self.tokens.items()}
        self.read_only = read_only
        self.secret_key = secret_key
        self.feed = feed
        self.streams = threading.BoundedSemaphore(max_streams)
        self.max_upload_bytes = max_upload_bytes

    # -- who calls ---------------------------------------------------------------------------

    def key(self) -> str | bytes:
        key = self.secret_key or current_app.secret_key
        if not key:
            raise RuntimeError(
                "the dashboard signs its cookie and forms: give create_blueprint(secret_key=...) "
                "or set the Flask app's secret_key"
            )
        return key

    def serializer(self, salt: str) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.key(), salt=f"batchjobs.dashboard.{salt}")

    def cookie_user(self) -> str | None:
        value = request.cookies.get(COOKIE_NAME)
        if not value:
            return None
        try:
            data = self.serializer("session").loads(value, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        # A token removed from the configuration ends the sessions it opened.
        user = self.users_by_fingerprint.get(data.get("k", "")) if isinstance(data, dict) else None
        return user if user is not None and user == data.get("u") else None

    def identify(self) -> ResponseReturnValue | None:
        """Set ``g.dashboard_user`` (and how it was found), or answer the request."""
        user = self.authenticate(request) if self.authenticate is not None else None
        if user is not None and not isinstance(user, str):
            raise TypeError(f"authenticate() returned {user!r}, not a user id (str) or None")
        how = "application"
        if not user:
            user, how = self.cookie_user(), "cookie"
        if not user and self.tokens and request.headers.get("Authorization"):
            user, how = _bearer_user(self.tokens, request.headers["Authorization"]), "bearer"
        g.dashboard_user, g.dashboard_login = user or None, how
        endpoint = request.endpoint or ""
        if user or endpoint.endswith((".login", ".static")):
            return None
        if not self.tokens:
            raise _Refused(401, "Sign in to the application to see its batch jobs.")
        if request.method in _SAFE_METHODS and not endpoint.endswith(".live"):
            return redirect(url_for(".login", next=request.full_path.rstrip("?")), 303)
        raise _Refused(401, "Your session has ended: sign in again.")

    def may_act(self) -> bool:
        user = g.dashboard_user
        if user is None:
            return False
        return not (self.read_only(user) if callable(self.read_only) else self.read_only)

    def csrf_identity(self) -> str:
        user = g.get("dashboard_user")
        if user is None:
            return "anonymous"
        if g.dashboard_login == "cookie":
            return "cookie:" + _fingerprint(request.cookies.get(COOKIE_NAME, ""))
        return "user:" + user

    def csrf_token(self) -> str:
        return str(self.serializer("csrf").dumps(self.csrf_identity()))

    def check_site(self) -> None:
        """Refuse a POST that the browser says comes from another site."""
        if request.method in _SAFE_METHODS:
            return
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        if site is not None and site not in ("same-origin", "none"):
            raise _Refused(403, "Cross-site request refused.")
        if site is None and origin and urlsplit(origin).netloc != request.host:
            raise _Refused(403, "Cross-site request refused.")

    def check_token(self) -> None:
        """Refuse a POST without this caller's CSRF token."""
        if request.method in _SAFE_METHODS:
            return
        token = request.form.get("csrf_token", "")
        try:
            identity = self.serializer("csrf").loads(token, max_age=SESSION_SECONDS)
        except BadSignature:
            identity = None
        if not (isinstance(identity, str) and hmac.compare_digest(identity, self.csrf_identity())):
            raise _Refused(403, "This form has expired or did not come from this page: reload it.")

    # -- reading -----------------------------------------------------------------------------

    def own(self, id: str) -> BatchJob:
        job = self.jobs.retrieve(id)
        if job.created_by != g.dashboard_user:
            raise NotAllowedError(NOT_OWNER_MESSAGE)
        return job

    def view(self, job: BatchJob) -> dict[str, Any]:
        return _views.job_view(job, utcnow(), self.jobs.lease_seconds)

    def render(self, template: str, code: int = 200, /, **values: Any) -> tuple[str, int]:
        return render_template(f"batchjobs/{template}", **values), code

    # -- the pages ---------------------------------------------------------------------------

    def index(self) -> tuple[str, int]:
        args = request.args
        user = g.dashboard_user
        status = args.get("status", "")
        if status and status not in {s.value for s in Status}:
            raise InvalidDataError(f"status {status!r} is not a status of a batch job")
        batch_type = args.get("type", "")
        query = args.get("q", "").strip()
        page_text = args.get("page", "1")
        if not (page_text.isascii() and page_text.isdigit() and 0 < int(page_text) < 10**6):
            raise InvalidDataError(f"page must be a positive whole number, not {page_text!r}")
        page = int(page_text)
        base: dict[str, Any] = {"created_by": user}
        if batch_type:
            base["type"] = batch_type
        counts = {
            s.value: self.jobs.list_and_count(limit=0, status=s.value, **base)[1] for s in Status
        }
        filters = dict(base)
        if status:
            filters["status"] = status
        if query:
            bare = query[6:] if query.lower().startswith("batch_") else query
            filters["id"] = f"batch_{bare.upper()}"
        found, total = self.jobs.list_and_count(
            limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, order="-created_at", **filters
        )
        now = utcnow()
        pages = max(1, -(-total // PAGE_SIZE))
        return self.render(
            "list.html",
            rows=[(job, self.view(job)) for job in found],
            live_ids=",".join(job.id for job in found),
            page_size=PAGE_SIZE,
            now=now,
            counts=counts,
            all_count=sum(counts.values()),
            total=total,
            page=page,
            pages=pages,
            status=status,
            batch_type=batch_type,
            query=query,
            types=sorted(set(self.jobs.registry.types) | ({batch_type} if batch_type else set())),
            statuses=list(Status),
            labels=_views.STATUS_LABELS,
            filters={
                k: v for k, v in (("status", status), ("type", batch_type), ("q", query)) if v
            },
        )

    def job(self, id: str) -> tuple[str, int]:
        job = self.own(id)
        done = request.args.get("done", "")
        return self.job_page(job, message=_DONE_MESSAGES.get(done))

    def job_page(
        self,
        job: BatchJob,
        *,
        message: str | None = None,
        error: str | None = None,
        code: int = 200,
    ) -> tuple[str, int]:
        errors = job.result.get("errors")
        errors = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        stats = job.result.get("stat_descriptors")
        stats = [s for s in stats if isinstance(s, dict)] if isinstance(stats, list) else []
        return self.render(
            "job.html",
            code,
            job=job,
            file=self.job_file(job),
            v=self.view(job),
            errors=errors,
            error_columns=_error_columns(errors),
            stats=stats,
            context_json=json.dumps(job.context, indent=2, ensure_ascii=False, sort_keys=True),
            message=message,
            error=error,
        )

    def job_file(self, job: BatchJob) -> dict[str, Any] | None:
        """The file a completed job made (``result.file_key``), its name and size, if any."""
        key = job.result.get("file_key")
        if job.status != Status.COMPLETED or not isinstance(key, str) or not key:
            return None
        size = job.result.get("file_size")
        if not isinstance(size, int) or isinstance(size, bool):
            try:
                size = self.jobs.files.for_user(job.created_by).size(key)
            except (FileNotFoundError, BatchJobError):
                return None
        return {"key": key, "name": key.rsplit("/", 1)[-1], "size": size}

    def download(self, id: str) -> Response:
        """The file a completed job made, as an attachment: for the job's owner only."""
        job = self.own(id)
        found = self.job_file(job)
        if found is None:
            raise NotFoundError(f"Batch job {job.id} has no file to download (yet)")
        try:
            # As the caller: the file must be theirs too, not only the job.
            source: IO[bytes] = self.jobs.files.for_user(g.dashboard_user).open_read(found["key"])
        except FileNotFoundError:
            raise NotFoundError(f"The file of batch job {job.id} is gone") from None
        try:
            size = os.fstat(source.fileno()).st_size
            response = send_file(
                source, as_attachment=True, download_name=found["name"], conditional=False
            )
        except BaseException:
            source.close()
            raise
        response.content_length = size
        response.headers["Cache-Control"] = "private, no-store"
        return response

    def act(self, id: str, action: str) -> Any:
        if action not in _ACTIONS:
            raise NotFoundError(f"The dashboard has no action {action!r}")
        job = self.own(id)
        if not self.may_act():
            raise _Refused(403, _READ_ONLY)
        try:
            getattr(self.jobs, action)(job.id)
        except NotAllowedError as refused:
            # The page again with the refusal, as 200: a browser logs an error status of a
            # page as a console error, and this is an answer, not a failure of the page.
            return self.job_page(self.own(id), error=refused.message)
        return redirect(url_for(".job", id=job.id, done=action), 303)

    def errors_csv(self, id: str) -> Response:
        job = self.own(id)
        errors = job.result.get("errors")
        errors = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        columns = _error_columns(errors)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for error in errors:
            writer.writerow([_cell(error.get(c)) for c in columns])
        return Response(
            out.getvalue(),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job.id}-errors.csv"'},
        )

    def new(self) -> Any:
        types = self.jobs.registry.types
        batch_type = request.values.get("type", "")
        context_text = request.form.get("context")
        dry_run = request.form.get("dry_run") == "on"
        error = None
        if request.method == "POST":
            if not self.may_act():
                raise _Refused(403, _READ_ONLY)
            try:
                context = _context_from(context_text or "")
                job = self.jobs.create(
                    batch_type, context, dry_run=dry_run, created_by=g.dashboard_user
                )
            except InvalidDataError as invalid:
                error = invalid.message
            else:
                return redirect(url_for(".job", id=job.id, done="created"), 303)
        if context_text is None:
            context_text = _template_context(self.jobs, batch_type) if batch_type in types else "{}"
        template_file = batch_type in types and _has_file_template(self.jobs, batch_type)
        return self.render(
            "new.html",
            types=types,
            batch_type=batch_type,
            context_text=context_text,
            dry_run=dry_run,
            error=error,
            template_file=template_file,
        )

    def import_csv(self) -> Any:
        """The import wizard's first step: a table, a file, how to treat invalid rows."""
        tables = _imports.import_tables(self.jobs)
        chosen = request.values.get("table", "")
        skip_invalid = request.form.get("skip_invalid") == "on"
        error = None
        if request.method == "POST":
            if not self.may_act():
                raise _Refused(403, _READ_ONLY)
            upload = request.files.get("file")
            try:
                if tables is None:
                    raise NotFoundError("No csv-import is registered here")
                database, table = _imports.chosen_table(chosen, tables)
                if upload is None or not upload.filename:
                    raise InvalidDataError("Choose the CSV file to upload.")
                job = _imports.start_import(
                    self.jobs,
                    g.dashboard_user,
                    filename=upload.filename,
                    source=upload.stream,
                    database=database,
                    table=table,
                    skip_invalid=skip_invalid,
                )
            except InvalidDataError as invalid:
                error = invalid.message
            else:
                return redirect(url_for(".job", id=job.id, done="uploaded"), 303)
        return self.render(
            "import.html",
            tables=[(_imports.choice_value(*pair), *pair) for pair in tables or []],
            registered=tables is not None,
            chosen=chosen,
            skip_invalid=skip_invalid,
            error=error,
            max_upload_text=_views.size_text(self.max_upload_bytes),
        )

    def import_template(self) -> Response:
        """The header row of the chosen table, a CSV file to fill in."""
        tables = _imports.import_tables(self.jobs)
        if tables is None:
            raise NotFoundError("No csv-import is registered here")
        database, table = _imports.chosen_table(request.args.get("table", ""), tables)
        text = self.jobs.strategy(_imports.IMPORT_TYPE).build_template(  # type: ignore[call-arg]
            table=table, database=database
        )
        name = _imports.choice_value(database, table)
        return Response(
            text,
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}-template.csv"'},
        )

    def template_file(self, batch_type: str) -> Response:
        text = self.jobs.strategy(batch_type).build_template()
        if text is None:
            raise NotFoundError(f"The {batch_type} strategy has no template")
        return Response(
            text,
            mimetype="text/csv" if text.count(",") else "text/plain",
            headers={"Content-Disposition": f'attachment; filename="{batch_type}-template.csv"'},
        )

    def login(self) -> Any:
        if not self.tokens:
            raise _Refused(401, "Sign in to the application to see its batch jobs.")
        next_url = _safe_next(request.values.get("next", ""))
        error = None
        if request.method == "POST":
            token = request.form.get("token", "").strip()
            user = _bearer_user(self.tokens, f"Bearer {token}") if token else None
            if user is not None:
                response = redirect(next_url, 303)
                value = self.serializer("session").dumps({"u": user, "k": _fingerprint(token)})
                response.set_cookie(
                    COOKIE_NAME,
                    value,
                    max_age=SESSION_SECONDS,
                    path=_cookie_path(),
                    secure=request.is_secure,
                    httponly=True,
                    samesite="Strict",
                )
                return response
            error = "That token is not known here." if token else "Enter your access token."
        return self.render("login.html", error=error, next_url=next_url)

    def logout(self) -> ResponseReturnValue:
        response = redirect(url_for(".login"), 303)
        response.delete_cookie(
            COOKIE_NAME,
            path=_cookie_path(),
            secure=request.is_secure,
            httponly=True,
            samesite="Strict",
        )
        return response

    # -- live updates ------------------------------------------------------------------------

    def watched(self) -> tuple[list[str], bool]:
        ids = [i for i in request.args.get("ids", "").split(",") if i][:MAX_WATCHED]
        return ids, request.args.get("new") == "1"

    def load(self, ids: list[str]) -> list[BatchJob]:
        if not ids:
            return []
        found, _ = self.jobs.list_and_count(
            limit=len(ids), id=ids, created_by=g.dashboard_user, order="created_at"
        )
        return found

    def live(self) -> Response:
        ids, announce_new = self.watched()
        if not self.streams.acquire(blocking=False):
            return Response(
                "Too many live pages are open: poll live.json instead.",
                status=503,
                headers={"Retry-After": "30"},
                mimetype="text/plain",
            )
        user = g.dashboard_user
        events = _live.stream_jobs(
            self.feed,
            ids=ids,
            visible=lambda job: job.created_by == user,
            load=self.load,
            view=self.view,
            announce_new=announce_new,
        )

        def stream() -> Any:
            try:
                yield from events
            finally:
                self.streams.release()

        return Response(
            stream_with_context(stream()),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def live_json(self) -> Response:
        ids, _ = self.watched()
        views = [self.view(job) for job in self.load(ids)]
        return Response(
            json.dumps({"jobs": views}),
            mimetype="application/json",
            headers={"Cache-Control": "no-store"},
        )


def _error_columns(errors: list[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for e in errors for k in e))
    first = [c for c in _ERROR_COLUMNS if c in keys]
    return first + [k for k in keys if k not in first]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _context_from(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        context = json.loads(text)
    except ValueError as error:
        raise InvalidDataError(f"context is not valid JSON: {error}") from None
    if not isinstance(context, dict):
        raise InvalidDataError("context must be a JSON object ({...})")
    return context


def _template_context(jobs: BatchJobs, batch_type: str) -> str:
    """The strategy's template when it is a JSON object (a context to fill in), else ``{}``."""
    try:
        text = jobs.strategy(batch_type).build_template()
        value = json.loads(text) if text else None
    except (BatchJobError, ValueError, TypeError):
        value = None
    return json.dumps(value, indent=2) if isinstance(value, dict) else "{}"


def _has_file_template(jobs: BatchJobs, batch_type: str) -> bool:
    """Whether the strategy offers a template file that is not a context."""
    try:
        text = jobs.strategy(batch_type).build_template()
    except (BatchJobError, TypeError, ValueError):
        return False
    return bool(text) and _template_context(jobs, batch_type) == "{}"


def _cookie_path() -> str:
    root = url_for(".index")
    return root.rstrip("/") or "/"


def _safe_next(value: str) -> str:
    """``value`` when it is a page of this dashboard, else its list page (no open redirect)."""
    root = url_for(".index")
    parts = urlsplit(value)
    if value.startswith(root) and not parts.scheme and not parts.netloc and "\\" not in value:
        return value
    return root


def create_blueprint(
    jobs: BatchJobs,
    *,
    authenticate: Authenticate | None = None,
    tokens: Mapping[str, str] | None = None,
    read_only: bool | Callable[[str], bool] = False,
    secret_key: str | bytes | None = None,
    feed: JobFeed | None = None,
    max_streams: int = DEFAULT_MAX_STREAMS,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    name: str = "batchjobs_dashboard",
    url_prefix: str | None = None,
) -> Blueprint:
    """The dashboard's pages as a Flask blueprint, to mount anywhere.

    ``authenticate(request) -> user id | None`` and ``tokens`` (token → user
    id, typed into the login form) say who calls, as for the API; one is
    required. ``read_only`` (a bool, or ``fn(user_id) -> bool``) lets a user
    look but not act. Cookies and forms are signed with ``secret_key``, by
    default the app's ``secret_key``. ``feed`` is where live updates come from
    (default: this process's signals, ``SignalFeed(jobs)``); close it before
    stopping the server, so open streams end. At most ``max_streams`` live
    streams are open at once (each holds a server thread); pages poll past that.
    A file uploaded to the import wizard may be ``max_upload_bytes`` long.
    """
    if authenticate is None and not tokens:
        raise ValueError("the dashboard needs authenticate or tokens to know who calls it")
    for token, user_id in (tokens or {}).items():
        if not (isinstance(token, str) and token.strip() and isinstance(user_id, str) and user_id):
            raise ValueError("tokens map non-empty token strings to non-empty user ids")
    if not isinstance(max_streams, int) or max_streams < 0:
        raise ValueError(f"max_streams must be a whole number, not {max_streams!r}")
    if not isinstance(max_upload_bytes, int) or max_upload_bytes < 1:
        raise ValueError(
            f"max_upload_bytes must be a positive whole number, not {max_upload_bytes!r}"
        )
    dashboard = _Dashboard(
        jobs,
        authenticate=authenticate,
        tokens=tokens or {},
        read_only=read_only,
        secret_key=secret_key,
        feed=feed or SignalFeed(jobs),
        max_streams=max_streams,
        max_upload_bytes=max_upload_bytes,
    )
    bp = Blueprint(
        name,
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/_static",  # not the host app's /static, even at its root
        url_prefix=url_prefix,
    )

    @bp.record_once
    def check_key(state: Any) -> None:
        app: Flask = state.app
        if not (secret_key or app.secret_key):
            raise ValueError(
                "the dashboard signs its cookie and forms: give create_blueprint(secret_key=...) "
                "or set the Flask app's secret_key first"
            )

    @bp.before_request
    def guard() -> ResponseReturnValue | None:
        if request.endpoint == f"{bp.name}.import_csv":  # before anything reads the form
            request.max_content_length = max_upload_bytes
        dashboard.check_site()  # first: a cross-site POST is refused whoever it claims to be
        answer = dashboard.identify()
        if answer is None:
            dashboard.check_token()
        return answer

    @bp.context_processor
    def shared() -> dict[str, Any]:
        return {
            "user": g.get("dashboard_user"),
            "may_act": dashboard.may_act() if g.get("dashboard_user") else False,
            "csrf_token": dashboard.csrf_token,
            "can_log_out": g.get("dashboard_login") == "cookie",
            "age_text": _views.age_text,
            "size_text": _views.size_text,
            "may_import": _imports.IMPORT_TYPE in dashboard.jobs.registry.types,
        }

    @bp.after_request
    def headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if response.mimetype == "text/html":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def refused(error: _Refused) -> tuple[str, int]:
        return dashboard.render("error.html", error.status, message=error.message)

    def batch_job_error(error: BatchJobError) -> tuple[str, int]:
        status = {"not_found": 404, "not_allowed": 403}.get(error.type, 400)
        return dashboard.render("error.html", status, message=error.message)

    def too_large(error: RequestEntityTooLarge) -> tuple[str, int]:
        message = (
            f"The file is larger than {_views.size_text(max_upload_bytes)}, "
            "the most an upload may be."
        )
        return dashboard.render("error.html", 413, message=message)

    bp.register_error_handler(_Refused, refused)
    bp.register_error_handler(RequestEntityTooLarge, too_large)
    bp.register_error_handler(BatchJobError, batch_job_error)
    bp.add_url_rule("/", "index", dashboard.index)
    bp.add_url_rule("/jobs/<id>", "job", dashboard.job)
    bp.add_url_rule("/jobs/<id>/<action>", "act", dashboard.act, methods=["POST"])
    bp.add_url_rule("/jobs/<id>/errors.csv", "errors_csv", dashboard.errors_csv)
    bp.add_url_rule("/jobs/<id>/file", "download", dashboard.download)
    bp.add_url_rule("/new", "new", dashboard.new, methods=["GET", "POST"])
    bp.add_url_rule("/templates/<batch_type>", "template_file", dashboard.template_file)
    bp.add_url_rule(IMPORT_PATH, "import_csv", dashboard.import_csv, methods=["GET", "POST"])
    bp.add_url_rule(f"{IMPORT_PATH}/template", "import_template", dashboard.import_template)
    bp.add_url_rule("/login", "login", dashboard.login, methods=["GET", "POST"])
    bp.add_url_rule("/logout", "logout", dashboard.logout, methods=["POST"])
    bp.add_url_rule("/live", "live", dashboard.live)
    bp.add_url_rule("/live.json", "live_json", dashboard.live_json)
    return bp
