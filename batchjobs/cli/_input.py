"""What commands accept: JSON objects, ``KEY=VALUE`` settings, durations, tokens; shared options."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import click

from ..errors import InvalidDataError
from ..limits import MAX_BODY_BYTES, check_text, parse_json
from ._app import F
from ._validators import Text

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"([0-9]+)([smhdw])")
_DATE_FILTER = re.compile(r"([a-z_]+)(?:\[([a-z]+)\])?=(.*)", re.S)


class _JsonObject(click.ParamType):
    name = "JSON"

    def convert(self, value: Any, param: Any, ctx: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        text: str | bytes = value
        if value.startswith("@"):
            # Bytes, and no more than a request body may hold: the parser tells
            # what is not UTF-8, and a huge file is refused unread.
            try:
                with click.open_file(value[1:], "rb") as source:
                    text = source.read(MAX_BODY_BYTES + 1)
            except OSError as error:
                self.fail(f"cannot read {value[1:]}: {error.strerror}", param, ctx)
            if len(text) > MAX_BODY_BYTES:
                self.fail(f"the context is larger than {MAX_BODY_BYTES} bytes", param, ctx)
        try:
            data = parse_json("the context", text, max_bytes=MAX_BODY_BYTES)
        except InvalidDataError as error:
            self.fail(error.message, param, ctx)
        if not isinstance(data, dict):
            self.fail(f"must be a JSON object, not {type(data).__name__}", param, ctx)
        return data


class _Setting(click.ParamType):
    name = "KEY=VALUE"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        value = Text().convert(value, param, ctx)
        key, sep, text = value.partition("=")
        if not sep or not key:
            self.fail(f"{value[:80]!r} is not KEY=VALUE", param, ctx)
        name = f"the value of {key[:80]}"
        try:
            return key, parse_json(name, text)
        except InvalidDataError as error:
            if error.message.startswith(f"{name} is not valid JSON"):
                return key, text  # not JSON: a plain string
            self.fail(error.message, param, ctx)  # JSON, but past a limit


class _DateFilter(click.ParamType):
    """``FIELD[OP]=ISO`` (``gt``, ``gte``, ``lt``, ``lte``) or ``FIELD=null``, as the HTTP query."""

    name = "FIELD[OP]=VALUE"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, str | None, str | None]:
        if isinstance(value, tuple):
            return value
        match = _DATE_FILTER.fullmatch(value)
        if match is None:
            self.fail(f"{value!r} is not FIELD[OP]=VALUE or FIELD=null", param, ctx)
        field, operator, text = match.groups()
        if operator is None and text != "null":
            self.fail(
                f"{value!r} needs an operator or null: {field}[gt|gte|lt|lte]=ISO or {field}=null",
                param,
                ctx,
            )
        return field, operator, None if operator is None else text


def _date_filters(given: Iterable[tuple[str, str | None, str | None]]) -> dict[str, Any]:
    """``list_and_count`` filters from ``--filter`` values: ``{"gt": ISO}`` or ``None``."""
    filters: dict[str, Any] = {}
    for field, operator, text in given:
        bounds = filters.get(field, {})
        if operator is None or bounds is None:
            if field in filters:
                raise click.BadParameter(
                    f"{field}=null cannot be combined with another {field} filter",
                    param_hint="'--filter'",
                )
            filters[field] = None
            continue
        if operator in bounds:
            raise click.BadParameter(f"{field}[{operator}] is given twice", param_hint="'--filter'")
        filters[field] = {**bounds, operator: text}
    return filters


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        # ASCII digits only: str.isdigit() and int() also take '²' or '३०'.
        match = _DURATION.fullmatch(value)
        if match is None:
            self.fail(f"{value!r} is not a duration like 30d, 12h, 15m, 2w or 90s", param, ctx)
        number, unit = match.groups()
        try:
            return timedelta(seconds=int(number) * _DURATION_UNITS[unit])
        except OverflowError:
            self.fail(f"{value!r} is too long: at most {timedelta.max.days}d", param, ctx)


def _job_input(f: F) -> F:
    """The options ``create`` and ``run`` share."""
    for option in reversed(
        [
            click.option(
                "--context",
                type=_JsonObject(),
                metavar="JSON|@FILE",
                help="The job's context: a JSON object, @file.json, or @- for stdin.",
            ),
            click.option(
                "--set",
                "settings",
                type=_Setting(),
                multiple=True,
                help="Set one context key (repeatable); VALUE is JSON, else a string.",
            ),
            click.option(
                "--dry-run", is_flag=True, help="Stop after pre-processing, until confirmed."
            ),
            click.option(
                "--user", type=Text(), help="The user the job is created by (created_by)."
            ),
        ]
    ):
        f = option(f)
    return f


def _key_option(f: F) -> F:
    return click.option(
        "--key",
        type=Text(),
        help="An idempotency key: if a job of --user has it, use that job instead of "
        "creating one (e.g. nightly-2026-12-01).",
    )(f)


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(f)


class _TokenUser(click.ParamType):
    name = "TOKEN=USER"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        # At the last "=": a base64 token may end with "=" padding, a user id has none.
        try:
            check_text("a token", value)
        except InvalidDataError:
            self.fail("not UTF-8 text (the value is not shown: it holds a secret)", param, ctx)
        token, sep, user = value.rpartition("=")
        if not sep or not token or not user:
            self.fail("expected TOKEN=USER (the value is not shown: it holds a secret)", param, ctx)
        return token, user
