"""The Litestream primary's local files the covering check reads: the wal-index and the L0 LTX headers.

Both are read on the event loop after every write on the primary, so with few system calls: the
wal-index (`<db>-shm`) is kept open (`ShmFile`: a `stat`, then a `pread`), and the newest L0 LTX
(`.<db>-litestream/ltx/0/<min>-<max>.ltx`) is found by name from the last one seen (two `stat`
calls) and its header read once per txid. What the facts mean: `litestream_position`.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import NamedTuple

from .. import quick_calls

__all__ = ["LtxHead", "ShmFile", "WalEnd", "latest_l0", "read_head", "wal_end"]

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
_SHM_HEADER = struct.Struct("<IIIBBHII8s8s8s")  # WalIndexHdr, native (little-endian) byte order
_WAL_INDEX_HEADERS = 2 * _SHM_HEADER.size  # SQLite writes the header twice, one copy after the other
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

    def read(self) -> bytes:
        """The wal-index header's two copies (fewer bytes if the file is shorter)."""
        identity = self._file_id()
        if identity is None:
            raise FileNotFoundError(self.path)
        if self._fd is None or identity != self._identity:
            self.close()
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            opened = os.fstat(self._fd)
            self._identity = (opened.st_dev, opened.st_ino)
        return self._read(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def wal_end(database: Path, shm: ShmFile | None = None) -> WalEnd | None:
    """The committed end of `database`'s WAL from the wal-index header; None if it cannot be trusted.

    SQLite writes the header twice and readers accept it only when both copies match (a writer may
    be half-way through updating it); a mismatch or an uninitialised index is "don't know".
    """
    try:
        raw = shm.read() if shm is not None else _read(f"{database}-shm", _WAL_INDEX_HEADERS)
    except OSError:
        return None
    if len(raw) < _WAL_INDEX_HEADERS or raw[: _SHM_HEADER.size] != raw[_SHM_HEADER.size :]:
        return None
    version, _, _, initialised, _, page, max_frame, _, _, salts, _ = _SHM_HEADER.unpack(raw[: _SHM_HEADER.size])
    if version != 3007000 or not initialised or max_frame == 0:
        return None  # mxFrame 0: the WAL was just reset, so the commit is in the database file itself
    page_size = 65536 if page == 1 else page
    return WalEnd(salts, WAL_HEADER_SIZE + max_frame * (page_size + FRAME_HEADER_SIZE))


def _read(path: str, size: int) -> bytes:
    # Through libc with the GIL kept (`quick_calls`): on the event loop each `os` call lets the app's
    # database threads take the GIL and costs the loop its turn back (py-spy on a primary under
    # forwarded load: 17 us of GIL per write in `os.open`/`read`/`close` of new LTX headers).
    return quick_calls.read_start(os.fsencode(path), size)


def latest_l0(ltx_dir: Path, hint: int = 0, known: LtxHead | None = None) -> LtxHead | None:
    """The newest L0 LTX file in Litestream's local directory, read from its header; None if unreadable.

    Under load the directory holds a few hundred files (a sync every 10 ms, kept until L1 holds
    them and they are `Intervals.l0_retention` old; 1,500 with the 15 s retention of old), and
    listing 1,500 cost about 1 ms; so when the file of `hint` (the newest txid seen last time) is still
    there, the files after it are probed by name (`<txid>-<txid>.ltx`, one per sync) instead. A
    `known` head of the newest file is returned as it is (an LTX file never changes once renamed
    into place): two `stat` calls when nothing new was synced.
    """
    newest = _probe(ltx_dir, hint) if hint else None
    if newest is not None and known is not None and known.txid == newest[0]:
        return known
    if newest is None:
        try:
            newest = _list(ltx_dir)
        except OSError:
            return None
        if newest is None:
            return None
    return read_head(ltx_dir, newest[0], newest[1])


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


def _probe(ltx_dir: Path, hint: int) -> tuple[int, str] | None:
    # Names built as bytes on the encoded directory: no path join or encoding per probe (a write
    # on the primary makes two).
    directory = os.fsencode(ltx_dir)
    if not quick_calls.exists(b"%s/%016x-%016x.ltx" % (directory, hint, hint)):
        return None
    while quick_calls.exists(b"%s/%016x-%016x.ltx" % (directory, hint + 1, hint + 1)):
        hint += 1
    return hint, f"{hint:016x}-{hint:016x}.ltx"


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
