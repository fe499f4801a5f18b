"""Whether another process is writing, or waiting to write, a SQLite file: SQLite's PENDING byte.

A writer in SQLite's locking protocol (a Litestream follower applying a batch, or any app writing
the file) first takes a write lock on the PENDING byte, then waits for the SHARED range. While it
holds PENDING, new readers back off; readers that already hold SHARED keep it. A WAL-mode reader
holds SHARED for the whole life of its connection, so a pooled replica connection blocks the
follower until it is closed (replication-engines.md, follower pitfall 2). `WriterProbe` lets a
pool see that moment with one `fcntl(F_GETLK)` and close its connections.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading

from . import quick_calls

__all__ = ["PENDING_BYTE", "FileId", "WriterProbe", "file_id", "is_wal_file"]

PENDING_BYTE = 0x40000000
"""Offset of SQLite's PENDING lock byte (`sqlite3PendingByte`, the same in every build we ship with)."""

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86-64 and arm64: type, whence, start, len, pid

FileId = tuple[int, int]
"""A file's (device, inode): which generation of a replica's file a connection has open."""

file_id = quick_calls.file_id  # the (device, inode) a path names now, the GIL kept (`quick_calls`)


def is_wal_file(path: str) -> bool:
    """Whether the SQLite file at `path` is in WAL mode: its header's read and write versions are 2.

    False when it cannot be read or is not a SQLite file (then nothing is pooled on it).
    """
    try:
        with open(path, "rb") as file:
            header = file.read(20)
    except OSError:
        return False
    return len(header) == 20 and header.startswith(b"SQLite format 3\x00") and header[18:20] == b"\x02\x02"


class WriterProbe:
    """`writer_waiting(path)`: does another process hold the PENDING byte of the file `path` names?

    The probe needs a descriptor of the file, and it keeps each one open for the life of the
    process: closing any descriptor of a file drops every POSIX lock this process holds on it,
    SQLite's own included. That is one descriptor per generation of the replica's file (a new one
    only after a re-restore, which is rate-limited).
    """

    def __init__(self) -> None:
        self._fds: dict[FileId, int] = {}
        self._lock = threading.Lock()

    def writer_waiting(self, path: str, identity: FileId | None = None) -> bool:
        """True while another process writes the file or waits to (False if it cannot be told).

        `identity` is `file_id(path)` when the caller has just read it (saves a `stat`)."""
        identity = identity or file_id(path)
        if identity is None:
            return False
        fd = self._fds.get(identity)
        if fd is None:
            with self._lock:
                fd = self._fds.get(identity)
                if fd is None:
                    try:
                        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        return False
                    self._fds[identity] = fd
        query = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, PENDING_BYTE, 1, 0)
        try:
            held: int = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))[0]
        except OSError:
            return False
        # Our own process's locks never conflict, so anything reported is another process's write lock.
        return held != fcntl.F_UNLCK
