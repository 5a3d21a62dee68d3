"""The admin HTTP API (Medusa's routes and shapes) and the server behind ``batchjobs serve``."""

from .api import (
    DEFAULT_HOST,
    DEFAULT_LIMIT,
    DEFAULT_PORT,
    DEFAULT_THREADS,
    MAX_BODY_BYTES,
    NOT_OWNER_MESSAGE,
    PREFIX,
    AdminServer,
    Authenticate,
    create_app,
    create_blueprint,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_LIMIT",
    "DEFAULT_PORT",
    "DEFAULT_THREADS",
    "MAX_BODY_BYTES",
    "NOT_OWNER_MESSAGE",
    "PREFIX",
    "AdminServer",
    "Authenticate",
    "create_app",
    "create_blueprint",
]
