"""`quick_calls`: each call with libc (the GIL kept) and with its `os`/`select` fallback, against the `os` answer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder import quick_calls
from forwarder.quick_calls import QuickPoll


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


@pytest.fixture(params=[True, False], ids=["libc", "fallback"])
def libc(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param:
        assert quick_calls._LIBC is not None  # Linux x86-64/arm64: what the hot paths use
    else:
        monkeypatch.setattr(quick_calls, "_LIBC", None)
    return bool(request.param)


def test_ready_says_whether_something_waits(pipe: tuple[int, int], libc: bool) -> None:
    read_end, write_end = pipe
    poll = QuickPoll(read_end)
    assert not poll.ready()
    os.write(write_end, b"x")
    assert poll.ready()
    assert poll.ready()  # still there until read
    os.read(read_end, 1)
    assert not poll.ready()


def test_access_and_file_id_agree_with_os(tmp_path: Path, libc: bool) -> None:
    target = tmp_path / "app.db"
    target.write_bytes(b"x")
    link = tmp_path / "link.db"
    link.symlink_to(target)
    st = os.stat(target)
    access = quick_calls.access_call()
    assert access(os.fsencode(target), os.F_OK) == 0 and access(os.fsencode(link), os.F_OK) == 0
    assert quick_calls.file_id(str(target)) == quick_calls.file_id(str(link)) == (st.st_dev, st.st_ino)
    assert access(os.fsencode(tmp_path / "missing"), os.F_OK) == -1
    assert quick_calls.file_id(str(tmp_path / "missing")) is None


def test_pread_reads_at_an_offset_and_reports_errors(tmp_path: Path, libc: bool) -> None:
    path = tmp_path / "data"
    path.write_bytes(bytes(range(100)))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert quick_calls.pread(fd, 10, 5) == bytes(range(5, 15))
        assert quick_calls.pread(fd, 10, 95) == bytes(range(95, 100))  # short at the end
        assert quick_calls.pread(fd, 10, 200) == b""
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        quick_calls.pread(fd, 10, 0)  # closed


def test_bound_calls_agree_with_os_and_follow_the_file(tmp_path: Path, libc: bool) -> None:
    path = tmp_path / "app.db-shm"
    path.write_bytes(bytes(range(100)))
    identity = quick_calls.FileIdentity(str(path))
    st = os.stat(path)
    assert identity() == identity() == (st.st_dev, st.st_ino)
    path.unlink()
    assert identity() is None
    path.write_bytes(bytes(range(50)))  # a new file under the same name
    assert identity() == (os.stat(path).st_dev, os.stat(path).st_ino)
    read = quick_calls.FixedRead(10)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read(fd) == bytes(range(10))
        assert read(fd, 45) == bytes(range(45, 50))  # short at the end
        assert read(fd, 10) == bytes(range(10, 20))  # the buffer's earlier bytes do not leak into a later read
        assert read(fd, 200) == b""
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        read(fd)  # closed


def test_read_start_reads_the_head_of_a_file_and_reports_errors(tmp_path: Path, libc: bool) -> None:
    path = tmp_path / "0000000000000001-0000000000000001.ltx"
    path.write_bytes(bytes(range(100)))
    assert quick_calls.read_start(os.fsencode(path), 10) == bytes(range(10))
    assert quick_calls.read_start(os.fsencode(path), 500) == bytes(range(100))  # short file
    with pytest.raises(FileNotFoundError):
        quick_calls.read_start(os.fsencode(tmp_path / "missing.ltx"), 10)
    with pytest.raises(IsADirectoryError):
        quick_calls.read_start(os.fsencode(tmp_path), 10)  # opened, then the read fails: closed again
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        quick_calls.read_start(os.fsencode(path), 10)
    assert len(os.listdir("/proc/self/fd")) == before  # every descriptor closed
