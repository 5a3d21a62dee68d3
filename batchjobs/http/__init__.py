"""The admin HTTP API (Medusa's routes and shapes) and the server behind ``batchjobs serve``."""

from .api import (
    DEFAULT_LIMIT,
    MAX_BODY_BYTES,
    NOT_OWNER_MESSAGE,
    PREFIX,
    Authenticate,
    create_app,
    create_blueprint,
)
from .openapi import OPENAPI_PATH, openapi_document
from .server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_STREAMS,
    DEFAULT_THREADS,
    STREAM_CONTENT_TYPE,
    AdminServer,
    ServerLimits,
)
from .uploads import DEFAULT_LINK_SECONDS, UPLOADS_PREFIX, UploadSettings

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_LIMIT",
    "DEFAULT_LINK_SECONDS",
    "DEFAULT_PORT",
    "DEFAULT_STREAMS",
    "DEFAULT_THREADS",
    "MAX_BODY_BYTES",
    "NOT_OWNER_MESSAGE",
    "OPENAPI_PATH",
    "PREFIX",
    "STREAM_CONTENT_TYPE",
    "UPLOADS_PREFIX",
    "AdminServer",
    "Authenticate",
    "ServerLimits",
    "UploadSettings",
    "create_app",
    "create_blueprint",
    "openapi_document",
]
