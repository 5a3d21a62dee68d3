"""The local file store: files by key, in one directory they can never leave."""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from .errors import InvalidDataError

__all__ = ["COPY_BUFFER_SIZE", "FileStore"]

#: Bytes read or written at a time when a file is copied in or out.
COPY_BUFFER_SIZE = 1 << 20
MAX_KEY_LENGTH = 1024
MAX_PART_LENGTH = 255

# A part starts with a letter or digit: no "..", no hidden or temporary files.
_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Walking with directory descriptors and O_NOFOLLOW closes the window between
# checking a path and opening it; without them we check each part with lstat.
_SAFE_WALK = (
    hasattr(os, "O_NOFOLLOW")
    and hasattr(os, "O_DIRECTORY")
    and os.open in os.supports_dir_fd
    and os.mkdir in os.supports_dir_fd
    and os.unlink in os.supports_dir_fd
)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)


def _link_refused(key: str) -> InvalidDataError:
    return InvalidDataError(f"invalid file key {key!r}: links are not followed")


class FileStore:
    """Files addressed by keys such as ``exports/batch_01J.csv`` under ``root``.

    A key is a relative path of plain names (letters, digits, ``.``, ``_``,
    ``-``, not starting with ``.``) joined by ``/``: ``..``, absolute paths,
    empty parts, backslashes and links (symbolic, or hard links to a file
    elsewhere) are refused with ``InvalidDataError``. Writes stream: nothing
    holds a whole file in memory.

    >>> files = FileStore("app-files")
    >>> with files.open_write("exports/report.csv") as f:
    ...     f.write(b"id,name\\r\\n")
    >>> files.size("exports/report.csv")
    9
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"<FileStore {str(self.root)!r}>"

    # -- keys ------------------------------------------------------------------

    @staticmethod
    def check_key(key: object) -> str:
        """Return ``key`` if it is a valid key; ``InvalidDataError`` otherwise."""
        if not isinstance(key, str) or not key:
            raise InvalidDataError("file key must be a non-empty string")
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidDataError(f"file key is longer than {MAX_KEY_LENGTH} characters")
        for part in key.split("/"):
            if len(part) > MAX_PART_LENGTH or not _KEY_PART.fullmatch(part):
                raise InvalidDataError(
                    f"invalid file key {key!r}: use plain names joined by / "
                    "(letters, digits, '.', '_', '-'; no '..', no absolute path)"
                )
        return key

    def path(self, key: str) -> Path:
        """The file's path for ``key``, checked to stay inside ``root`` (links refused)."""
        parts = self.check_key(key).split("/")
        probe = self.root
        for part in parts:
            probe = probe / part
            if probe.is_symlink():
                raise _link_refused(key)
        return probe

    # -- opening ------------------------------------------------------------------

    @contextmanager
    def _parent(self, key: str, *, create: bool) -> Iterator[tuple[int | None, str]]:
        """The directory holding ``key`` (a descriptor, or None without dir_fd) and its name."""
        parts = self.check_key(key).split("/")
        if not _SAFE_WALK:  # pragma: no cover - platforms without dir_fd
            path = self.path(key)
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            yield None, str(path)
            return
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            for part in parts[:-1]:
                if create:
                    with suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                try:
                    child = os.open(
                        part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd
                    )
                except OSError as error:
                    if error.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _link_refused(key) from None
                    raise
                os.close(fd)
                fd = child
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _open_fd(self, key: str, flags: int, *, create: bool = False) -> int:
        with self._parent(key, create=create) as (dir_fd, name):
            try:
                fd = os.open(
                    name,
                    flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK | _BINARY,
                    0o666,
                    dir_fd=dir_fd,
                )
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise _link_refused(key) from None
                raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidDataError(f"file key {key!r} is not a regular file")
            if info.st_nlink > 1:
                raise _link_refused(key)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_read(self, key: str) -> IO[bytes]:
        """Open ``key`` for reading bytes; ``FileNotFoundError`` if there is none."""
        return os.fdopen(self._open_fd(key, os.O_RDONLY), "rb")

    def open_write(self, key: str, *, offset: int = 0) -> IO[bytes]:
        """Open ``key`` for writing bytes at ``offset``, dropping whatever follows it.

        ``offset=0`` starts an empty file (created with its folders). A larger
        offset resumes a file written earlier: its first ``offset`` bytes are
        kept, and ``ValueError`` says so if the file is shorter than that.
        """
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, not {offset!r}")
        fd = self._open_fd(key, os.O_RDWR | os.O_CREAT, create=True)
        try:
            size = os.fstat(fd).st_size
            if size < offset:
                raise ValueError(
                    f"cannot resume {key!r} at byte {offset}: the file has only {size} bytes"
                )
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "r+b")

    # -- whole files ---------------------------------------------------------------

    def put(self, key: str, source: IO[bytes] | Iterable[bytes]) -> int:
        """Store the bytes of ``source`` (a binary file or chunks) under ``key``; their size.

        The file appears whole or not at all: it is written aside, then
        renamed over ``key``.
        """
        size = 0
        with self._parent(key, create=True) as (dir_fd, final_name):
            head, tail = os.path.split(final_name)
            temp_name = os.path.join(head, f".{tail}.{secrets.token_hex(6)}.part")
            fd = os.open(
                temp_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY,
                0o666,
                dir_fd=dir_fd,
            )
            try:
                with os.fdopen(fd, "wb") as out:
                    if hasattr(source, "read"):
                        while block := source.read(COPY_BUFFER_SIZE):
                            size += out.write(block)
                    else:
                        for block in source:
                            size += out.write(block)
                os.replace(temp_name, final_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(temp_name, dir_fd=dir_fd)
                raise
        return size

    def copy_to(self, key: str, target: IO[bytes]) -> int:
        """Write the file under ``key`` into the binary stream ``target``; its size."""
        size = 0
        with self.open_read(key) as source:
            while block := source.read(COPY_BUFFER_SIZE):
                size += target.write(block)
        return size

    # -- inspection ------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether a regular file is stored under ``key`` (``InvalidDataError`` for a bad key)."""
        self.check_key(key)
        try:
            os.close(self._open_fd(key, os.O_RDONLY))
        except (FileNotFoundError, NotADirectoryError, InvalidDataError):
            return False
        return True

    def size(self, key: str) -> int:
        """The size in bytes of the file under ``key``."""
        fd = self._open_fd(key, os.O_RDONLY)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def delete(self, key: str) -> bool:
        """Delete the file under ``key``; False if there was none."""
        try:
            with self._parent(key, create=False) as (dir_fd, name):
                os.unlink(name, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def keys(self) -> Iterator[str]:
        """Every stored key (files written aside or behind links are left out)."""
        if not self.root.is_dir():
            return
        for dirpath, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if _KEY_PART.fullmatch(d))
            for name in sorted(names):
                path = Path(dirpath, name)
                if _KEY_PART.fullmatch(name) and path.is_file() and not path.is_symlink():
                    yield path.relative_to(self.root).as_posix()
