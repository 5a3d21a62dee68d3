"""What batchjobs accepts, as numbers in one table, and the checks that apply them.

The library (``jobs.create``, ``jobs.update``, ``jobs.list_and_count``,
``jobs.retrieve``), the command line and the HTTP API all check their input
here, so each refuses what the others would, and always before anything is
written. Pure: no I/O.

===================  ==========  =============================================
limit                value       what goes past it
===================  ==========  =============================================
``MAX_JSON_DEPTH``   64          a context (or result) nested deeper: refused
``MAX_JSON_BYTES``   512 KiB     a context larger as compact JSON: refused
``MAX_LIST_LIMIT``   1,000       a page of ``list_and_count``: refused, with the
                                 cap in the message
``MAX_ID_LENGTH``    32          an id longer than ``batch_`` + a ULID: not
                                 found, without a look in the store
``MAX_INTEGER``      2**63 - 1   an offset, a count, a CLI integer: refused
``MAX_KEY_LENGTH``   255         a job's idempotency key (``create(key=)``):
                                 refused
``MAX_BODY_BYTES``   1 MiB       an HTTP request body: 413
``MAX_UPLOAD_BYTES`` 100 MiB     the body of an upload (``POST /admin/uploads``):
                                 413
``MAX_URL_BYTES``    8 KiB       an HTTP request line: 414
``MAX_HEADER_BYTES`` 32 KiB      an HTTP request line and headers: 431
``REQUEST_SECONDS``  30          receiving one HTTP request: 408, closed
``IDLE_SECONDS``     60          an idle keep-alive HTTP connection: closed
===================  ==========  =============================================

The HTTP numbers are the defaults of ``batchjobs.http.ServerLimits``, which
``batchjobs serve`` takes from its options.

Numbers must be finite: ``NaN``, ``Infinity`` and ``1e400`` are refused on
the way in, and every JSON the library writes is encoded with
``allow_nan=False``, so nothing it stores or sends is JSON that
``JSON.parse`` rejects.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidDataError

__all__ = [
    "IDLE_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_ID_LENGTH",
    "MAX_INTEGER",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_KEY_LENGTH",
    "MAX_LIST_LIMIT",
    "MAX_UPLOAD_BYTES",
    "MAX_URL_BYTES",
    "REQUEST_SECONDS",
    "check_json_object",
    "check_key",
    "check_text",
    "dumps",
    "parse_json",
]

#: How deep a context may nest objects and arrays (the context itself is level 1).
MAX_JSON_DEPTH = 64
#: How large a context may be, as compact JSON text (UTF-8 bytes).
MAX_JSON_BYTES = 512 * 1024
#: The largest page ``list_and_count`` returns (Medusa's admin clients ask for at most this).
MAX_LIST_LIMIT = 1000
#: The length of a batch job id: ``batch_`` and a 26-character ULID.
MAX_ID_LENGTH = len("batch_") + 26
#: The largest integer stored or taken as an option: SQLite's (a signed 64-bit integer).
MAX_INTEGER = 2**63 - 1
#: The longest idempotency key of a job, in characters (as Stripe's).
MAX_KEY_LENGTH = 255

#: The largest HTTP request body, in bytes (a request's JSON, with its context in it).
MAX_BODY_BYTES = 1024 * 1024
#: The largest body of an upload (``POST /admin/uploads``: its files, multipart), in bytes.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
#: The longest HTTP request line (method, URL with its query, version), in bytes.
MAX_URL_BYTES = 8 * 1024
#: The largest HTTP request line and headers together, in bytes.
MAX_HEADER_BYTES = 32 * 1024
#: Seconds an HTTP client may take to send one whole request (headers and body).
REQUEST_SECONDS = 30.0
#: Seconds an HTTP keep-alive connection may wait for its next request.
IDLE_SECONDS = 60.0

#: Compact JSON that refuses NaN and infinities: what the library writes and sends.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
#: Longest piece of a value's location quoted in a message.
_WHERE_CHARS = 80
_SCALARS = (str, int, float, bool, type(None))


def dumps(value: Any) -> str:
    """``value`` as compact JSON; ``ValueError`` for NaN or an infinity, never ``Infinity``."""
    return _ENCODER.encode(value)


def check_text(name: str, value: Any) -> str:
    """``value`` if it is a string that UTF-8 can encode (no lone surrogates).

    A command line argument that is not valid UTF-8 arrives as such a string.
    """
    if not isinstance(value, str):
        raise InvalidDataError(f"{name} must be a string, not {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidDataError(f"{name} is not valid UTF-8 text") from None
    return value


def check_key(value: Any) -> str:
    """``value`` if it is a job's idempotency key: text, 1 to ``MAX_KEY_LENGTH`` characters."""
    check_text("key", value)
    if not value or len(value) > MAX_KEY_LENGTH:
        raise InvalidDataError(f"key must be 1 to {MAX_KEY_LENGTH} characters, not {len(value)}")
    return str(value)


