"""What every option and argument must be, checked before a command runs (exit 2, no traceback).

Integers fit in 64 bits (SQLite's), durations are finite and positive,
text is valid UTF-8: a shell passes bytes, and bytes that are not UTF-8
arrive as lone surrogates that neither SQLite nor a terminal can encode.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import click

from ..errors import InvalidDataError
from ..limits import MAX_INTEGER, check_text

__all__ = ["Count", "FilePath", "JobId", "PositiveInt", "PositiveSeconds", "Seconds", "Text"]


def _utf8(value: str, param: Any, ctx: Any, kind: click.ParamType) -> str:
    try:
        return check_text("the value", value)
    except InvalidDataError:
        try:  # the bytes it came from, as the shell had them
            shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate no byte decodes to
            shown = value.encode("utf-8", "backslashreplace").decode("utf-8")
        kind.fail(f"'{shown}' is not valid UTF-8 text", param, ctx)


class Text(click.ParamType):
    """A string that is valid UTF-8."""

    name = "text"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if not isinstance(value, str):
            value = str(value)
        return _utf8(value, param, ctx, self)


class FilePath(click.Path):
    """A file path that this system's file names can hold (``click.Path`` options)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str):
            try:
                named = "\x00" not in os.fsencode(value).decode("latin-1")
            except UnicodeEncodeError:
                named = False
            if not named:
                shown = value.encode("utf-8", "backslashreplace").decode("utf-8")
                shown = shown.replace("\x00", "\\x00")
                self.fail(f"'{shown}' is not a file name this system can hold", param, ctx)
        return super().convert(value, param, ctx)


class JobId(Text):
    """A batch job id: UTF-8 text (an id too long for any job is not found, at once)."""

    name = "id"


class Count(click.IntRange):
    """A non-negative integer within 64 bits: a limit, an offset."""

    def __init__(self, min: int = 0, max: int = MAX_INTEGER) -> None:
        super().__init__(min=min, max=max)


class PositiveInt(Count):
    """A positive integer, at most ``max`` (threads, concurrency: each one costs a thread)."""

    def __init__(self, max: int = 1024) -> None:
        super().__init__(min=1, max=max)


class Seconds(click.ParamType):
    """A finite, non-negative number of seconds, within what a thread can wait for."""

    name = "seconds"
    positive = False

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            text = _utf8(str(value), param, ctx, self)
            try:
                number = float(text)
            except ValueError:
                self.fail(f"{text!r} is not a number of seconds", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        if number < 0 or (self.positive and number == 0):
            least = "more than 0" if self.positive else "at least 0"
            self.fail(f"{value!r} is not {least} seconds", param, ctx)
        if number > threading.TIMEOUT_MAX:
            self.fail(f"{value!r} is more than {threading.TIMEOUT_MAX:.0f} seconds", param, ctx)
        return number


class PositiveSeconds(Seconds):
    """A finite number of seconds, more than 0."""

    positive = True
