"""The server behind ``batchjobs serve`` under hostile clients: real sockets, on loopback only.

Every probe is bounded in clients, bytes and seconds, and ends by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Blueprint, Flask, Response

from batchjobs import BatchJobs
from batchjobs.http import STREAM_CONTENT_TYPE, AdminServer, ServerLimits, create_app
from batchjobs.limits import MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_URL_BYTES

TOKENS = {"tok-1": "usr_1"}
AUTH = b"Authorization: Bearer tok-1\r\n"
URL = "/admin/batch-jobs"


def stream_routes() -> Blueprint:
    """A route that streams server-sent events until the client or the server stops it."""
    routes = Blueprint("streams", __name__)

    @routes.get("/test/stream")
    def stream() -> Response:
        def events() -> Iterator[str]:
            n = 0
            while True:
                yield f"data: {n}\n\n"
                n += 1
                time.sleep(0.05)

        return Response(events(), mimetype=STREAM_CONTENT_TYPE)

    return routes


@contextmanager
def serving(jobs: BatchJobs, **limits: Any) -> Iterator[AdminServer]:
    app: Flask = create_app(jobs, tokens=TOKENS)
    app.register_blueprint(stream_routes())
    server = AdminServer(app, port=0, limits=ServerLimits(**limits))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server
    finally:
        assert server.shutdown(grace=5) is True
        thread.join(timeout=10)
        assert not thread.is_alive()


def connect(server: AdminServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names) and the body of its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def exchange(server: AdminServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` (the server may answer and close before it has all of it) and read."""
    with connect(server) as sock:
        # Answered and closed early, the answer is still there to read.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        return read_response(sock)


def error_of(status: int, body: bytes) -> tuple[int, str, str]:
    payload = json.loads(body)
    assert set(payload) == {"type", "message"}, payload
    return status, payload["type"], payload["message"]


def get(server: AdminServer, path: str = URL) -> tuple[int, float]:
    started = time.monotonic()
    request = urllib.request.Request(
        f"{server.url}{path}", headers={"Authorization": "Bearer tok-1"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return response.status, time.monotonic() - started


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends until it closes ``sock``; fails if still open after ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"still open after {seconds} s; received {data!r}")
    return data


# -- slow and idle clients ---------------------------------------------------------------------


@pytest.mark.slow
def test_fifty_slow_clients_and_fifty_idle_ones_leave_the_api_answering(jobs: BatchJobs) -> None:
    with serving(jobs) as server:
        idle = [connect(server) for _ in range(50)]
        slow = [connect(server) for _ in range(50)]
        header = b"GET " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        stop = threading.Event()
        sent = [0]

        def slowloris() -> None:
            # One byte per client every 0.1 s: a request that never ends.
            position = 0
            while not stop.wait(0.1) and position < len(header):
                for sock in slow:
                    sock.sendall(header[position : position + 1])
                    sent[0] += 1
                position += 1

        sender = threading.Thread(target=slowloris)
        sender.start()
        try:
            time.sleep(0.5)  # every slow client has begun its request
            timings = [get(server) for _ in range(10)]
        finally:
            stop.set()
            sender.join()
            for sock in idle + slow:
                sock.close()
        assert sent[0] >= 50 * 3
        assert all(status == 200 for status, _ in timings)
        assert max(seconds for _, seconds in timings) < 1.0, timings


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: a",  # headers that never end
        b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"a":\r\n',  # a chunked body that stalls
    ],
    ids=["headers", "short-body", "stalled-chunks"],
)
def test_a_request_that_does_not_arrive_in_time_is_answered_408_and_closed(
    jobs: BatchJobs, request_bytes: bytes
) -> None:
    with serving(jobs, request_seconds=0.5) as server, connect(server) as sock:
        started = time.monotonic()
        sock.sendall(request_bytes)
        data = closed_within(sock, 5)
        assert time.monotonic() - started >= 0.5
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].endswith(b"408 Request Timeout")
        assert error_of(408, body) == (
            408,
            "invalid_data",
            "the request did not arrive within 0.5 seconds",
        )
        assert jobs.list_and_count(limit=0)[1] == 0


