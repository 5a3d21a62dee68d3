"""The file store: keys that never leave the directory, streaming and resumable writes."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchjobs import BatchJobs, InvalidDataError
from batchjobs.files import FileStore


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "files")


def write(store: FileStore, key: str, data: bytes) -> None:
    with store.open_write(key) as out:
        out.write(data)


def read(store: FileStore, key: str) -> bytes:
    with store.open_read(key) as source:
        return source.read()


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../outside.csv",
        "exports/../../outside.csv",
        "exports/../x.csv",
        "/etc/passwd",
        "exports//x.csv",
        "exports/",
        ".hidden",
        "exports/.x.csv.part",
        "a\\b.csv",
        "C:/x.csv",
        "nul\x00.csv",
        "x" * 256,
        "a/" * 600 + "x",
    ],
)
def test_keys_that_could_leave_the_directory_are_refused(store: FileStore, key: str) -> None:
    for call in (
        store.path,
        store.open_read,
        store.open_write,
        store.exists,
        store.size,
        store.delete,
        lambda k: store.put(k, [b"x"]),
    ):
        with pytest.raises(InvalidDataError):
            call(key)
    assert not (store.root.parent / "outside.csv").exists()


def test_a_key_must_be_a_string(store: FileStore) -> None:
    with pytest.raises(InvalidDataError, match="non-empty string"):
        store.check_key(None)
    assert store.check_key("exports/batch_01.csv") == "exports/batch_01.csv"


def test_symbolic_links_inside_the_store_are_not_followed(store: FileStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    write(store, "keep.txt", b"ok")
    (store.root / "link.txt").symlink_to(secret)
    (store.root / "dir").symlink_to(outside_dir, target_is_directory=True)
    for key in ("link.txt", "dir/x.txt"):
        with pytest.raises(InvalidDataError, match="links are not followed"):
            store.open_read(key)
        with pytest.raises(InvalidDataError, match="links are not followed"):
            store.open_write(key)
        with pytest.raises(InvalidDataError, match="links are not followed"):
            store.path(key)
        assert not store.exists(key)
    with pytest.raises(InvalidDataError):
        store.put("dir/x.txt", [b"x"])
    assert secret.read_bytes() == b"secret"
    assert list(outside_dir.iterdir()) == []
    assert list(store.keys()) == ["keep.txt"]


def test_a_hard_link_to_a_file_elsewhere_is_refused(store: FileStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    store.root.mkdir(parents=True)
    os.link(secret, store.root / "linked.txt")
    with pytest.raises(InvalidDataError, match="links"):
        store.open_read("linked.txt")
    with pytest.raises(InvalidDataError, match="links"):
        store.open_write("linked.txt")
    assert secret.read_bytes() == b"secret"


def test_a_directory_is_not_a_file(store: FileStore) -> None:
    write(store, "exports/a.csv", b"a")
    with pytest.raises(InvalidDataError, match="not a regular file"):
        store.open_read("exports")
    assert not store.exists("exports")


def test_open_write_creates_folders_and_streams(store: FileStore) -> None:
    with store.open_write("exports/2024/report.csv") as out:
        for i in range(1000):
            out.write(b"%d\r\n" % i)
    assert store.exists("exports/2024/report.csv")
    with store.open_read("exports/2024/report.csv") as source:
        assert source.read().splitlines()[-1] == b"999"
    assert store.path("exports/2024/report.csv") == store.root / "exports" / "2024" / "report.csv"


def test_open_write_at_an_offset_keeps_the_bytes_before_it_and_drops_the_rest(
    store: FileStore,
) -> None:
    write(store, "a.csv", b"header\r\nrow 1\r\nrow 2 partial")
    with store.open_write("a.csv", offset=len(b"header\r\nrow 1\r\n")) as out:
        out.write(b"row 2\r\n")
    assert read(store, "a.csv") == b"header\r\nrow 1\r\nrow 2\r\n"
    with store.open_write("a.csv") as out:  # offset 0: a fresh file
        out.write(b"new")
    assert store.size("a.csv") == 3


def test_resuming_past_the_end_of_a_file_is_refused(store: FileStore) -> None:
    write(store, "a.csv", b"short")
    with pytest.raises(ValueError, match="has only 5 bytes"):
        store.open_write("a.csv", offset=6)
    with pytest.raises(ValueError, match="non-negative"):
        store.open_write("a.csv", offset=-1)
    assert read(store, "a.csv") == b"short"


def test_put_streams_from_a_file_or_chunks_and_appears_whole(store: FileStore) -> None:
    assert store.put("in/a.bin", io.BytesIO(b"x" * 3_000_000)) == 3_000_000
    assert store.put("in/b.bin", (bytes([i]) * 10 for i in range(3))) == 30

    def failing() -> Iterator[bytes]:
        yield b"half"
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        store.put("in/c.bin", failing())
    assert not store.exists("in/c.bin")
    assert sorted(store.keys()) == ["in/a.bin", "in/b.bin"]
    assert sorted(p.name for p in (store.root / "in").iterdir()) == ["a.bin", "b.bin"]


def test_copy_to_size_and_delete(store: FileStore) -> None:
    store.put("r.csv", [b"a,b\r\n", b"1,2\r\n"])
    target = io.BytesIO()
    assert store.copy_to("r.csv", target) == 10
    assert target.getvalue() == b"a,b\r\n1,2\r\n"
    assert store.size("r.csv") == 10
    assert store.delete("r.csv") is True
    assert store.delete("r.csv") is False
    assert store.delete("never/there.csv") is False
    with pytest.raises(FileNotFoundError):
        store.open_read("r.csv")
    assert list(FileStore(store.root / "missing").keys()) == []


def test_batchjobs_keeps_files_next_to_the_database_unless_told(
    make_jobs: Callable[..., BatchJobs], db_path: Path, tmp_path: Path
) -> None:
    assert make_jobs().files.root == (tmp_path / "jobs-files").resolve()
    other = make_jobs(tmp_path / "b.db", files_dir=tmp_path / "elsewhere")
    assert other.files.root == (tmp_path / "elsewhere").resolve()
