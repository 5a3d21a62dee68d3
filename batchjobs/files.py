"""The local file store: files by key, in one directory they can never leave, each with an owner."""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from .errors import InvalidDataError, NotAllowedError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: a key's writers are not serialized
    fcntl = None  # type: ignore[assignment]

__all__ = ["COPY_BUFFER_SIZE", "NOT_OWNER_MESSAGE", "UPLOADS_FOLDER", "FileStore", "upload_name"]

#: Bytes read or written at a time when a file is copied in or out.
COPY_BUFFER_SIZE = 1 << 20
MAX_KEY_LENGTH = 1024
MAX_PART_LENGTH = 255
#: What a user is told about a file another user (or the application) owns.
NOT_OWNER_MESSAGE = "Cannot access a file that does not belong to the logged in user"
#: Where ``FileStore.upload`` puts files.
UPLOADS_FOLDER = "uploads"
#: The longest file name (before its extension) an upload's key keeps.
MAX_UPLOAD_NAME = 100
#: The folder (under the root) where each file's owner is kept, at the file's key.
#: Its name is no valid key part, so no key can reach it.
_OWNERS = ".owners"

# A part starts with a letter or digit: no "..", no hidden or temporary files.
_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NOT_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,16}$")
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


def upload_name(filename: object) -> str:
    """A key's last part made of an uploaded file's name: ``Prix (été) 2024.CSV`` gives
    ``Prix_t_2024.CSV``; ``upload`` when nothing of it is left."""
    name = (
        filename.replace("\\", "/").rsplit("/", 1)[-1].strip() if isinstance(filename, str) else ""
    )
    found = _EXTENSION.search(name)
    extension = found.group(0) if found and found.start() > 0 else ""
    stem = name[: len(name) - len(extension)]
    stem = _NOT_KEY_CHARACTERS.sub("_", stem).lstrip("._-")[:MAX_UPLOAD_NAME] or "upload"
    return stem + extension


def _link_refused(key: str) -> InvalidDataError:
    return InvalidDataError(f"invalid file key {key!r}: links are not followed")


