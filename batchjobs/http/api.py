"""The Medusa-compatible admin HTTP API: a Flask app over a ``BatchJobs``.

Routes (JSON in, JSON out)::

    POST /admin/batch-jobs               {"type", "context", "dry_run", "key"} -> 201 {"batch_job"}
    GET  /admin/batch-jobs               -> {"batch_jobs", "count", "offset", "limit"}
                                         (filters: id, type, status, *_at[gt..lte], *_at=null)
    GET  /admin/batch-jobs/<id>          -> {"batch_job"}
    POST /admin/batch-jobs/<id>/confirm  -> {"batch_job"}
    POST /admin/batch-jobs/<id>/cancel   -> {"batch_job"}
    POST /admin/batch-jobs/<id>/pause    -> {"batch_job"}   (not Medusa's: an extension)
    POST /admin/batch-jobs/<id>/resume   -> {"batch_job"}   (not Medusa's: an extension)
    GET  /admin/batch-jobs/events        -> {"events", "next_after", "limit"} (?after=SEQ&limit=N)
                                         or, with Accept: text/event-stream, Server-Sent
                                         Events (id: = seq; Last-Event-ID resumes)

The list and the events hold the caller's jobs only. The ``uploads`` module adds
Medusa's ``/admin/uploads`` routes (files in, download links out) to the same blueprint.

Every request names its caller, a user id: the application's ``authenticate``
callable answers from the request (a session, a proxy header...), else an
``Authorization: Bearer <token>`` header found in ``tokens``. Jobs are created
``created_by`` the caller, and a caller sees, confirms and cancels only its own.
One route needs no caller: a signed download link authorizes itself, like a
presigned URL (``uploads``).

Errors are ``{"type", "message"}``: ``not_found`` 404, ``not_allowed`` and
``invalid_data`` 400, ``unauthorized`` 401.

>>> from batchjobs.http import create_app
>>> app = create_app(jobs, tokens={"s3cret": "usr_1"})     # a WSGI app

``AdminServer`` (``server`` module) serves such an app on waitress, as
``batchjobs serve`` does; any WSGI server can serve it too.

Input is checked against ``batchjobs.limits`` (the library checks it again);
every answer is JSON that ``JSON.parse`` reads (no ``NaN``); an unexpected
error is a 500 ``unknown_error`` naming a request id that the log line names
too, and never the answer to a write that committed.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Blueprint, Flask, Request, Response, current_app, g, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..app import BatchJobs
from ..errors import BatchJobError, InvalidDataError, NotAllowedError
from ..events import EventFeed
from ..limits import MAX_BODY_BYTES, MAX_INTEGER, MAX_LIST_LIMIT, MAX_URL_BYTES, dumps, parse_json
from ..models import TIMESTAMP_FIELDS, BatchJob, Event
from .openapi import OPENAPI_PATH, openapi_document
from .uploads import DOWNLOAD_ENDPOINT, UploadSettings, add_upload_routes

__all__ = [
    "DEFAULT_EVENTS_LIMIT",
    "DEFAULT_LIMIT",
    "HEARTBEAT_SECONDS",
    "MAX_BODY_BYTES",
    "NOT_OWNER_MESSAGE",
    "PREFIX",
    "Authenticate",
    "create_app",
    "create_blueprint",
]

log = logging.getLogger("batchjobs.http")

#: Page size of ``GET /admin/batch-jobs`` when ``limit`` is not given (Medusa's).
DEFAULT_LIMIT = 10
NOT_OWNER_MESSAGE = "Cannot access a batch job that does not belong to the logged in user"
#: Where the routes are.
PREFIX = "/admin/batch-jobs"

#: Finds the user id of a request's caller, or ``None`` when it has none.
Authenticate = Callable[[Request], str | None]

_STATUS_OF = {"not_found": 404, "not_allowed": 400, "invalid_data": 400, "events_pruned": 410}
#: Events per page of ``GET /admin/batch-jobs/events`` when ``limit`` is not given, and at most.
DEFAULT_EVENTS_LIMIT = 100
MAX_EVENTS_LIMIT = 1000
#: Seconds between two comments on an idle event stream (keeps proxies and clients sure).
HEARTBEAT_SECONDS = 15.0
#: Milliseconds a browser waits before it reconnects a stream that ended.
STREAM_RETRY_MS = 2000
#: Answers of this type are streams (``server.STREAM_CONTENT_TYPE`` counts them apart).
EVENT_STREAM = "text/event-stream"
_HTTP_TYPES = {
    401: "unauthorized",
    404: "not_found",
    405: "not_allowed",
    413: "invalid_data",
    414: "invalid_data",
    431: "invalid_data",
}
_CREATE_FIELDS = ("type", "context", "dry_run", "key")
#: Query parameters filtering on a value or a list of values (``type=a``, ``type[]=a``).
_LIST_FILTERS = ("id", "status", "type")
#: Read by ``_list_fields``, not filters.
_IGNORED_PARAMS = ("expand", "fields")
#: ``completed_at=null``: the jobs whose ``completed_at`` is null (Medusa's query shape).
_NULL = "null"
#: The fields of a record, in Medusa's order: what ``fields=`` may name.
_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(BatchJob))
_PARAM = re.compile(r"^([a-z_]+)(?:\[([a-z0-9]*)\])?$")
# "+" in a query string means a space: "…T10:00:00+00:00" unencoded arrives as "… 00:00".
_SPACED_OFFSET = re.compile(r" (\d\d:?\d\d)$")


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _json(data: Any, status: int = 200) -> Response:
    """A JSON response, encoded without NaN (whatever JSON provider the host app has)."""
    return Response(dumps(data), status=status, mimetype="application/json")


def _error(status: int, type: str, message: str) -> tuple[Response, int]:
    return _json({"type": type, "message": message}, status), status


# -- input ------------------------------------------------------------------------------------


def _json_object_body() -> dict[str, Any]:
    data = request.get_data(cache=True)
    if not data.strip():
        raise InvalidDataError("the request body must be a JSON object with a type")
    # As Medusa: only a JSON body is read. A browser cannot send one to another
    # site without asking first (CORS), which keeps cookie-based logins safe.
    if not request.is_json:
        raise InvalidDataError("the request body must be sent as Content-Type: application/json")
    body = parse_json("the request body", data, max_bytes=MAX_BODY_BYTES)
    if not isinstance(body, dict):
        raise InvalidDataError(f"the request body must be a JSON object, not {_json_type(body)}")
    return body


def _create_input(body: Mapping[str, Any]) -> tuple[str, dict[str, Any], bool, str | None]:
    """``type``, ``context``, ``dry_run`` and ``key`` from a create request, checked."""
    for name in body:
        if name not in _CREATE_FIELDS:
            raise InvalidDataError(
                f"unknown field {name!r}; a batch job takes type, context, dry_run and key"
            )
    if "type" not in body:
        raise InvalidDataError("type is required")
    batch_type, context, dry_run = body["type"], body.get("context"), body.get("dry_run", False)
    if not isinstance(batch_type, str):
        raise InvalidDataError(f"type must be a string, not {_json_type(batch_type)}")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise InvalidDataError(f"context must be a JSON object, not {_json_type(context)}")
    if not isinstance(dry_run, bool):
        raise InvalidDataError(f"dry_run must be a boolean, not {_json_type(dry_run)}")
    key = body.get("key")
    if key is not None and not isinstance(key, str):
        raise InvalidDataError(f"key must be a string, not {_json_type(key)}")
    return batch_type, context, dry_run, key


def _count(name: str, args: MultiDict[str, str], default: int, most: int = MAX_INTEGER) -> int:
    values = args.getlist(name)
    if not values:
        return default
    if len(values) > 1:
        raise InvalidDataError(f"{name} is given {len(values)} times")
    text = values[0]
    if not (text.isascii() and text.isdigit()):
        raise InvalidDataError(f"{name} must be a non-negative integer, not {text!r}")
    # Compared as text first: int() of a 5,000-digit string raises ValueError.
    if len(text.lstrip("0")) > len(str(most)) or int(text) > most:
        raise InvalidDataError(f"{name} must be at most {most}, not {text[:40]}")
    return int(text)


def _events_after(args: MultiDict[str, str], last_event_id: str | None) -> int | None:
    """Where an events request starts: ``?after=`` or, resuming a stream, ``Last-Event-ID``."""
    if "after" in args:
        return _count("after", args, 0)
    if last_event_id is not None and last_event_id.strip():
        return _count("Last-Event-ID", MultiDict([("Last-Event-ID", last_event_id.strip())]), 0)
    return None


def _sse(event: Event) -> str:
    """``event`` as one Server-Sent Event: its seq as the id, its name as the type."""
    return f"id: {event.seq}\nevent: {event.event}\ndata: {dumps(event.to_dict())}\n\n"


def _list_query(args: MultiDict[str, str]) -> tuple[int, int, str, dict[str, Any]]:
    """``limit``, ``offset``, ``order`` and the filters of a list request.

    Filters take Medusa's query shapes: ``type=a``, ``type[]=a&type[]=b`` or
    ``type[0]=a`` (likewise ``status`` and ``id``), and ``created_at[gt]=ISO``
    (``gt``/``gte``/``lt``/``lte``) or ``completed_at=null`` for each ``*_at``
    field. ``fields`` and ``expand`` are read by ``_list_fields``.
    """
    limit = _count("limit", args, DEFAULT_LIMIT, MAX_LIST_LIMIT)
    offset = _count("offset", args, 0)
    orders = args.getlist("order")
    if len(orders) > 1:
        raise InvalidDataError(f"order is given {len(orders)} times")
    order = orders[0] if orders else "-created_at"
    filters: dict[str, Any] = {}
    for key in args:
        match = _PARAM.match(key)
        name, operator = match.groups() if match else (key, None)
        if key in ("limit", "offset", "order") or name in _IGNORED_PARAMS:
            continue
        values = args.getlist(key)
        if name in _LIST_FILTERS and (operator is None or operator.isdigit() or operator == ""):
            filters.setdefault(name, []).extend(values)
        elif name in TIMESTAMP_FIELDS and operator is None and values == [_NULL]:
            if filters.get(name) is not None:
                raise InvalidDataError(f"{name}=null cannot be combined with {name}[...]")
            filters[name] = None
        elif name in TIMESTAMP_FIELDS and operator and not operator.isdigit():
            if len(values) > 1:
                raise InvalidDataError(f"{key} is given {len(values)} times")
            if name in filters and filters[name] is None:
                raise InvalidDataError(f"{name}=null cannot be combined with {name}[...]")
            filters.setdefault(name, {})[operator] = _SPACED_OFFSET.sub(r"+\1", values[0])
        elif name in TIMESTAMP_FIELDS:
            raise InvalidDataError(
                f"{key} needs an operator or null: {name}[gt], {name}[gte], {name}[lt], "
                f"{name}[lte] or {name}=null"
            )
        else:
            raise InvalidDataError(
                f"unknown query parameter {key!r}; use limit, offset, order, fields, expand, "
                "id, type, status or a date filter such as created_at[gt] or completed_at=null"
            )
    return limit, offset, order, filters


def _list_fields(args: MultiDict[str, str]) -> tuple[str, ...] | None:
    """The record fields ``fields=a,b`` asks for (``id`` always among them), or ``None``.

    ``expand`` names relations (Medusa's ``created_by_user``...): a batch job
    here has none, so it is accepted and ignored.
    """
    wanted: list[str] = []
    for key in args:
        match = _PARAM.match(key)
        if match and match.group(1) == "fields":
            for value in args.getlist(key):
                wanted.extend(name.strip() for name in value.split(",") if name.strip())
    if not wanted:
        return None
    for name in wanted:
        if name not in _RECORD_FIELDS:
            raise InvalidDataError(
                f"unknown field {name!r} in fields; a batch job has {', '.join(_RECORD_FIELDS)}"
            )
    return tuple(name for name in _RECORD_FIELDS if name == "id" or name in wanted)


# -- the API ----------------------------------------------------------------------------------


def _bearer_user(tokens: Mapping[str, str], header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    given = token.strip().encode()
    user = None
    # Compare with every token, in constant time: no early exit to time.
    for known, user_id in tokens.items():
        if hmac.compare_digest(known.encode(), given):
            user = user_id
    return user


def create_blueprint(
    jobs: BatchJobs,
    *,
    authenticate: Authenticate | None = None,
    tokens: Mapping[str, str] | None = None,
    uploads: UploadSettings | None = None,
) -> Blueprint:
    """The admin API's routes as a Flask blueprint, to register on your own app.

    ``authenticate(request)`` returns the caller's user id or ``None``;
    ``tokens`` maps bearer tokens to user ids. One of them is required; with
    both, ``authenticate`` is asked first. ``uploads`` sets the upload
    routes' size limit and how download links are signed. An ``authenticate`` that trusts a
    session cookie must also guard against cross-site requests (confirm and
    cancel take no body, an upload is a form), e.g. by checking the
    ``Origin`` header. Errors raised
    by the routes become ``{"type", "message"}`` responses; unknown routes are
    your app's (use ``create_app`` for JSON 404s everywhere).
    """
    if authenticate is None and not tokens:
        raise ValueError("the admin API needs authenticate or tokens to know who calls it")
    known_tokens = dict(tokens or {})
    for token, user_id in known_tokens.items():
        if not (isinstance(token, str) and token.strip() and isinstance(user_id, str) and user_id):
            raise ValueError("tokens map non-empty token strings to non-empty user ids")
    api = Blueprint("batchjobs_admin", __name__)

    def caller() -> str:
        user: str = g.batchjobs_user  # set by identify() before every route
        return user

    def sender() -> str | None:
        """The user the request's credentials name; ``None`` (a download link alone) if none."""
        user: str | None = g.batchjobs_user
        return user

    @api.before_request
    def identify() -> tuple[Response, int] | None:
        user = authenticate(request) if authenticate is not None else None
        if user is not None and not isinstance(user, str):
            raise TypeError(f"authenticate() returned {user!r}, not a user id (str) or None")
        header = request.headers.get("Authorization")
        if not user and header is not None and known_tokens:
            user = _bearer_user(known_tokens, header)
            if user is None:
                return _unauthorized("Invalid bearer token")
        # A signed download link is its own authority (a presigned URL): a browser
        # opens it with no credentials. The route checks any that are sent.
        link = (request.endpoint or "").rpartition(".")[2] == DOWNLOAD_ENDPOINT
        if not user and not link:
            hint = ": send Authorization: Bearer <token>" if known_tokens else ""
            return _unauthorized(f"Authentication required{hint}")
        g.batchjobs_user = user or None
        return None

    def own(id: str) -> BatchJob:
        job = jobs.retrieve(id)
        if job.created_by != caller():
            raise NotAllowedError(NOT_OWNER_MESSAGE)
        return job

    @api.post(PREFIX)
    def create_job() -> Response:
        batch_type, context, dry_run, key = _create_input(_json_object_body())
        # With a key the caller already used: that job, as a replay of its create.
        job = jobs.create(batch_type, context, dry_run=dry_run, created_by=caller(), key=key)
        response = _written(job, 201)
        response.headers["Location"] = f"{PREFIX}/{job.id}"
        return response

    @api.get(PREFIX)
    def list_jobs() -> Response:
        limit, offset, order, filters = _list_query(request.args)
        fields = _list_fields(request.args)
        page, count = jobs.list_and_count(
            limit=limit, offset=offset, order=order, **filters, created_by=caller()
        )
        records = [job.to_dict() for job in page]
        if fields is not None:
            records = [{name: record[name] for name in fields} for record in records]
        return _json(
            {
                "batch_jobs": records,
                "count": count,
                "offset": offset,
                "limit": limit,
            }
        )

    @api.get(f"{PREFIX}/events")
    def job_events() -> Response:
        user = caller()
        after = _events_after(request.args, request.headers.get("Last-Event-ID"))
        wanted = request.accept_mimetypes.best_match(["application/json", EVENT_STREAM])
        if wanted == EVENT_STREAM:
            return _event_stream(jobs.follow(after=after, created_by=user))
        limit = _count("limit", request.args, DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT)
        if limit < 1:
            raise InvalidDataError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}, not {limit}")
        reached = jobs.last_seq()
        page = jobs.events(after, limit=limit, created_by=user)
        # A short page saw every event up to ``reached``: the next read starts past
        # other users' events too, however few of the caller's there are.
        next_after = page[-1].seq if page else (after or 0)
        if len(page) < limit:
            next_after = max(next_after, reached)
        return _json(
            {
                "events": [event.to_dict() for event in page],
                "next_after": next_after,
                "limit": limit,
            }
        )

    @api.get(f"{PREFIX}/<id>")
    def retrieve_job(id: str) -> Response:
        return _json({"batch_job": own(id).to_dict()})

    @api.post(f"{PREFIX}/<id>/confirm")
    def confirm_job(id: str) -> Response:
        return _written(jobs.confirm(own(id).id))

    @api.post(f"{PREFIX}/<id>/cancel")
    def cancel_job(id: str) -> Response:
        return _written(jobs.cancel(own(id).id))

    @api.post(f"{PREFIX}/<id>/pause")
    def pause_job(id: str) -> Response:
        return _written(jobs.pause(own(id).id))

    @api.post(f"{PREFIX}/<id>/resume")
    def resume_job(id: str) -> Response:
        return _written(jobs.resume(own(id).id))

    add_upload_routes(api, jobs, caller, uploads or UploadSettings(), sender=sender)
    api.register_error_handler(BatchJobError, _batch_job_error)
    api.register_error_handler(Exception, _route_error)
    return api


