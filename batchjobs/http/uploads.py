"""Medusa's upload routes: files into the file store, and signed links to read them.

Routes::

    POST   /admin/uploads                    multipart, field "files" (one or more)
                                             -> {"uploads": [{"url", "key"}]}
    POST   /admin/uploads/download-url       {"file_key"} -> {"download_url"}
    GET    /admin/uploads/download/<token>   the file, streamed, as an attachment
    DELETE /admin/uploads                    {"file_key"} -> {"id", "object": "file",
                                                               "deleted": true}

A file belongs to the user who uploaded it, or who created the job that wrote
it (an export): a caller uploads, links, downloads and deletes only its own
files (``not_allowed`` otherwise), and its jobs read only those. An upload's
``key`` is what a csv-import's ``context.file_key`` takes; its ``url`` is a
download link.

A download link is signed (HMAC, with ``itsdangerous``) over the file's key,
the user it was made for and when it expires (``UploadSettings.link_seconds``
after it was made, an hour by default): a link altered in any way is not
found, an expired one is refused. Like any presigned URL it is a capability:
the link alone lets whoever holds it download the file until it expires, with
no credentials (a browser opens it in a new window, as Medusa's admin does),
so it is a secret. A request that does carry credentials must name the link's
user (``not_allowed`` otherwise), and the file must still be that user's when
the link is followed. The answer is never cached (``Cache-Control: private,
no-store``) and the page it opens sends no ``Referer`` (``Referrer-Policy:
no-referrer``). The signing key is ``UploadSettings.secret_key``; left out, a
random one is drawn, and links made by this app work only in this process.

The body of an upload may be at most ``UploadSettings.max_bytes`` (100 MiB by
default; ``batchjobs.limits.MAX_UPLOAD_BYTES``): past it, 413 and a JSON error,
and nothing is stored.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from flask import Blueprint, Response, request, send_file, url_for
from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.exceptions import RequestEntityTooLarge

from ..app import BatchJobs
from ..errors import InvalidDataError, NotAllowedError, NotFoundError
from ..files import NOT_OWNER_MESSAGE, FileStore
from ..limits import MAX_BODY_BYTES, MAX_UPLOAD_BYTES, dumps, parse_json
from ..models import utcnow

__all__ = [
    "DEFAULT_LINK_SECONDS",
    "DOWNLOAD_ENDPOINT",
    "UPLOADS_PREFIX",
    "DownloadLinks",
    "UploadSettings",
    "add_upload_routes",
]

log = logging.getLogger("batchjobs.http")

#: Where the routes are.
UPLOADS_PREFIX = "/admin/uploads"
#: How long a download link works (Medusa's S3 file service: an hour).
DEFAULT_LINK_SECONDS = 3600.0
#: The multipart field that holds the files (Medusa's admin sends "files").
FILES_FIELD = "files"
#: The endpoint (in the blueprint) of ``GET .../download/<token>``: the one route whose
#: URL carries its own authority, so that a caller is optional there.
DOWNLOAD_ENDPOINT = "download_file"
#: Keeps a link's signature apart from anything else signed with the same key.
_SALT = "batchjobs.http.download-link"
LINK_NOT_FOUND_MESSAGE = "Download link not found: it is not one this server made, or was altered"


@dataclass(frozen=True)
class UploadSettings:
    """How the upload routes behave; every field has a default.

    >>> create_app(jobs, tokens=tokens, uploads=UploadSettings(max_bytes=10 * 2**20,
    ...                                                        secret_key=os.environ["KEY"]))
    """

    #: The largest body of an upload, in bytes: 413 past it.
    max_bytes: int = MAX_UPLOAD_BYTES
    #: Seconds a download link works once made.
    link_seconds: float = DEFAULT_LINK_SECONDS
    #: Signs download links. ``None``: a random key, so that links work only in
    #: the process that made them; give one to share links across processes or
    #: restarts (keep it secret: whoever has it can make links).
    secret_key: str | bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_bytes, int) or isinstance(self.max_bytes, bool):
            raise ValueError(f"max_bytes must be a positive integer, not {self.max_bytes!r}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, not {self.max_bytes!r}")
        seconds = self.link_seconds
        if not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
            raise ValueError(f"link_seconds must be a positive number, not {seconds!r}")
        if self.secret_key is not None and (
            not isinstance(self.secret_key, (str, bytes)) or len(self.secret_key) < 16
        ):
            raise ValueError("secret_key must be a string or bytes of 16 characters or more")


class DownloadLinks:
    """Tokens naming a file and the user they are for, signed, expiring ``seconds`` after."""

    def __init__(self, secret_key: str | bytes, seconds: float) -> None:
        self._signer = URLSafeSerializer(secret_key, salt=_SALT)
        self.seconds = seconds

    def make(self, key: str, user: str, now: datetime) -> str:
        """A token for ``user`` to read ``key`` until ``seconds`` after ``now``."""
        expires = math.ceil(now.timestamp() + self.seconds)
        token: str = self._signer.dumps({"key": key, "user": user, "expires": expires})
        return token

    def read(self, token: str, now: datetime) -> tuple[str, str]:
        """The key and the user of ``token``.

        ``NotFoundError`` if it was not signed with this key (or was altered),
        ``NotAllowedError`` once it has expired.
        """
        try:
            data = self._signer.loads(token)
        except BadSignature:
            raise NotFoundError(LINK_NOT_FOUND_MESSAGE) from None
        key, user, expires = data["key"], data["user"], data["expires"]
        if now.timestamp() >= expires:
            when = datetime.fromtimestamp(expires, timezone.utc).isoformat()
            raise NotAllowedError(f"This download link expired at {when}; ask for a new one")
        return key, user


def _json(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status=status, mimetype="application/json")


def _file_key_body() -> str:
    """The ``file_key`` of a JSON body ``{"file_key": "..."}``, checked."""
    if not request.is_json:
        raise InvalidDataError("the request body must be sent as Content-Type: application/json")
    body = parse_json("the request body", request.get_data(cache=True), max_bytes=MAX_BODY_BYTES)
    if not isinstance(body, dict) or set(body) != {"file_key"}:
        raise InvalidDataError('the request body must be {"file_key": "<key>"}')
    return FileStore.check_key(body["file_key"])


def _not_found(key: str) -> NotFoundError:
    return NotFoundError(f"File with key {key} was not found")


def add_upload_routes(
    api: Blueprint,
    jobs: BatchJobs,
    caller: Callable[[], str],
    settings: UploadSettings,
    *,
    sender: Callable[[], str | None],
) -> None:
    """Add the upload routes to ``api``, whose requests ``caller()`` names the user of.

    ``api`` must serve ``DOWNLOAD_ENDPOINT`` to requests without credentials
    too (a signed link is enough there); ``sender()`` names the user of the
    credentials a request carries, ``None`` when it carries none.
    """
    links = DownloadLinks(settings.secret_key or secrets.token_bytes(32), settings.link_seconds)

    def files() -> FileStore:
        return jobs.files.for_user(caller())

    def link(key: str) -> str:
        token = links.make(key, caller(), utcnow())
        return url_for(f"{api.name}.{DOWNLOAD_ENDPOINT}", token=token, _external=True)

    @api.post(UPLOADS_PREFIX)
    def upload_files() -> Response:
        request.max_content_length = settings.max_bytes
        try:
            given = request.files.getlist(FILES_FIELD)
        except RequestEntityTooLarge:
            message = f"the upload is larger than {settings.max_bytes} bytes, the most it may be"
            return _json({"type": "invalid_data", "message": message}, 413)
        if not given:
            raise InvalidDataError(
                f"send the files as multipart/form-data, in a field named {FILES_FIELD}"
            )
        mine = files()
        keys: list[str] = []
        try:
            for upload in given:
                keys.append(mine.upload(upload.filename, upload.stream))
        except BaseException as error:
            for key in keys:  # all of them or none
                try:
                    mine.delete(key)
                except Exception as failure:  # the upload's own error is the answer
                    log.error(
                        "could not remove %s after a failed upload (%r): %r", key, error, failure
                    )
            raise
        return _json({"uploads": [{"url": link(key), "key": key} for key in keys]})

    @api.post(f"{UPLOADS_PREFIX}/download-url")
    def make_download_url() -> Response:
        key = _file_key_body()
        try:
            files().size(key)  # there, and the caller's
        except FileNotFoundError:
            raise _not_found(key) from None
        return _json({"download_url": link(key)})

    @api.get(f"{UPLOADS_PREFIX}/download/<token>", endpoint=DOWNLOAD_ENDPOINT)
    def download_file(token: str) -> Response:
        # The signed link authorizes the download by itself (a presigned URL);
        # credentials, when sent, must be its user's.
        key, owner = links.read(token, utcnow())
        credited = sender()
        if credited is not None and credited != owner:
            raise NotAllowedError(NOT_OWNER_MESSAGE)
        try:
            # As the user the link was made for: still theirs, now.
            source: IO[bytes] = jobs.files.for_user(owner).open_read(key)
        except FileNotFoundError:
            raise _not_found(key) from None
        try:
            size = os.fstat(source.fileno()).st_size
            response = send_file(
                source, as_attachment=True, download_name=key.rsplit("/", 1)[-1], conditional=False
            )
        except BaseException:
            source.close()
            raise
        response.content_length = size
        # A link is a secret: kept out of caches, and out of any Referer sent onwards.
        response.headers["Cache-Control"] = "private, no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @api.delete(UPLOADS_PREFIX)
    def delete_file() -> Response:
        key = _file_key_body()
        if not files().delete(key):
            raise _not_found(key)
        return _json({"id": key, "object": "file", "deleted": True})
