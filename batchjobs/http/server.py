"""The server behind ``batchjobs serve``: waitress, with bounds on what one client may hold.

waitress reads every request whole, on non-blocking sockets in one thread,
before a worker thread sees it: a slow or idle client holds a socket, never
a worker. On top of waitress's own limits (header and body size, idle
keep-alive), this module adds:

- a deadline for receiving a request (``request_seconds``): a client that
  sends one byte a second (slowloris) is answered 408 and closed;
- a 414 for a request line longer than ``url_bytes``;
- a larger body for uploads (``POST /admin/uploads``, and the dashboard's
  import wizard at ``POST /import``: ``upload_bytes``) than for every other
  request (``body_bytes``);
- every error the server answers itself (400, 408, 413, 414, 431, 500) in
  the API's JSON shape ``{"type", "message"}``;
- a cap on long-lived responses (``text/event-stream``, SSE): at most
  ``streams`` at once, on threads of their own, so streams never starve the
  ``threads`` that answer API requests; one more is answered 503;
- one log line per request on the ``batchjobs.http`` logger (a download
  link's token left out: the link alone downloads the file).
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import Error, RequestHeaderFieldsTooLarge

from ..limits import (
    IDLE_SECONDS,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MAX_UPLOAD_BYTES,
    MAX_URL_BYTES,
    REQUEST_SECONDS,
    dumps,
)
from .dashboard import IMPORT_PATH
from .uploads import UPLOADS_PREFIX

__all__ = [
    "DEFAULT_CONNECTIONS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_STREAMS",
    "DEFAULT_THREADS",
    "SHUTDOWN_GRACE",
    "STREAM_CONTENT_TYPE",
    "AdminServer",
    "ServerLimits",
]

log = logging.getLogger("batchjobs.http")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
#: Threads answering API requests (each keeps one SQLite connection).
DEFAULT_THREADS = 8
#: Long-lived responses (SSE) served at once, on threads of their own.
DEFAULT_STREAMS = 4
#: Open connections at once; more wait in the listen backlog until some close.
DEFAULT_CONNECTIONS = 250
#: Seconds ``AdminServer.shutdown`` waits for requests in progress to finish.
SHUTDOWN_GRACE = 10.0
#: Responses of this type are streams, counted against ``ServerLimits.streams``.
STREAM_CONTENT_TYPE = "text/event-stream"
#: Seconds between two looks at the deadlines (and at a shutdown request).
_TICK = 0.25
#: For waitress's own timers, which ``check_deadlines`` replaces.
_NEVER = 10**9
#: The JSON ``type`` of each status the server answers by itself.
_TYPES = {500: "unknown_error", 503: "unavailable"}


@dataclass(frozen=True)
class ServerLimits:
    """What the clients of an ``AdminServer`` may hold; every field has a default.

    >>> AdminServer(app, limits=ServerLimits(request_seconds=10, streams=16))
    """

    #: Worker threads for requests that are not streams.
    threads: int = DEFAULT_THREADS
    #: Streams (``text/event-stream`` responses) at once; each holds a thread of its own.
    streams: int = DEFAULT_STREAMS
    #: Open connections at once (idle, slow and busy alike).
    connections: int = DEFAULT_CONNECTIONS
    #: Request line and headers, in bytes: 431 past it.
    header_bytes: int = MAX_HEADER_BYTES
    #: Request line alone, in bytes: 414 past it.
    url_bytes: int = MAX_URL_BYTES
    #: Body, in bytes, whether it comes with a Content-Length or chunked: 413 past it.
    body_bytes: int = MAX_BODY_BYTES
    #: Body of an upload (``POST /admin/uploads``, the dashboard's ``POST /import``), in bytes.
    upload_bytes: int = MAX_UPLOAD_BYTES
    #: Seconds a client may take to send one whole request: 408 and closed past it.
    request_seconds: float = REQUEST_SECONDS
    #: Seconds a keep-alive connection may wait with no request before it is closed.
    idle_seconds: float = IDLE_SECONDS

    def __post_init__(self) -> None:
        for name in ("threads", "streams", "connections", "header_bytes", "url_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for name in ("body_bytes", "upload_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
        for name in ("request_seconds", "idle_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def _json_body(status: int, type: str, message: str) -> bytes:
    return dumps({"type": type, "message": message}).encode()


# -- what waitress answers by itself ----------------------------------------------------------


class _UriTooLong(Error):
    code = 414
    reason = "URI Too Long"


class _RequestTimeout(Error):
    code = 408
    reason = "Request Timeout"


#: Where a body may be an upload: the API's, and the dashboard's wizard as serve mounts it.
_UPLOAD_PATHS = (UPLOADS_PREFIX, IMPORT_PATH)


class _Parser(HTTPRequestParser):
    """waitress's parser, telling a request line too long (414) from headers too large (431),
    and taking uploads up to ``upload_bytes``."""

    url_bytes = MAX_URL_BYTES
    upload_bytes = MAX_UPLOAD_BYTES

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if self.command == "POST" and self.path in _UPLOAD_PATHS:
            # The body's limit is read from adj, once the headers are in.
            adjustments: Any = copy.copy(self.adj)  # type: ignore[has-type]
            adjustments.max_request_body_size = self.upload_bytes
            self.adj = adjustments

    def received(self, data: bytes) -> int:
        before = self.header_plus
        consumed = int(super().received(data))
        error: Any = self.error  # type: ignore[has-type]
        if isinstance(error, RequestHeaderFieldsTooLarge):
            if b"\n" not in before + data[:consumed]:  # the request line never ended
                self.error = _UriTooLong(f"the URL is longer than {self.url_bytes} bytes")
        elif error is None and len(getattr(self, "request_uri", "")) > self.url_bytes:
            self.error = _UriTooLong(f"the URL is longer than {self.url_bytes} bytes")
            self.completed = True
        return consumed


class _ErrorTask(ErrorTask):
    """An error the server answers without the app: in the API's JSON shape, logged."""

    def execute(self) -> None:
        error = self.request.error
        code = int(error.code)
        if code >= 500:
            request_id = uuid.uuid4().hex[:12]
            log.error("the server failed to answer (request %s): %s", request_id, error.body)
            message = f"An unknown error occurred (request {request_id})."
        elif isinstance(error, (_UriTooLong, _RequestTimeout)):
            message = str(error.body)
        elif code == 431:
            limit = self.channel.adj.max_request_header_size
            message = f"the request's headers are larger than {limit} bytes"
        elif code == 413:
            limit = self.request.adj.max_request_body_size  # an upload's, or any body's
            message = f"the request body is larger than {limit} bytes"
        else:
            message = f"the request is malformed: {error.body}"
        body = _json_body(code, _TYPES.get(code, "invalid_data"), message)
        self.status = f"{code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        request = self.request
        method, path = getattr(request, "command", None), getattr(request, "path", None)
        line = f"{method} {path}" if request.headers_finished and method else "-"
        _log_request(f"{line} ({error.reason}, answered by the server)", code)


