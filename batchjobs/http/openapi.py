"""The OpenAPI 3.1 description of the admin API, served at ``/admin/openapi.json``.

Written by hand, kept true by the tests: they compare its paths with the
app's routes and fuzz the app against it (schemathesis), checking that
every answer matches it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from ..limits import MAX_ID_LENGTH, MAX_INTEGER, MAX_LIST_LIMIT, MAX_UPLOAD_BYTES
from ..models import TIMESTAMP_FIELDS, Status

__all__ = ["OPENAPI_PATH", "openapi_document"]

OPENAPI_PATH = "/admin/openapi.json"
_PREFIX = "/admin/batch-jobs"
_UPLOADS = "/admin/uploads"
_DATE_OPERATORS = ("gt", "gte", "lt", "lte")

_ERROR = {
    "type": "object",
    "description": "Every error: a Medusa error type and a message for people.",
    "required": ["type", "message"],
    "additionalProperties": False,
    "properties": {
        "type": {
            "type": "string",
            "enum": [
                "events_pruned",
                "invalid_data",
                "not_allowed",
                "not_found",
                "unauthorized",
                "unavailable",
                "unknown_error",
            ],
        },
        "message": {"type": "string"},
    },
}

_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

_BATCH_JOB = {
    "type": "object",
    "required": [
        "id",
        "type",
        "status",
        "created_by",
        "dry_run",
        "context",
        "result",
        *TIMESTAMP_FIELDS,
    ],
    "properties": {
        "id": {"type": "string", "pattern": "^batch_[0-9A-Z]{26}$"},
        "type": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in Status]},
        "created_by": {"type": ["string", "null"]},
        "dry_run": {"type": "boolean"},
        "context": {"type": "object"},
        "result": {"type": "object"},
        **{name: _NULLABLE_TIME for name in TIMESTAMP_FIELDS},
    },
}

_ONE_JOB = {
    "type": "object",
    "required": ["batch_job"],
    "additionalProperties": False,
    "properties": {"batch_job": {"$ref": "#/components/schemas/BatchJob"}},
}

_PAGE = {
    "type": "object",
    "required": ["batch_jobs", "count", "offset", "limit"],
    "additionalProperties": False,
    "properties": {
        "batch_jobs": {"type": "array", "items": {"$ref": "#/components/schemas/ListedBatchJob"}},
        "count": {"type": "integer", "minimum": 0},
        "offset": {"type": "integer", "minimum": 0},
        "limit": {"type": "integer", "minimum": 0, "maximum": MAX_LIST_LIMIT},
    },
}

_EVENTS = {
    "type": "object",
    "required": ["events", "next_after", "limit"],
    "additionalProperties": False,
    "properties": {
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["seq", "event", "at", "batch_job"],
                "additionalProperties": False,
                "properties": {
                    "seq": {"type": "integer", "minimum": 1},
                    "event": {"type": "string"},
                    "at": {"type": "string", "format": "date-time"},
                    "batch_job": {"$ref": "#/components/schemas/BatchJob"},
                },
            },
        },
        "next_after": {"type": "integer", "minimum": 0},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
}

_CREATE = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "description": "A registered batch type."},
        "context": {
            "type": ["object", "null"],
            "description": "The strategy's configuration; at most 64 levels deep, 512 KiB.",
        },
        "dry_run": {"type": "boolean", "default": False},
        "key": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": 255,
            "description": "An idempotency key: if a job of the caller has it, that job is "
            "answered (201, as its create was) and nothing is created.",
        },
    },
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ERRORS = {"default": {"description": "An error", "content": _json_content(_ref("Error"))}}
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": f"A batch job id (batch_ and a ULID, {MAX_ID_LENGTH} characters).",
    # Not "events": GET /admin/batch-jobs/events is the events route.
    "schema": {"type": "string", "pattern": "^batch_"},
}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _list_parameters() -> list[dict[str, Any]]:
    parameters = [
        _query(
            "limit",
            {"type": "integer", "minimum": 0, "maximum": MAX_LIST_LIMIT, "default": 10},
            f"Page size, at most {MAX_LIST_LIMIT}.",
        ),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER, "default": 0}),
        _query(
            "order",
            {"type": "string", "default": "-created_at"},
            "A field to order by; a leading - for descending.",
        ),
        _query("expand", {"type": "string"}, "Accepted for Medusa's clients; ignored."),
        _query(
            "fields",
            {"type": "string"},
            "Comma-separated record fields: each job holds only those, and its id.",
        ),
    ]
    for name in ("id", "type", "status"):
        values: dict[str, Any] = {"type": "string"}
        if name == "status":
            values = {"type": "string", "enum": [s.value for s in Status]}
        parameters.append(_query(name, values))
        parameters.append(
            {
                "name": f"{name}[]",
                "in": "query",
                "schema": {"type": "array", "items": values},
                "style": "form",
                "explode": True,
            }
        )
    for field in TIMESTAMP_FIELDS:
        parameters.append(_query(field, {"type": "string", "enum": ["null"]}, "Only if null."))
        for operator in _DATE_OPERATORS:
            parameters.append(
                _query(f"{field}[{operator}]", {"type": "string", "format": "date-time"})
            )
    return parameters


_FILE_KEY = {
    "type": "object",
    "required": ["file_key"],
    "additionalProperties": False,
    "properties": {"file_key": {"type": "string", "description": "A key of the file store."}},
}
_UPLOADED = {
    "type": "object",
    "required": ["uploads"],
    "additionalProperties": False,
    "properties": {
        "uploads": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["url", "key"],
                "additionalProperties": False,
                "properties": {
                    "url": {"type": "string", "description": "A download link (expires)."},
                    "key": {"type": "string", "description": "For context.file_key."},
                },
            },
        }
    },
}
_UPLOAD_PATHS: dict[str, Any] = {
    _UPLOADS: {
        "post": {
            "operationId": "upload",
            "summary": "Store files, owned by the caller: the body at most "
            f"{MAX_UPLOAD_BYTES} bytes by default (413 past it).",
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["files"],
                            "properties": {
                                "files": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                }
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "Stored", "content": _json_content(_ref("Uploaded"))},
                **_ERRORS,
            },
        },
        "delete": {
            "operationId": "deleteUpload",
            "summary": "Delete one of the caller's files.",
            "requestBody": {"required": True, "content": _json_content(_ref("FileKey"))},
            "responses": {
                "200": {
                    "description": "Deleted",
                    "content": _json_content(
                        {
                            "type": "object",
                            "required": ["id", "object", "deleted"],
                            "additionalProperties": False,
                            "properties": {
                                "id": {"type": "string"},
                                "object": {"const": "file"},
                                "deleted": {"const": True},
                            },
                        }
                    ),
                },
                **_ERRORS,
            },
        },
    },
    f"{_UPLOADS}/download-url": {
        "post": {
            "operationId": "makeDownloadUrl",
            "summary": "A signed link to one of the caller's files, which downloads it "
            "until it expires (an hour by default), with or without credentials: a secret.",
            "requestBody": {"required": True, "content": _json_content(_ref("FileKey"))},
            "responses": {
                "200": {
                    "description": "The link",
                    "content": _json_content(
                        {
                            "type": "object",
                            "required": ["download_url"],
                            "additionalProperties": False,
                            "properties": {"download_url": {"type": "string"}},
                        }
                    ),
                },
                **_ERRORS,
            },
        }
    },
    f"{_UPLOADS}/download/{{token}}": {
        "get": {
            "operationId": "download",
            "summary": "The file of a download link, as an attachment.",
            "description": "The signed link authorizes the download by itself (a presigned "
            "URL): credentials are optional, and if sent must name the user the link was "
            "made for (not_allowed otherwise). An altered link is not_found, an expired "
            "one not_allowed, and so is a file no longer that user's.",
            # No credentials, or the link's user's.
            "security": [{}, {"bearer": []}],
            "parameters": [
                {
                    "name": "token",
                    "in": "path",
                    "required": True,
                    "description": "The signed part of a download_url.",
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "200": {
                    "description": "The file",
                    "headers": {
                        "Content-Disposition": {"required": True, "schema": {"type": "string"}},
                        "Cache-Control": {
                            "required": True,
                            "schema": {"const": "private, no-store"},
                        },
                        "Referrer-Policy": {"required": True, "schema": {"const": "no-referrer"}},
                    },
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                **_ERRORS,
            },
        }
    },
}


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "batchjobs admin API",
        "version": "1",
        "description": "Medusa's batch-job and upload routes. Each caller sees and changes "
        "only its own jobs and files.",
    },
    "security": [{"bearer": []}],
    "paths": {
        _PREFIX: {
            "post": {
                "operationId": "createBatchJob",
                "summary": "Create a batch job, created_by the caller.",
                "requestBody": {"required": True, "content": _json_content(_ref("CreateBatchJob"))},
                "responses": {
                    "201": {
                        "description": "Created",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": _json_content(_ref("OneBatchJob")),
                    },
                    **_ERRORS,
                },
            },
            "get": {
                "operationId": "listBatchJobs",
                "summary": "A page of the caller's batch jobs, and how many match.",
                "parameters": _list_parameters(),
                "responses": {
                    "200": {"description": "A page", "content": _json_content(_ref("Page"))},
                    **_ERRORS,
                },
            },
        },
        f"{_PREFIX}/events": {
            "get": {
                "operationId": "listBatchJobEvents",
                "summary": "The events of the caller's jobs after a seq, oldest first.",
                "description": "With Accept: text/event-stream, Server-Sent Events instead "
                "(id: is the seq; Last-Event-ID resumes; a comment every 15 s when idle).",
                "parameters": [
                    _query(
                        "after",
                        {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER},
                        "Only events after this seq (default: the oldest kept).",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "A page of events; next_after is where to read next",
                        "content": {
                            **_json_content(_ref("Events")),
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        f"{_PREFIX}/{{id}}": {
            "get": {
                "operationId": "getBatchJob",
                "parameters": [_ID],
                "responses": {
                    "200": {
                        "description": "The job",
                        "content": _json_content(_ref("OneBatchJob")),
                    },
                    **_ERRORS,
                },
            }
        },
        **{
            f"{_PREFIX}/{{id}}/{action}": {
                "post": {
                    "operationId": f"{action}BatchJob",
                    "parameters": [_ID],
                    "responses": {
                        "200": {
                            "description": "The job",
                            "content": _json_content(_ref("OneBatchJob")),
                        },
                        **_ERRORS,
                    },
                }
            }
            for action in ("confirm", "cancel", "pause", "resume")
        },
        **_UPLOAD_PATHS,
        OPENAPI_PATH: {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This description.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": _json_content({"type": "object"}),
                    },
                    **_ERRORS,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _ERROR,
            "BatchJob": _BATCH_JOB,
            "ListedBatchJob": {**_BATCH_JOB, "required": ["id"]},  # fields= keeps only some
            "OneBatchJob": _ONE_JOB,
            "Page": _PAGE,
            "Events": _EVENTS,
            "CreateBatchJob": _CREATE,
            "FileKey": _FILE_KEY,
            "Uploaded": _UPLOADED,
        },
    },
}


def openapi_document(types: Iterable[str] | None = None) -> dict[str, Any]:
    """The description, as a new dict (JSON-ready) each call.

    ``types``: the registered batch types, listed as the values ``type`` may take.
    """
    document = copy.deepcopy(_DOCUMENT)
    if types is not None:
        create = document["components"]["schemas"]["CreateBatchJob"]
        create["properties"]["type"]["enum"] = sorted(types)
    return document
