"""The Litestream primary's local files the covering check reads: the wal-index and the L0 LTX headers.

Both are read on the event loop after every write on the primary, so with few system calls: the
wal-index (`<db>-shm`) is kept open (`ShmFile`: a `stat`, then a `pread`), and the newest L0 LTX
(`.<db>-litestream/ltx/0/<min>-<max>.ltx`) is found by name from the last one seen (`NewestL0`: two
`access` calls) and its header read once per txid. What the facts mean: `litestream_position`.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import NamedTuple

from .. import quick_calls

__all__ = ["LtxHead", "NewestL0", "ShmFile", "WalEnd", "latest_l0", "read_head", "wal_end"]

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
_SHM_HEADER = struct.Struct("<IIIBBHII8s8s8s")  # WalIndexHdr, native (little-endian) byte order
_SHM_FIELDS = struct.Struct("<I8xBxHI4x8x8s8x")  # the same, only iVersion, isInit, szPage, mxFrame, aSalt
_HEADER_SIZE = _SHM_HEADER.size
_WAL_INDEX_HEADERS = 2 * _HEADER_SIZE  # SQLite writes the header twice, one copy after the other
_new_tuple = tuple.__new__
_F_OK = os.F_OK
_LTX_HEADER = struct.Struct(">4sIIIQQqQqq8s")  # LTX v0.5 header, big-endian, up to the WAL salts


class WalEnd(NamedTuple):
    """Where the WAL's last commit ends, and which WAL (its salts) the offset is in.

    A named tuple, not a frozen dataclass: one is made after every write on the primary, and a
    frozen dataclass's `__init__` costs about three times as much."""

    salts: bytes
    end: int


class LtxHead(NamedTuple):
    """What an L0 LTX file holds: its txid and the byte range of which WAL."""

    txid: int
    salts: bytes
    end: int


class ShmFile:
    """`<database>-shm`, kept open: `stat` then `pread`, two system calls, instead of open, read, close.

    The file is reopened whenever the path names another file (SQLite deletes it when the last
    connection closes, and the next one creates it again). The stat follows the commit, so the
    file it names held the commit's wal-index, or a newer one (whose WAL then has other salts).
    """

    def __init__(self, database: Path) -> None:
        self.path = f"{database}-shm"
        self._fd: int | None = None
        self._identity = (0, 0)
        # Both calls keep the GIL (`quick_calls`), their name and buffers made once: this runs on the
        # event loop after every write (`wal_end` 6.5 us in a loop, 10.0 with a new name and buffer per call).
        self._file_id = quick_calls.FileIdentity(self.path)
        self._read = quick_calls.FixedRead(_WAL_INDEX_HEADERS)

    def wal_end(self) -> WalEnd | None:
        """The committed end of the WAL from the wal-index header; None if it cannot be trusted.

        SQLite writes the header twice and readers accept it only when both copies match (a writer may
        be half-way through updating it); a mismatch or an uninitialised index is "don't know".
        """
        identity = self._file_id()
        if identity is None:
            return None
        try:
            if self._fd is None or identity != self._identity:
                self.close()
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                opened = os.fstat(self._fd)
                self._identity = (opened.st_dev, opened.st_ino)
            raw = self._read(self._fd)
        except OSError:
            return None
        if len(raw) < _WAL_INDEX_HEADERS or raw[:_HEADER_SIZE] != raw[_HEADER_SIZE:]:
            return None
        version, initialised, page, max_frame, salts = _SHM_FIELDS.unpack_from(raw)
        if version != 3007000 or not initialised or max_frame == 0:
            return None  # mxFrame 0: the WAL was just reset, so the commit is in the database file itself
        # tuple.__new__, not WalEnd(...): a named tuple's own __new__ is a Python function (a frame per write).
        return _new_tuple(
            WalEnd, (salts, WAL_HEADER_SIZE + max_frame * ((65536 if page == 1 else page) + FRAME_HEADER_SIZE))
        )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def wal_end(database: Path, shm: ShmFile | None = None) -> WalEnd | None:
    """The committed end of `database`'s WAL from the wal-index header; None if it cannot be trusted
    (`ShmFile.wal_end`, with `shm` or a file opened for this one read)."""
    if shm is not None:
        return shm.wal_end()
    once = ShmFile(database)
    try:
        return once.wal_end()
    finally:
        once.close()