class _Channel(HTTPChannel):
    """One client connection; notes when the request it is receiving began."""

    error_task_class = _ErrorTask
    receiving_since: float | None = None

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.receiving_since = time.monotonic()
        done = bool(super().received(data))
        if self.request is None:
            self.receiving_since = None
        return done

    def time_out(self) -> None:
        """Answer 408 in place of the request that did not arrive in time (main thread)."""
        with self.requests_lock:
            request: Any = self.request  # type: ignore[has-type]
            if request is None or self.requests or self.will_close or self.close_when_flushed:
                return
            seconds = self.server.limits.request_seconds
            request.error = _RequestTimeout(
                f"the request did not arrive within {seconds:g} seconds"
            )
            request.completed = True
            self.request = None
            self.receiving_since = None
            self.requests.append(request)
            self.server.add_task(self)


class _Server(TcpWSGIServer):
    """waitress's TCP server, with a deadline on receiving each request."""

    channel_class = _Channel
    limits = ServerLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._trigger_lock = threading.Lock()
        self._trigger_closed = False
        super().__init__(*args, **kwargs)

    def pull_trigger(self) -> None:
        """Wake the loop, unless its trigger is closed.

        A shutdown, or a thread ending a request, may come after the loop has
        closed the trigger; its file descriptor may by then be another
        server's, so a late pull must not write at all (not merely fail).
        """
        with self._trigger_lock:
            if not self._trigger_closed:
                self.trigger.pull_trigger()

    def close_trigger(self) -> None:
        """Close the trigger; later pulls do nothing."""
        with self._trigger_lock:
            self._trigger_closed = True
            self.trigger.close()

    def maintenance(self, now: float) -> None:
        """waitress's check of idle connections: ``check_deadlines`` does it instead.

        waitress takes whole seconds; the limits may be fractions of one.
        """

    def check_deadlines(self) -> None:
        """Answer 408 to requests late to arrive; close keep-alive connections idle too long."""
        idle_since = time.time() - self.limits.idle_seconds  # waitress notes time.time()
        late_since = time.monotonic() - self.limits.request_seconds
        for channel in list(self.active_channels.values()):
            since = getattr(channel, "receiving_since", None)
            if since is not None:
                if since < late_since:
                    channel.time_out()
            elif (
                not channel.requests
                and not channel.total_outbufs_len
                and channel.last_activity < idle_since
            ):
                channel.will_close = True

    def busy(self) -> bool:
        """Whether a request accepted is still being answered."""
        dispatcher = self.task_dispatcher
        return bool(
            dispatcher.queue
            or dispatcher.active_count
            or any(c.requests or c.total_outbufs_len for c in self.active_channels.values())
        )