class FileStore:
    """Files addressed by keys such as ``exports/batch_01J.csv`` under ``root``.

    A key is a relative path of plain names (letters, digits, ``.``, ``_``,
    ``-``, not starting with ``.``) joined by ``/``: ``..``, absolute paths,
    empty parts, backslashes and links (symbolic, or hard links to a file
    elsewhere) are refused with ``InvalidDataError``. Writes stream: nothing
    holds a whole file in memory.

    Every file has an owner: the user whose view of the store wrote it.
    ``files.for_user("usr_1")`` is the store as that user sees it: it reads,
    measures and deletes only the files ``usr_1`` owns (``NotAllowedError``
    otherwise) and the files it writes are ``usr_1``'s. Writers and deleters
    of one key take turns (an ``flock`` on its owner's record), so checking
    who owns it and recording the new owner are one step: of two users racing
    for a new key, one gets it and the other is refused. The store itself
    (``user`` ``None``) is the application's view: it reaches every file, and
    the files it writes belong to no user. A job's ``run.files`` is its
    creator's view.

    >>> files = FileStore("app-files")
    >>> with files.open_write("exports/report.csv") as f:
    ...     f.write(b"id,name\\r\\n")
    >>> files.size("exports/report.csv")
    9
    >>> files.for_user("usr_2").open_read("exports/report.csv")
    Traceback (most recent call last):
    NotAllowedError: Cannot access a file that does not belong to the logged in user
    """

    def __init__(self, root: str | Path, *, user: str | None = None) -> None:
        if user is not None and not isinstance(user, str):
            raise ValueError(f"user must be a user id (str) or None, not {user!r}")
        self.root = Path(root).resolve()
        #: Whose view this is; ``None``: the application's, which reaches every file.
        self.user = user

    def __repr__(self) -> str:
        who = "" if self.user is None else f" as {self.user!r}"
        return f"<FileStore {str(self.root)!r}{who}>"

    def for_user(self, user: str | None) -> FileStore:
        """The same files as ``user`` sees them (``None``: the application, every file)."""
        if user is not None and not isinstance(user, str):
            raise ValueError(f"user must be a user id (str) or None, not {user!r}")
        view = copy.copy(self)  # the root is resolved already: no file system call per job
        view.user = user
        return view

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
    def _parent(
        self, key: str, *, create: bool, owners: bool = False
    ) -> Iterator[tuple[int | None, str]]:
        """The directory holding ``key`` (a descriptor, or None without dir_fd) and its name;
        with ``owners``, the one holding the record of ``key``'s owner."""
        parts = self.check_key(key).split("/")
        if owners:
            parts.insert(0, _OWNERS)
        if not _SAFE_WALK:  # pragma: no cover - platforms without dir_fd
            path = self.path(key)
            if owners:
                path = self.root.joinpath(*parts)
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

    # -- owners ---------------------------------------------------------------------

    def owner(self, key: str) -> str | None:
        """Who owns the file under ``key``: a user id, or ``None`` for the application.

        A file written before files had owners, or whose record is unreadable,
        is the application's.
        """
        try:
            with self._parent(key, create=False, owners=True) as (dir_fd, name):
                fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError, InvalidDataError):
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:
                return None
            raise
        try:
            return _owner_in(_read_record(fd))
        finally:
            os.close(fd)

    def check_owner(self, key: str) -> None:
        """``NotAllowedError`` unless this view may reach the file under ``key``: the
        application's view reaches every file, a user's only those the user owns."""
        if self.user is not None and self.owner(key) != self.user:
            raise NotAllowedError(NOT_OWNER_MESSAGE)

    @contextmanager
    def _turn(self, key: str) -> Iterator[int]:
        """``key``'s turn: its owner's record open (made empty if need be) and locked
        while the context lasts. Every writer and deleter of ``key`` takes it, so
        whatever it checks of the owner holds until it is done."""
        with self._parent(key, create=True, owners=True) as (dir_fd, name):
            while True:
                try:
                    fd = os.open(
                        name,
                        os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK | _BINARY,
                        0o666,
                        dir_fd=dir_fd,
                    )
                except OSError as error:
                    if error.errno in (errno.ELOOP, errno.EISDIR):
                        raise _link_refused(key) from None
                    raise
                try:
                    held = os.fstat(fd)
                    if not stat.S_ISREG(held.st_mode):
                        raise _link_refused(key)
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_EX)
                    # A delete may have removed the record while this waited: the turn
                    # is the record's that is there now.
                    try:
                        there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        there = None
                except BaseException:
                    os.close(fd)
                    raise
                if there is not None and (there.st_ino, there.st_dev) == (held.st_ino, held.st_dev):
                    break
                os.close(fd)
            try:
                yield fd
            finally:
                os.close(fd)  # and so the lock

    def _take(self, record: int, key: str) -> bytes:
        """In ``key``'s turn: ``NotAllowedError`` if it holds a file this view may not
        replace, else record this view's user as its owner. Returns the record as it
        was (to put back if the write fails)."""
        previous = _read_record(record)
        if self.user is not None and self.exists(key) and _owner_in(previous) != self.user:
            raise NotAllowedError(NOT_OWNER_MESSAGE)
        _write_record(record, json.dumps({"owner": self.user}).encode())
        return previous

    # -- reading --------------------------------------------------------------------

    def open_read(self, key: str) -> IO[bytes]:
        """Open ``key`` for reading bytes; ``FileNotFoundError`` if there is none,
        ``NotAllowedError`` if it is not this view's user's."""
        fd = self._open_fd(key, os.O_RDONLY)
        try:
            self.check_owner(key)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")

    def open_write(self, key: str, *, offset: int = 0) -> IO[bytes]:
        """Open ``key`` for writing bytes at ``offset``, dropping whatever follows it.

        ``offset=0`` starts an empty file (created with its folders), owned by
        this view's user. A larger offset resumes a file written earlier: its
        first ``offset`` bytes are kept, and ``ValueError`` says so if the file
        is shorter than that. Another user's file is ``NotAllowedError``.
        """
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, not {offset!r}")
        with self._turn(key) as record:
            if offset == 0:
                # The owner first: a file is never there without its owner's record.
                previous = self._take(record, key)
            else:
                self.check_owner(key)
            try:
                fd = self._open_fd(key, os.O_RDWR | os.O_CREAT, create=True)
            except BaseException:
                if offset == 0:
                    _write_record(record, previous)
                raise
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
        renamed over ``key``. It is owned by this view's user; replacing
        another user's file is ``NotAllowedError``.
        """
        with self._turn(key) as record:
            previous = self._take(record, key)
            try:
                return self._write_aside(key, source)
            except BaseException:
                _write_record(record, previous)  # the file is as it was, and so its owner
                raise

    def _write_aside(self, key: str, source: IO[bytes] | Iterable[bytes]) -> int:
        """Write ``source`` to a new file beside ``key``, then rename it over; the size written."""
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

    def upload(self, filename: str | None, source: IO[bytes] | Iterable[bytes]) -> str:
        """Store ``source`` under a new key in ``uploads/``, made of ``filename``; the key.

        The key is ``uploads/<name>-<random>.<ext>`` (``upload_name``), never one
        taken; the file is this view's user's.
        """
        name = upload_name(filename)
        found = _EXTENSION.search(name)
        stem, extension = (name[: found.start()], found.group(0)) if found else (name, "")
        while True:
            key = f"{UPLOADS_FOLDER}/{stem}-{secrets.token_hex(6)}{extension}"
            if not self.exists(key):
                break
        self.put(key, source)
        return key

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
        """The size in bytes of the file under ``key`` (``NotAllowedError`` if not the user's)."""
        fd = self._open_fd(key, os.O_RDONLY)
        try:
            self.check_owner(key)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def delete(self, key: str) -> bool:
        """Delete the file under ``key`` and its owner's record; False if there was none.

        Another user's file is ``NotAllowedError``.
        """
        self.check_key(key)
        with self._turn(key) as record:
            owner = _owner_in(_read_record(record))
            if self.user is not None and owner != self.user and self.exists(key):
                raise NotAllowedError(NOT_OWNER_MESSAGE)
            try:
                with self._parent(key, create=False) as (dir_fd, name):
                    os.unlink(name, dir_fd=dir_fd)
                deleted = True
            except (FileNotFoundError, NotADirectoryError):
                deleted = False
            # The record only once the file is gone (a file always has its owner),
            # in the turn: whoever waits for it takes the turn of a new record.
            with (
                suppress(FileNotFoundError, NotADirectoryError),
                self._parent(key, create=False, owners=True) as (dir_fd, name),
            ):
                os.unlink(name, dir_fd=dir_fd)
        return deleted

    def keys(self) -> Iterator[str]:
        """Every key this view reaches (files written aside or behind links are left out)."""
        if not self.root.is_dir():
            return
        for dirpath, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if _KEY_PART.fullmatch(d))
            for name in sorted(names):
                path = Path(dirpath, name)
                if _KEY_PART.fullmatch(name) and path.is_file() and not path.is_symlink():
                    key = path.relative_to(self.root).as_posix()
                    if self.user is None or self.owner(key) == self.user:
                        yield key


def _read_record(fd: int) -> bytes:
    """An owner's record as it is now (read from its start)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, MAX_KEY_LENGTH * 4)


def _write_record(fd: int, data: bytes) -> None:
    """Make an owner's record (open, in its key's turn) say ``data``."""
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
    os.ftruncate(fd, len(data))


def _owner_in(record: bytes) -> str | None:
    """The user an owner's record names; ``None`` (the application) if it is unreadable."""
    try:
        owner = json.loads(record).get("owner")
    except (ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None
