"""The file store: keys that never leave the directory, streaming and resumable writes, owners."""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from batchjobs import (
    BatchJobs,
    BatchJobStrategy,
    InvalidDataError,
    JobDraft,
    JobRun,
    NotAllowedError,
    Status,
)
from batchjobs.files import NOT_OWNER_MESSAGE, FileStore


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


# -- owners ------------------------------------------------------------------------------------


def refused(action: Callable[[], object]) -> None:
    with pytest.raises(NotAllowedError) as refusal:
        action()
    assert refusal.value.type == "not_allowed"
    assert refusal.value.message == NOT_OWNER_MESSAGE


def test_a_file_belongs_to_the_user_whose_view_wrote_it(store: FileStore) -> None:
    alice, bob = store.for_user("usr_1"), store.for_user("usr_2")
    assert (alice.user, bob.user, store.user) == ("usr_1", "usr_2", None)
    alice.put("uploads/a.csv", [b"alice's"])
    write(bob, "exports/b.csv", b"bob's")
    write(store, "exports/app.csv", b"the application's")
    assert store.owner("uploads/a.csv") == "usr_1"
    assert store.owner("exports/b.csv") == "usr_2"
    assert store.owner("exports/app.csv") is None
    assert read(alice, "uploads/a.csv") == b"alice's"
    assert alice.size("uploads/a.csv") == 7
    for key in ("exports/b.csv", "exports/app.csv"):
        refused(partial(alice.open_read, key))
        refused(partial(alice.size, key))
        refused(partial(alice.delete, key))
        refused(partial(alice.put, key, [b"mine now"]))
        refused(partial(alice.open_write, key))
        refused(partial(alice.copy_to, key, io.BytesIO()))
    # Nothing was changed by the refusals.
    assert read(store, "exports/b.csv") == b"bob's"
    assert read(store, "exports/app.csv") == b"the application's"
    assert store.owner("exports/b.csv") == "usr_2"
    # The application reaches every file; each user lists only its own.
    assert read(store, "uploads/a.csv") == b"alice's"
    assert list(store.keys()) == ["exports/app.csv", "exports/b.csv", "uploads/a.csv"]
    assert list(alice.keys()) == ["uploads/a.csv"]
    assert list(bob.keys()) == ["exports/b.csv"]
    assert repr(alice) == f"<FileStore {str(store.root)!r} as 'usr_1'>"


def test_resuming_a_file_keeps_its_owner_and_refuses_another_user(store: FileStore) -> None:
    alice, bob = store.for_user("usr_1"), store.for_user("usr_2")
    write(alice, "exports/x.csv", b"head,")
    with alice.open_write("exports/x.csv", offset=5) as out:
        out.write(b"tail")
    assert (read(alice, "exports/x.csv"), store.owner("exports/x.csv")) == (b"head,tail", "usr_1")
    refused(lambda: bob.open_write("exports/x.csv", offset=5))
    assert read(store, "exports/x.csv") == b"head,tail"


def test_deleting_a_file_forgets_its_owner(store: FileStore) -> None:
    alice = store.for_user("usr_1")
    alice.put("uploads/a.csv", [b"x"])
    assert alice.delete("uploads/a.csv") is True
    assert alice.delete("uploads/a.csv") is False
    assert store.owner("uploads/a.csv") is None
    assert not (store.root / ".owners" / "uploads" / "a.csv").exists()
    # Another user may now use the key.
    store.for_user("usr_2").put("uploads/a.csv", [b"y"])
    assert store.owner("uploads/a.csv") == "usr_2"


def test_a_file_with_no_owner_record_is_the_applications(store: FileStore) -> None:
    (store.root / "old").mkdir(parents=True)
    (store.root / "old" / "file.csv").write_bytes(b"written before files had owners")
    assert store.owner("old/file.csv") is None
    assert read(store, "old/file.csv").startswith(b"written")
    refused(lambda: store.for_user("usr_1").open_read("old/file.csv"))
    # An unreadable record counts as none.
    store.for_user("usr_1").put("a.csv", [b"x"])
    (store.root / ".owners" / "a.csv").write_bytes(b"not json")
    assert store.owner("a.csv") is None
    (store.root / ".owners" / "a.csv").write_bytes(b'["usr_1"]')
    assert store.owner("a.csv") is None
    refused(lambda: store.for_user("usr_1").open_read("a.csv"))