class _Dispatcher(ThreadedTaskDispatcher):
    def start_new_thread(self, target: Callable[[int], None], thread_no: int) -> None:
        thread = threading.Thread(
            target=target, name=f"batchjobs-http-{thread_no}", args=(thread_no,), daemon=True
        )
        thread.start()


# -- what the app sees ------------------------------------------------------------------------


class _Stream:
    """A stream's body: ends when the server stops, gives its slot back when closed."""

    def __init__(self, body: Iterable[bytes], release: Callable[[], None], stop: threading.Event):
        self._body, self._release, self._stop = body, release, stop
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            yield chunk
            if self._stop.is_set():
                return

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if not self._released:
                self._released = True
                self._release()


class _Front:
    """WSGI middleware: the stream cap and the access log."""

    def __init__(self, app: Callable[..., Any], streams: int, stop: threading.Event) -> None:
        self.app = app
        self.streams = streams
        self.stop = stop
        self._slots = threading.BoundedSemaphore(streams)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.monotonic()
        seen: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"] = status
            content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
            if content_type.startswith(STREAM_CONTENT_TYPE) and not seen.get("stream"):
                if not self._slots.acquire(blocking=False):
                    seen["refused"] = True
                    return lambda data: None
                seen["stream"] = True
            return start_response(status, headers, exc_info)

        body = self.app(environ, start)
        if seen.get("refused"):
            close = getattr(body, "close", None)
            if close is not None:
                close()
            message = f"{self.streams} streams are open, the most this server serves at once"
            payload = _json_body(503, "unavailable", message)
            seen["status"] = "503 Service Unavailable"
            start_response(
                seen["status"],
                [
                    ("Content-Type", "application/json"),
                    ("Retry-After", "5"),
                    ("Content-Length", str(len(payload))),
                ],
            )
            body = [payload]
        elif seen.get("stream"):
            body = _Stream(body, self._slots.release, self.stop)
        return _Logged(body, environ, seen, started)


class _Logged:
    """A response body that logs its request's line once it is closed."""

    def __init__(
        self, body: Iterable[bytes], environ: dict[str, Any], seen: dict[str, Any], started: float
    ):
        self._body, self._environ, self._seen, self._started = body, environ, seen, started

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            env = self._environ
            query = env.get("QUERY_STRING")
            target = env.get("PATH_INFO", "") + (f"?{query}" if query else "")
            status = str(self._seen.get("status", "-")).split(" ", 1)[0]
            _log_request(f"{env.get('REQUEST_METHOD') or '-'} {target}", status)


# A request line is the client's text: escaped, it can carry no terminal codes into a log.
_CONTROL_CHARACTERS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
#: The longest part of a request line a log line quotes.
_LOGGED_CHARS = 500


# A download link downloads by itself (a presigned URL): its token stays out of the log.
_DOWNLOAD_TOKEN = re.compile(rf"({re.escape(UPLOADS_PREFIX)}/download/)[^?\s]+")