def _read(path: str, size: int) -> bytes:
    # Through libc with the GIL kept (`quick_calls`): on the event loop each `os` call lets the app's
    # database threads take the GIL and costs the loop its turn back (py-spy on a primary under
    # forwarded load: 17 us of GIL per write in `os.open`/`read`/`close` of new LTX headers).
    return quick_calls.read_start(os.fsencode(path), size)


class NewestL0:
    """The newest L0 LTX file of one directory, looked for again and again (after every write on the primary).

    Under load the directory holds a few hundred files (a sync every 10 ms, kept until L1 holds them
    and they are `Intervals.l0_retention` old; 1,500 with the 15 s retention of old), and listing
    1,500 cost about 1 ms; so when the file of `hint` (the newest txid seen last time) is still there,
    the files after it are probed by name (`<txid>-<txid>.ltx`, one per sync) instead. While nothing
    new is synced a look is two `access` calls on names made once per txid, straight to libc
    (`quick_calls.access_call`), and the header known for the newest (`head`) is returned as it is:
    an LTX file never changes once renamed into place.
    """

    def __init__(self, ltx_dir: Path, hint: int = 0, known: LtxHead | None = None) -> None:
        self.ltx_dir = ltx_dir
        self.hint = hint
        self.head = known
        self._pattern = os.fsencode(ltx_dir) + b"/%016x-%016x.ltx"
        self._access = quick_calls.access_call()
        self._named = -1  # the hint `_names` are the probe names of
        self._names = (b"", b"")  # `hint`'s file and the next one's

    def __call__(self) -> LtxHead | None:
        """The newest file's header, or None if it cannot be read (then the next look starts from the same hint)."""
        hint, newest = self.hint, None
        if hint:
            if self._named != hint:
                self._named, self._names = hint, (self._name(hint), self._name(hint + 1))
            access = self._access
            this, following = self._names
            if access(this, _F_OK) == 0:
                newest = hint
                if access(following, _F_OK) == 0:
                    newest += 1
                    while access(self._name(newest + 1), _F_OK) == 0:
                        newest += 1
        known = self.head
        if newest is not None and known is not None and known.txid == newest:
            return known
        if newest is not None:
            head = read_head(self.ltx_dir, newest)
        else:
            try:
                listed = _list(self.ltx_dir)
            except OSError:
                return None
            if listed is None:
                return None
            head = read_head(self.ltx_dir, *listed)
        if head is not None:
            self.hint, self.head = head.txid, head
        return head

    def _name(self, txid: int) -> bytes:
        return self._pattern % (txid, txid)


def latest_l0(ltx_dir: Path, hint: int = 0, known: LtxHead | None = None) -> LtxHead | None:
    """The newest L0 LTX file in Litestream's local directory, read from its header; None if unreadable.

    One look of `NewestL0` (what the covering check keeps for its many looks): from `hint`'s file if
    it is still there, else from a listing; a `known` head of the newest file is returned as it is.
    """
    return NewestL0(ltx_dir, hint, known)()


def read_head(ltx_dir: Path, txid: int, name: str | None = None) -> LtxHead | None:
    """The header of L0 txid `txid`'s file (`name`, else its usual one); None if it is not a WAL range
    or cannot be read (removed by L0 retention, say)."""
    try:
        raw = _read(os.path.join(ltx_dir, name or f"{txid:016x}-{txid:016x}.ltx"), _LTX_HEADER.size)
    except OSError:
        return None
    if len(raw) < _LTX_HEADER.size:
        return None
    magic, _, _, _, _, max_txid, _, _, wal_offset, wal_size, salts = _LTX_HEADER.unpack(raw)
    if magic != b"LTX1" or max_txid != txid or wal_size <= 0:
        return None  # wal_size 0: a snapshot or compaction, not a WAL range
    return LtxHead(max_txid, salts, wal_offset + wal_size)


def _list(ltx_dir: Path) -> tuple[int, str] | None:
    newest: tuple[int, str] | None = None
    with os.scandir(ltx_dir) as entries:
        for entry in entries:
            name = entry.name
            if len(name) != 37 or not name.endswith(".ltx"):
                continue  # temporary files and anything else
            try:
                max_txid = int(name[17:33], 16)
            except ValueError:
                continue
            if newest is None or max_txid > newest[0]:
                newest = (max_txid, name)
    return newest
