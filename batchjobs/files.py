"""The local file store: files by key, in one directory they can never leave."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import InvalidDataError

__all__ = ["FileStore"]

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class FileStore:
    """Files addressed by keys such as ``exports/batch_01J.csv`` under ``root``.

    A key is a relative path of plain names: ``..``, absolute paths, empty
    parts and symbolic links are refused with ``InvalidDataError``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """The file's path for ``key``, checked to stay inside ``root``."""
        if not isinstance(key, str) or not key:
            raise InvalidDataError("file key must be a non-empty string")
        parts = key.split("/")
        if not all(_KEY_PART.match(part) for part in parts):
            raise InvalidDataError(f"invalid file key {key!r}: use plain names joined by /")
        path = self.root.joinpath(*parts)
        probe = self.root
        for part in parts:
            probe = probe / part
            if probe.is_symlink():
                raise InvalidDataError(f"invalid file key {key!r}: links are not followed")
        return path

    def open_write(self, key: str, *, append: bool = False) -> IO[bytes]:
        """Open ``key`` for writing bytes (created with its folders; ``append`` keeps content)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab" if append else "wb")  # noqa: SIM115 - the caller closes it

    def open_read(self, key: str) -> IO[bytes]:
        """Open ``key`` for reading bytes."""
        return open(self.path(key), "rb")  # noqa: SIM115 - the caller closes it

    def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key``."""
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        """The size in bytes of the file under ``key``."""
        return self.path(key).stat().st_size

    def delete(self, key: str) -> bool:
        """Delete the file under ``key``; False if there was none."""
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def keys(self) -> Iterator[str]:
        """Every stored key."""
        if not self.root.is_dir():
            return
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                yield Path(dirpath, name).relative_to(self.root).as_posix()
