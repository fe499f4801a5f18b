"""The records of a Linux inotify descriptor, parsed from the bytes one `read` returns (`inotify(7)`).

The follower guard and the replica's `-txid` watch read their descriptors themselves on hot paths
(before every replica response; about a hundred renames a second under forwarded writes), so they
parse the kernel's records here instead of building an event object and a path for each one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["CLOSE_WRITE", "CREATE", "DELETE", "IGNORED", "MODIFY", "MOVED_TO", "OVERFLOW", "READ_SIZE", "records"]

MODIFY, CLOSE_WRITE, MOVED_TO, CREATE, DELETE = 0x2, 0x8, 0x80, 0x100, 0x200
OVERFLOW, IGNORED = 0x4000, 0x8000  # records were lost; a watch ended
READ_SIZE = 64 * 1024
"""Bytes to read at once: many records, each 16 bytes and a name."""

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len, then `len` bytes of NUL-padded name


def records(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(watch descriptor, mask, name) of each record in `data`; the name is b"" for the watched directory itself."""
    offset, size = 0, _HEADER.size
    while offset + size <= len(data):
        wd, mask, _, length = _HEADER.unpack_from(data, offset)
        offset += size
        yield wd, mask, data[offset : offset + length].rstrip(b"\0")
        offset += length