def test_an_idle_keep_alive_connection_is_closed(jobs: BatchJobs) -> None:
    with serving(jobs, idle_seconds=0.5) as server, connect(server) as sock:
        sock.sendall(b"GET " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection") != "close"
        assert closed_within(sock, 5) == b""


# -- what the server answers by itself ---------------------------------------------------------


def chunked(body: bytes, size: int = 65536) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


POST = b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\n" + AUTH
JSON_TYPE = b"Content-Type: application/json\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (
            b"GET " + URL.encode() + b"/" + b"x" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            414,
            f"the URL is longer than {MAX_URL_BYTES} bytes",
        ),
        (
            b"GET " + URL.encode() + b"/" + b"x" * MAX_URL_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            414,
            f"the URL is longer than {MAX_URL_BYTES} bytes",
        ),
        (
            b"GET "
            + URL.encode()
            + b" HTTP/1.1\r\nAuthorization: "
            + b"a" * 1_000_000
            + b"\r\n\r\n",
            431,
            f"the request's headers are larger than {MAX_HEADER_BYTES} bytes",
        ),
        (
            POST + JSON_TYPE + b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),
            413,
            f"the request body is larger than {MAX_BODY_BYTES} bytes",
        ),
        (
            POST
            + JSON_TYPE
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + chunked(b'{"type": "uncounted", "context": {"x": "' + b"a" * MAX_BODY_BYTES + b'"}}'),
            413,
            f"the request body is larger than {MAX_BODY_BYTES} bytes",
        ),
        (
            POST + JSON_TYPE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            400,
            "the request is malformed: ",
        ),
        (b"\x00\x01 nonsense\r\n\r\n", 400, "the request is malformed: "),
    ],
    ids=["70kB-id", "long-url", "1MB-header", "content-length", "chunked", "bad-chunk", "garbage"],
)
def test_errors_the_server_answers_itself_are_in_our_shape(
    jobs: BatchJobs, request_bytes: bytes, status: int, message: str
) -> None:
    with serving(jobs) as server:
        answered, headers, body = exchange(server, request_bytes)
        assert headers["content-type"] == "application/json"
        code, type, text = error_of(answered, body)
        assert (code, type) == (status, "invalid_data")
        assert text.startswith(message), text
        assert get(server)[0] == 200  # and the server goes on
    assert jobs.list_and_count(limit=0)[1] == 0


def test_a_chunked_body_is_read_whole_and_created(jobs: BatchJobs) -> None:
    body = json.dumps({"type": "uncounted", "context": {"x": "a" * 200_000}}).encode()
    with serving(jobs) as server:
        status, _, answer = exchange(
            server, POST + JSON_TYPE + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, 7000)
        )
    assert status == 201
    assert jobs.retrieve(json.loads(answer)["batch_job"]["id"]).context == {"x": "a" * 200_000}


# -- streams -----------------------------------------------------------------------------------


def open_stream(server: AdminServer) -> tuple[socket.socket, int, bytes]:
    sock = connect(server)
    sock.sendall(b"GET /test/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or (b"data:" not in data and b"}" not in data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return sock, int(data.split(b" ", 2)[1]), data


def test_streams_are_capped_and_never_starve_the_api(jobs: BatchJobs) -> None:
    with serving(jobs, threads=2, streams=2) as server:
        first, status_1, _ = open_stream(server)
        second, status_2, _ = open_stream(server)
        assert (status_1, status_2) == (200, 200)
        third, status_3, refused = open_stream(server)
        third.close()
        assert status_3 == 503
        assert error_of(503, refused.partition(b"\r\n\r\n")[2]) == (
            503,
            "unavailable",
            "2 streams are open, the most this server serves at once",
        )
        # Both API threads are free: four requests at once all answer at once.
        timings: list[tuple[int, float]] = []
        clients = [threading.Thread(target=lambda: timings.append(get(server))) for _ in range(4)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        assert [status for status, _ in timings] == [200] * 4
        assert max(seconds for _, seconds in timings) < 1.0, timings
        first.close()  # its slot comes back once the server sees it gone
        deadline = time.monotonic() + 5
        while (reopened := open_stream(server))[1] != 200:
            reopened[0].close()
            assert time.monotonic() < deadline, "the closed stream's slot never came back"
            time.sleep(0.1)
        reopened[0].close()
    # The server stopped with a stream still open: the stream ended, the shutdown was clean.
    second.settimeout(5)
    while second.recv(65536):
        pass
    second.close()


def test_each_request_is_one_log_line(jobs: BatchJobs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batchjobs.http")
    with serving(jobs) as server:
        assert get(server, f"{URL}?limit=1")[0] == 200
        exchange(server, b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n")
        exchange(server, b"GET /\x1b[31mred HTTP/1.1\r\n\r\n")
        exchange(server, POST + b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1))
        exchange(server, b"GET /admin/uploads/download/s3cret.t0ken?x=1 HTTP/1.1\r\n\r\n")
    lines = [r.getMessage() for r in caplog.records if r.name == "batchjobs.http"]
    # A download link downloads by itself: its token is not logged.
    assert "GET /admin/uploads/download/<token>?x=1 404" in lines
    assert not [line for line in lines if "s3cret" in line]
    assert f"GET {URL}?limit=1 200" in lines
    assert "- (URI Too Long, answered by the server) 414" in lines
    assert "GET /\\x1b[31mred 404" in lines  # a client's terminal codes, escaped
    assert f"POST {URL} (Request Entity Too Large, answered by the server) 413" in lines


@pytest.mark.parametrize("name", ["body_bytes", "upload_bytes"])
@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_body_limits_are_non_negative_integers(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a non-negative integer, not {value!r}"):
        ServerLimits(**{name: value})


def test_servers_started_and_stopped_one_after_another_stop_cleanly(jobs: BatchJobs) -> None:
    # A shutdown may wake a loop that has already closed its trigger (it saw the stop
    # first); a second shutdown is the same late wake-up, every time. Its descriptor may
    # be the next server's by then: the late pull must neither fail nor write there.
    app = create_app(jobs, tokens=TOKENS)
    for _ in range(20):
        server = AdminServer(app, port=0)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        assert server.shutdown(grace=1) is True
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert server.shutdown(grace=1) is True
    with serving(jobs) as after:
        assert get(after, f"{URL}?limit=1")[0] == 200
