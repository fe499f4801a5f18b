"""System calls that never block, made without letting another thread take the GIL.

Every system call made through Python's own modules releases the GIL and takes it back after.
On a small machine, with the app's database threads waiting for the GIL, taking it back cost far
more than the call: a `poll(0)` of the follower guard's inotify descriptor took about 40 µs on a
replica serving a SQLModel app (0.5 µs alone), and the primary's prompt txid, four calls of about
5 µs, took 200 µs at p50 between a write and its response. A call on a local file or a zero
timeout never waits for anything, so holding the GIL through it costs nobody anything: these go
to libc through `ctypes.PyDLL`, which keeps the GIL.

Linux on x86-64 and arm64 only (the layout of `struct stat` that `file_id` reads); anywhere else,
or when libc cannot be loaded, each falls back to the `os`/`select` call it stands for.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import select
import struct
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["FileIdentity", "FixedRead", "QuickPoll", "access_call", "file_id", "pread", "read_start"]

_STAT_HEAD = struct.Struct("QQ")  # st_dev, st_ino: the first two fields on both Linux ABIs here
_STAT_SIZE = 256  # more than sizeof(struct stat) on either


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


def _libc() -> Any | None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        # poll: no argtypes, the arguments are ctypes objects of the right types already (`QuickPoll`):
        # converting them costs more than the call (1.0 against 0.5 µs a call).
        libc.poll.restype = ctypes.c_int
        libc.access.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.stat.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.pread.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long]
        libc.pread.restype = ctypes.c_ssize_t
        libc.open.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.close.argtypes = [ctypes.c_int]
    except (AttributeError, OSError):
        return None  # an older glibc without a `stat` symbol, a libc without these names
    return libc


_LIBC = _libc()
_ONE_FD = ctypes.c_ulong(1)  # nfds_t
_NO_WAIT = ctypes.c_int(0)  # timeout, ms


def access_call() -> Callable[[bytes, int], int]:
    """`access(path, mode)` as libc has it (0, or -1 when refused or missing): the libc function itself,
    no Python frame of ours (the newest-LTX probe makes two per write on the primary), or an
    `os.access` fallback that answers the same."""
    if _LIBC is None:
        return _os_access
    function: Callable[[bytes, int], int] = _LIBC.access
    return function


def _os_access(path: bytes, mode: int) -> int:
    return 0 if os.access(path, mode) else -1


def file_id(path: str) -> tuple[int, int] | None:
    """The (device, inode) `path` names now, following symlinks; None if it does not exist."""
    return FileIdentity(path)()


def read_start(path: bytes, size: int) -> bytes:
    """The first `size` bytes of the local file `path` (fewer if it is shorter): open, pread, close.

    Raises `OSError` as `os.open` does (`FileNotFoundError` for a missing file)."""
    if _LIBC is None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, size)
        finally:
            os.close(fd)
    fd = _LIBC.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), os.fsdecode(path))
    try:
        return pread(fd, size, 0)
    finally:
        _LIBC.close(fd)


class FileIdentity:
    """`file_id(path)` for one path asked again and again (after every write on the primary): the
    name encoded and the result buffer made once. One thread at a time: the buffer is shared."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._encoded = os.fsencode(path)
        self._buffer = ctypes.create_string_buffer(_STAT_SIZE)

    def __call__(self) -> tuple[int, int] | None:
        if _LIBC is None:
            try:
                st = os.stat(self.path)
            except OSError:
                return None
            return st.st_dev, st.st_ino
        if _LIBC.stat(self._encoded, self._buffer) != 0:
            return None
        identity: tuple[int, int] = _STAT_HEAD.unpack_from(self._buffer)  # read in place: no copy of the struct
        return identity


class FixedRead:
    """`pread(fd, size, offset)` of one size asked again and again: the buffer made once. One thread at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffer = ctypes.create_string_buffer(size)

    def __call__(self, fd: int, offset: int = 0) -> bytes:
        if _LIBC is None:
            return os.pread(fd, self.size, offset)
        read = _LIBC.pread(fd, self._buffer, self.size, offset)
        if read < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        return self._buffer.raw[:read]  # a copy: the buffer is used again


def pread(fd: int, size: int, offset: int) -> bytes:
    """`os.pread(fd, size, offset)` on a regular file."""
    return FixedRead(size)(fd, offset)


class QuickPoll:
    """`ready()`: does `fd` have something to read right now? Never blocks, keeps the GIL.

    `ready` is the libc call itself with its arguments bound (no Python frame of ours: it runs
    before every replica response); it returns a true value when something is there, and -1
    (EINTR and the like) counts as ready: the caller's read then says what is there.
    """

    def __init__(self, fd: int) -> None:
        self._entry = _PollFd(fd, select.POLLIN, 0)
        self.ready: Callable[[], object]
        if _LIBC is None:
            fallback = select.poll()
            fallback.register(fd, select.POLLIN)
            self.ready = functools.partial(fallback.poll, 0)
        else:
            self.ready = functools.partial(_LIBC.poll, ctypes.byref(self._entry), _ONE_FD, _NO_WAIT)
