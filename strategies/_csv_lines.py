"""The data rows of a CSV file, read a batch at a time, with the line each starts on.

A field written ``""`` (an empty string, in PostgreSQL's ``COPY … CSV``
convention) can be told from an empty unquoted one (NULL): the reader marks
it, when asked, as ``QUOTED_EMPTY``, an empty ``str`` that is that one object.
"""

from __future__ import annotations

import csv
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, chain, compress, islice, repeat
from typing import IO

#: What a blank line is, once read (a line keeps its line break).
_BREAKS = ("\r\n", "\n", "\r")
#: Lines of a batch to each quote in it, at least, for its lines without one
#: to be split in runs between those with one; a batch with more quotes is
#: parsed whole (splitting short runs would save less than it costs).
_SPLIT_RUN = 16


class _QuotedEmpty(str):
    """The type of ``QUOTED_EMPTY``: equal to ``""``, told apart by identity."""

    __slots__ = ()


#: A field written ``""``: an empty string, where an empty unquoted field is NULL.
QUOTED_EMPTY = _QuotedEmpty()


def _mark_quoted_empty(record: list[str], raw: str) -> int:
    """Replace the empty values of ``record`` that ``raw`` (the text ``csv.reader``
    parsed it from) quotes by ``QUOTED_EMPTY``; how many there were.

    The text was parsed (strictly) already, so each field is known to be
    either unquoted, its value as is, or quoted, its value between quotes
    with each quote doubled; a separator follows each.
    """
    marked = 0
    at = 0
    for i, value in enumerate(record):
        if raw.startswith('"', at):
            if not value:
                record[i] = QUOTED_EMPTY
                marked += 1
            at += 2 + len(value) + value.count('"')
        else:
            at += len(value)
        at += 1
    return marked


class _Lines:
    """The lines of ``source``, each kept from when it is read until ``take``."""

    def __init__(self, source: Iterator[str]) -> None:
        self.source = source
        self.read: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self.source)
        self.read.append(line)
        return line

    def take(self) -> str:
        """The lines read since the last ``take``, joined."""
        text = "".join(self.read)
        self.read.clear()
        return text