def _written(job: BatchJob, status: int = 200) -> Response:
    """The answer to a write that committed: ``{"batch_job"}``.

    Noted first, so that should the answer itself fail, the error handler
    still says the write was done (``_unexpected_error``), never 500.
    """
    g.batchjobs_written = (job.id, status)
    return _json({"batch_job": job.to_dict()}, status)


def _event_stream(feed: EventFeed) -> Response:
    """The events of ``feed`` as Server-Sent Events, with a comment when idle; until the
    client goes or the ``BatchJobs`` stops following."""

    def stream() -> Iterator[str]:
        try:
            # The position the stream starts from, as an ``id:`` without data: a client
            # dropped before any event came resumes from there (Last-Event-ID), not
            # from whatever is "now" when it reconnects.
            sent = feed.after
            yield f"retry: {STREAM_RETRY_MS}\nid: {sent}\n\n"
            while not feed.closed:
                events = feed.read(timeout=HEARTBEAT_SECONDS)
                if not events:
                    # A caller's feed moves on past other users' events: an ``id:`` with
                    # no data tells the client (an EventSource's Last-Event-ID) without
                    # an event, so that it resumes from there, not from before events
                    # retention has pruned meanwhile.
                    moved = f"id: {feed.after}\n" if feed.after != sent else ""
                    sent = feed.after
                    yield f": heartbeat\n{moved}\n"
                for event in events:
                    sent = event.seq
                    yield _sse(event)
        finally:
            feed.close()

    return Response(
        stream(),
        mimetype=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _unauthorized(message: str) -> tuple[Response, int]:
    response, status = _error(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response, status


def _batch_job_error(error: BatchJobError) -> tuple[Response, int]:
    return _error(_STATUS_OF.get(error.type, 500), error.type, error.message)


def _http_error(error: HTTPException) -> tuple[Response, int]:
    status = error.code or 500
    if status == 404:
        message = f"{request.method} {request.path} is not a route of this API"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    elif status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH") or MAX_BODY_BYTES
        message = f"the request body is larger than {limit} bytes"
    else:
        message = error.description or error.name
    type = _HTTP_TYPES.get(status, "invalid_data" if status < 500 else "unknown_error")
    response, status = _error(status, type, message)
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response, status


def _unexpected_error(error: Exception) -> tuple[Response, int]:
    """500 ``unknown_error`` with a request id that the log line names too.

    After a write that committed, the write's own status instead, with the
    job's id: a client that retried a 500 would do the write twice.
    """
    request_id = uuid.uuid4().hex[:12]
    written = g.get("batchjobs_written")
    done = f" after batch job {written[0]} was saved" if written else ""
    log.error(
        "%s %s failed%s (request %s)",
        request.method,
        request.path,
        done,
        request_id,
        exc_info=error,
    )
    if written:
        id, status = written
        response = _json({"batch_job": {"id": id}}, status)
    else:
        message = f"An unknown error occurred (request {request_id})."
        response, status = _error(500, "unknown_error", message)
    response.headers["X-Request-Id"] = request_id
    return response, status


def _route_error(error: Exception) -> tuple[Response, int]:
    """Any error of the blueprint's routes, in the API's shape, also in a host app."""
    if isinstance(error, HTTPException):
        return _http_error(error)
    return _unexpected_error(error)


def _bounded_url() -> tuple[Response, int] | None:
    size = len(request.environ.get("PATH_INFO", "")) + len(request.query_string)
    if size > MAX_URL_BYTES:
        return _error(414, "invalid_data", f"the URL is longer than {MAX_URL_BYTES} bytes")
    return None


def _openapi() -> Response:
    jobs: BatchJobs = current_app.extensions["batchjobs"]
    return _json(openapi_document(jobs.registry.types))


def create_app(
    jobs: BatchJobs,
    *,
    authenticate: Authenticate | None = None,
    tokens: Mapping[str, str] | None = None,
    uploads: UploadSettings | None = None,
) -> Flask:
    """A Flask (WSGI) app serving the admin API of ``jobs``; every error is JSON.

    ``authenticate(request) -> user id | None`` and ``tokens`` (bearer token
    → user id) say who calls; ``uploads`` sets the upload routes' limit and
    link signing; see ``create_blueprint``. The app does not run
    jobs: call ``jobs.start()`` in the same process, or run ``batchjobs
    worker`` beside it.
    """
    app = Flask(__name__, static_folder=None)  # the dashboard's files are its blueprint's
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["batchjobs"] = jobs
    app.before_request(_bounded_url)
    app.add_url_rule(OPENAPI_PATH, "openapi", _openapi, methods=["GET"])
    app.register_blueprint(
        create_blueprint(jobs, authenticate=authenticate, tokens=tokens, uploads=uploads)
    )
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app