def test_owner_records_are_out_of_reach_of_keys(store: FileStore, tmp_path: Path) -> None:
    store.for_user("usr_1").put("a.csv", [b"x"])
    with pytest.raises(InvalidDataError, match="invalid file key"):
        store.open_read(".owners/a.csv")
    assert list(store.keys()) == ["a.csv"]
    # A record replaced by a link is not followed: the file is nobody's.
    record = store.root / ".owners" / "a.csv"
    record.unlink()
    (tmp_path / "forged").write_text('{"owner": "usr_2"}')
    record.symlink_to(tmp_path / "forged")
    assert store.owner("a.csv") is None


@pytest.mark.parametrize("how", ["put", "open_write"])
def test_two_users_racing_for_one_key_never_both_get_it(store: FileStore, how: str) -> None:
    users = ("usr_1", "usr_2")

    def take(user: str, key: str, barrier: threading.Barrier, won: list[str]) -> None:
        view = store.for_user(user)
        barrier.wait()
        try:
            if how == "put":
                view.put(key, [user.encode()])
            else:
                write(view, key, user.encode())
        except NotAllowedError:
            return
        won.append(user)

    for round in range(40):
        key = f"exports/chosen-{round}.csv"
        barrier = threading.Barrier(len(users))
        won: list[str] = []
        threads = [threading.Thread(target=take, args=(user, key, barrier, won)) for user in users]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1, (round, won)  # one wins, the other is refused
        assert store.owner(key) == won[0] and read(store, key) == won[0].encode()


def test_a_failed_write_leaves_the_file_and_its_owner_as_they_were(store: FileStore) -> None:
    alice = store.for_user("usr_1")
    alice.put("a.csv", [b"alice's"])

    def broken() -> Iterator[bytes]:
        yield b"part"
        raise OSError(errno.EIO, "the source could not be read")

    with pytest.raises(OSError, match="could not be read"):
        store.put("a.csv", broken())  # the application may replace it, had it worked
    assert store.owner("a.csv") == "usr_1" and read(alice, "a.csv") == b"alice's"
    with pytest.raises(OSError, match="could not be read"):
        alice.put("new.csv", broken())
    assert not store.exists("new.csv")
    store.for_user("usr_2").put("new.csv", [b"bob's"])  # the key is still free
    assert store.owner("new.csv") == "usr_2"


def test_a_user_is_a_string(store: FileStore) -> None:
    with pytest.raises(ValueError, match="user must be a user id"):
        store.for_user(42)  # type: ignore[arg-type]


class FileReader(BatchJobStrategy):
    """Reads ``context["key"]`` through the files its run and its draft are given."""

    batch_type = "read-file"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def prepare(self, draft: JobDraft) -> JobDraft:
        self.seen.append(("prepare", draft.files.user))
        return draft

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        self.seen.append(("run", run.files.user))
        with run.files.open_read(run.job.context["key"]) as source:
            run.result["read"] = source.read().decode()
        return 0


def test_a_job_sees_the_files_as_its_creator_does(make_jobs: Callable[..., BatchJobs]) -> None:
    jobs = make_jobs()
    reader = FileReader()
    jobs.register(reader)
    jobs.files.for_user("usr_1").put("a.txt", [b"usr_1's"])
    mine = jobs.create("read-file", {"key": "a.txt"}, created_by="usr_1")
    theirs = jobs.create("read-file", {"key": "a.txt"}, created_by="usr_2")
    app = jobs.create("read-file", {"key": "a.txt"})
    jobs.run_until_idle(timeout=10)
    assert reader.seen[:3] == [("prepare", "usr_1"), ("prepare", "usr_2"), ("prepare", None)]
    assert set(reader.seen[3:]) == {("run", None), ("run", "usr_1"), ("run", "usr_2")}
    assert jobs.retrieve(mine.id).result["read"] == "usr_1's"
    assert jobs.retrieve(app.id).result["read"] == "usr_1's"
    failed = jobs.retrieve(theirs.id)
    assert failed.status == Status.FAILED
    assert failed.result["errors"][-1]["message"] == NOT_OWNER_MESSAGE