class _Batch:
    """Data rows read together, with the line each starts on (``None``: not
    known); by column when every row has the header's ``width``."""

    def __init__(
        self,
        count: int,
        lines: Sequence[int] | None,
        width: int,
        *,
        columns: Sequence[Sequence[str]] | None = None,
        rows: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.count = count
        self.lines = lines
        self.width = width
        self._columns = columns
        self._rows = rows

    @property
    def columns(self) -> Sequence[Sequence[str]] | None:
        """The values by column, or ``None`` when a row has another width."""
        if self._columns is None and self._rows and set(map(len, self._rows)) == {self.width}:
            self._columns = list(zip(*self._rows, strict=True))
        return self._columns

    def rows(self) -> Sequence[Sequence[str]]:
        """The rows, each a sequence of its values."""
        if self._rows is None:
            self._rows = list(zip(*self._columns or (), strict=True))
        return self._rows

    def each_row(self) -> Iterable[Sequence[str]]:
        """The rows once, in order: a row read by column is made as it is needed."""
        if self._rows is None and self._columns is not None:
            return zip(*self._columns, strict=True)
        return self.rows()

    @classmethod
    def join(cls, parts: Sequence[_Batch], width: int) -> _Batch:
        """One batch of the rows of ``parts``, in order."""
        count = sum(p.count for p in parts)
        known = [p.lines for p in parts if p.lines is not None]
        lines = list(chain.from_iterable(known)) if len(known) == len(parts) else None
        columns = [p.columns for p in parts]
        if all(c is not None for c in columns):
            by_column = zip(*(c or () for c in columns), strict=True)
            joined = [list(chain.from_iterable(c)) for c in by_column]
            return cls(count, lines, width, columns=joined)
        return cls(count, lines, width, rows=list(chain.from_iterable(p.rows() for p in parts)))


def _failing(error: Exception) -> Iterator[str]:
    """Lines that cannot be read: reading one raises ``error``."""
    yield from ()
    raise error


class _RowReader:
    """The data rows of CSV text, read a batch at a time: what ``csv.reader``
    reads, blank lines left out, with the line each starts on; with
    ``mark_quoted``, fields written ``""`` as ``QUOTED_EMPTY``.

    Lines without a quote (most lines of most files) are split on commas a
    run at a time and their values sliced out by column, about twice as fast
    as parsing them row by row. A line with a quote is parsed by
    ``csv.reader``, which reads on to the end of a field spanning lines; so is
    one with a NUL (refused before Python 3.11) or longer than the module's
    field size limit, so that the module raises the same errors.
    """

    def __init__(
        self, text: IO[str], width: int, line_num: int, *, mark_quoted: bool = False
    ) -> None:
        self.text = text
        self.width = width
        #: Lines read so far, the header's included (``csv.reader``'s ``line_num``).
        self.line_num = line_num
        #: Lines of them parsed by ``csv.reader`` (the others were split).
        self.parsed = 0
        #: Whether fields written ``""`` are read as ``QUOTED_EMPTY``.
        self.mark_quoted = mark_quoted
        #: How many were.
        self.quoted_empty = 0

    def read(self, size: int) -> _Batch | None:
        """The next ``size`` rows (fewer at the end), or ``None`` after the last."""
        parts: list[_Batch] = []
        count = 0
        while count < size:
            read = self._read(size - count)
            if read is None:
                break
            for part in read:
                if part.count:
                    parts.append(part)
                    count += part.count
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else _Batch.join(parts, self.width)

    def _read(self, size: int) -> list[_Batch] | None:
        """The rows of the next ``size`` lines (and of the lines after them that a
        field spanning lines takes), or ``None`` at the end of the text."""
        lines: list[str] = []
        try:
            lines.extend(islice(self.text, size))
        except UnicodeDecodeError as error:
            # csv.reader would have parsed the lines before this one first.
            before = self.line_num
            self._parts(lines, _failing(error))
            self.line_num = before + len(lines)
            raise
        return self._parts(lines, self.text) if lines else None

    def _parts(self, lines: list[str], more: Iterator[str]) -> list[_Batch]:
        """The rows of ``lines``, a run of lines at a time, split or parsed; a field
        spanning lines past the last reads on from ``more``."""
        block = "".join(lines)
        # A NUL (refused before Python 3.11) or a line as long as the field size
        # limit: csv.reader says whether they are fine, so the batch is parsed.
        refused = "\x00" in block or _has_long_line(block, csv.field_size_limit())
        if not (refused or '"' in block):
            return [self._split(lines, block)]
        if refused or block.count('"') * _SPLIT_RUN > len(lines):
            return [self._parse(chain(lines, more), len(lines))]
        # The lines with a quote, found from the offsets where lines end.
        ends = list(accumulate(map(len, lines)))
        quoted = []
        at = block.find('"')
        while at >= 0:
            quoted.append(bisect_right(ends, at))
            at = block.find('"', ends[quoted[-1]])
        parts = []
        rest = iter(lines)
        first = self.line_num
        for start, stop in _runs(quoted):
            done = self.line_num - first  # lines of ``lines`` read
            if stop <= done:
                continue  # in a field spanning lines, parsed already
            if start > done:
                run = list(islice(rest, start - done))
                parts.append(self._split(run, "".join(run)))
            parts.append(self._parse(chain(rest, more), stop - max(start, done)))
        if self.line_num - first < len(lines):
            run = list(rest)
            parts.append(self._split(run, "".join(run)))
        return parts

    def _split(self, lines: list[str], block: str) -> _Batch:
        """The rows of ``lines`` (``block``, joined), none with a quote, split on commas."""
        first = self.line_num + 1
        self.line_num += len(lines)
        numbers: Sequence[int] = range(first, first + len(lines))
        if any(map(lines.__contains__, _BREAKS)):  # blank lines, left out
            numbered = [(n, line) for n, line in enumerate(lines, first) if line not in _BREAKS]
            numbers = [n for n, _ in numbered]
            lines = [line for _, line in numbered]
            block = "".join(lines)
        width = self.width
        if not lines:
            return _Batch(0, numbers, width, rows=[])
        # Each line ends at its one line break, the last one perhaps at none.
        if "\r" in block:
            block = block.replace("\r\n", "\n").replace("\r", "\n")
        if block.endswith("\n"):
            block = block[:-1]
        if set(map(str.count, lines, repeat(","))) == {width - 1}:
            values = block.replace("\n", ",").split(",")
            columns = [values[i::width] for i in range(width)]
            return _Batch(len(lines), numbers, width, columns=columns)
        rows = [line.split(",") for line in block.split("\n")]
        return _Batch(len(lines), numbers, width, rows=rows)

    def _parse(self, source: Iterator[str], count: int) -> _Batch:
        """The rows of the next ``count`` records ``csv.reader`` parses from ``source``
        (a blank line is a record without a row; a record may span lines)."""
        first = self.line_num + 1
        lines = _Lines(source) if self.mark_quoted else None
        reader = csv.reader(source if lines is None else lines, strict=True)
        try:
            if lines is None:
                records = list(islice(reader, count))
            else:
                records = self._marked(reader, lines, count)
        finally:
            self.line_num += reader.line_num
            self.parsed += reader.line_num
        numbers: Sequence[int]
        if reader.line_num == len(records):  # one line a record
            if all(records):
                starts = range(first, first + len(records))
                return _Batch(len(records), starts, self.width, rows=records)
            numbers = list(compress(range(first, first + len(records)), records))
        else:  # a record with n line breaks in its fields spans n + 1 lines
            numbers = []
            for record in records:
                if record:
                    numbers.append(first)
                first += 1 + sum(map(_line_breaks, record))
        return _Batch(len(numbers), numbers, self.width, rows=list(filter(None, records)))

    def _marked(self, reader: Iterator[list[str]], lines: _Lines, count: int) -> list[list[str]]:
        """The next ``count`` records of ``reader`` (reading ``lines``), their fields
        written ``""`` as ``QUOTED_EMPTY``."""
        records = []
        for record in islice(reader, count):
            raw = lines.take()
            if "" in record and '""' in raw:
                self.quoted_empty += _mark_quoted_empty(record, raw)
            records.append(record)
        return records


def _has_long_line(block: str, limit: int) -> bool:
    """Whether a line of ``block`` (lines joined) has ``limit`` characters or more
    before its line break, looked for a window of ``limit`` characters at a time."""
    start = 0
    while len(block) - start >= limit:
        end = max(block.rfind("\n", start, start + limit), block.rfind("\r", start, start + limit))
        if end < 0:
            return True
        start = end + 1
    return False


def _line_breaks(value: str) -> int:
    """The line breaks in ``value``: CR LF, CR or LF."""
    return value.count("\n") + value.count("\r") - value.count("\r\n")


def _runs(numbers: Iterable[int]) -> Iterator[tuple[int, int]]:
    """The runs of consecutive ``numbers`` (ascending), as ``(first, last + 1)``."""
    start = stop = -1
    for n in numbers:
        if n != stop:
            if stop > start:
                yield start, stop
            start = n
        stop = n + 1
    if stop > start:
        yield start, stop