def _log_request(line: str, status: object) -> None:
    """One line per request: ``METHOD PATH STATUS``, escaped and cut to a sane length,
    a download link's token left out."""
    line = _DOWNLOAD_TOKEN.sub(r"\1<token>", line)
    if len(line) > _LOGGED_CHARS:
        line = f"{line[:_LOGGED_CHARS]}… ({len(line)} characters)"
    log.info("%s %s", line.translate(_CONTROL_CHARACTERS), status)


# -- the server -------------------------------------------------------------------------------


class AdminServer:
    """A WSGI app on waitress, within ``ServerLimits``; stopped from another thread.

    >>> server = AdminServer(create_app(jobs, tokens=tokens), port=0)
    >>> threading.Thread(target=server.serve_forever).start()
    >>> server.url
    'http://127.0.0.1:40213'
    >>> server.shutdown()          # stop listening, let requests in progress finish

    Binding happens here: ``OSError`` if the address is taken or unknown.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        threads: int | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        limits = limits or ServerLimits()
        if threads is not None:
            limits = ServerLimits(**{**limits.__dict__, "threads": threads})
        self.limits = limits
        self.host = host
        self._stop = threading.Event()
        self._serving = threading.Event()
        self._done = threading.Event()
        self._grace = SHUTDOWN_GRACE
        self._answered = True
        self._map: dict[int, Any] = {}
        adjustments = Adjustments(
            host=host,
            port=port,
            threads=limits.threads + limits.streams,
            connection_limit=limits.connections,
            # Deadlines are check_deadlines' (waitress's settings take whole seconds).
            channel_timeout=_NEVER,
            cleanup_interval=_NEVER,
            asyncore_use_poll=True,  # select() stops at 1,024 sockets
            max_request_header_size=limits.header_bytes,
            max_request_body_size=limits.body_bytes,
            ident="batchjobs",
        )
        self._dispatcher = _Dispatcher()
        parser = type(
            "_Parser",
            (_Parser,),
            {"url_bytes": limits.url_bytes, "upload_bytes": limits.upload_bytes},
        )
        channel = type("_Channel", (_Channel,), {"parser_class": parser})
        server_class = type("_Server", (_Server,), {"channel_class": channel, "limits": limits})
        try:
            self._server = server_class(
                _Front(app, limits.streams, self._stop),
                map=self._map,
                dispatcher=self._dispatcher,
                adj=adjustments,
                sockinfo=adjustments.listen[0],
            )
        except BaseException:
            wasyncore.close_all(self._map)  # the socket that could not bind, the trigger
            raise
        self._dispatcher.set_thread_count(adjustments.threads)

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose when given 0)."""
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:9000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Answer requests until ``shutdown``; then let those accepted finish."""
        self._serving.set()
        server = self._server
        try:
            checked = time.monotonic()
            while not self._stop.is_set():
                wasyncore.loop(timeout=_TICK, map=self._map, use_poll=True, count=1)
                if time.monotonic() - checked >= _TICK:
                    checked = time.monotonic()
                    server.check_deadlines()
            server.accepting = False
            # The listening socket only (waitress's close() also closes the trigger
            # that threads finishing a request pull): new clients are refused.
            wasyncore.dispatcher.close(server)
            deadline = time.monotonic() + self._grace
            while server.busy() and time.monotonic() < deadline:
                wasyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)
            self._answered = not server.busy()
        finally:
            self._close()

    def _close(self) -> None:
        # Threads first: a thread that ends a request pulls the trigger, closed with the map.
        self._dispatcher.shutdown(cancel_pending=True, timeout=1)
        self._server.close_trigger()
        wasyncore.close_all(self._map)
        self._done.set()

    def shutdown(self, grace: float = SHUTDOWN_GRACE) -> bool:
        """Stop accepting requests; wait up to ``grace`` seconds for those accepted.

        Streams end at their next chunk. Returns ``False`` if some requests
        were still unanswered when the grace ran out.
        """
        self._grace = grace
        self._stop.set()
        if not self._serving.is_set():
            self._close()
            return True
        self._server.pull_trigger()
        self._done.wait(grace + 5)
        return self._answered