def _where(path: tuple[Any, ...]) -> str:
    """A location in a value (``context.words[3]``), from a ``(parent, key)`` chain."""
    keys: list[Any] = []
    while len(path) == 2:
        path, key = path
        keys.append(key)
    text = str(path[0])
    for key in reversed(keys):
        if isinstance(key, int):
            text += f"[{key}]"
        elif key.isidentifier():
            text += f".{key}"
        else:
            text += f"[{json.dumps(key)}]"
    return text if len(text) <= _WHERE_CHARS else text[: _WHERE_CHARS - 1] + "…"


def _check_tree(name: str, value: Any) -> None:
    """Depth, keys, finite numbers, UTF-8 strings and JSON types, without recursion.

    A recursive walk (or ``json.dumps``) fails with ``RecursionError`` near a
    thousand levels; this one fails with the limit, whatever the depth.
    """
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, (name,))]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            children: Any = item.items()
        elif isinstance(item, (list, tuple)):
            children = enumerate(item)
        else:
            children = None
        if children is not None:
            if depth > MAX_JSON_DEPTH:
                raise InvalidDataError(
                    f"{name} is nested more than {MAX_JSON_DEPTH} levels deep (at {_where(path)})"
                )
            for key, child in children:
                if isinstance(key, str):
                    if not key.isascii():
                        check_text(f"a key in {_where(path)}", key)
                elif not isinstance(item, (list, tuple)):
                    raise InvalidDataError(
                        f"{_where(path)} has a key that is not a string: {key!r}"[:200]
                    )
                kind = type(child)
                if kind is str:
                    if not child.isascii():
                        check_text(_where((path, key)), child)
                elif kind is float:
                    if not math.isfinite(child):
                        raise InvalidDataError(
                            f"{_where((path, key))} is {child!r}: numbers must be finite"
                        )
                elif kind not in (int, bool, type(None)):
                    stack.append((child, depth + 1, (path, key)))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidDataError(f"{_where(path)} is {item!r}: numbers must be finite")
        elif isinstance(item, str):
            check_text(_where(path), item)
        elif not isinstance(item, _SCALARS):
            raise InvalidDataError(
                f"{_where(path)} is of type {type(item).__name__}, which JSON cannot hold"
            )


def check_json_object(name: str, value: Any, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """``value`` as a plain dict, checked against the limits; ``InvalidDataError`` naming ``name``.

    A JSON object (a ``dict`` with string keys) of JSON values, nested at most
    ``MAX_JSON_DEPTH`` deep, with finite numbers and UTF-8 strings, at most
    ``max_bytes`` as compact JSON.
    """
    if not isinstance(value, dict):
        raise InvalidDataError(f"{name} must be a JSON object, not {type(value).__name__}")
    _check_tree(name, value)
    try:
        size = len(_ENCODER.encode(value))
    except (TypeError, ValueError) as error:  # pragma: no cover - the walk refuses these first
        raise InvalidDataError(f"{name} cannot be JSON: {error}") from None
    if size > max_bytes:
        raise InvalidDataError(f"{name} is {size} bytes as JSON; the limit is {max_bytes}")
    return dict(value)


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not valid JSON")


def parse_json(name: str, text: str | bytes, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Strict JSON text to a value; ``InvalidDataError`` naming ``name`` for anything else.

    Refuses, before parsing, text over ``max_bytes``; then ``NaN`` and
    ``Infinity`` (not JSON) and nesting deeper than Python's parser goes. The
    parsed value is not checked further: ``check_json_object`` does that.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidDataError(f"{name} is {size} bytes; the limit is {max_bytes}")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidDataError(f"{name} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as error:  # UnicodeDecodeError and too-long integers included
        raise InvalidDataError(f"{name} is not valid JSON: {error}") from None
