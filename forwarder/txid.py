"""The replication position: an unsigned 64-bit transaction id, shown as 16 lowercase hex digits."""

from __future__ import annotations

import re

from .exceptions import InvalidTxid

__all__ = ["Txid"]

_HEX16 = re.compile(r"[0-9a-f]{16}")
_MAX = (1 << 64) - 1


class Txid(int):
    """A replication position (the LTX txid of LiteFS and Litestream).

    It is an `int`, so positions compare with `>=`; never do arithmetic on them, because Litestream
    advances once per sync and LiteFS once per transaction. `str(txid)` is the wire form.

    >>> Txid.parse("00000000000003e8")
    Txid(0x00000000000003e8)
    >>> str(Txid(1000))
    '00000000000003e8'
    """

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Txid:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidTxid(f"a txid is an integer, got {type(value).__name__} {value!r}")
        if not 0 <= value <= _MAX:
            raise InvalidTxid(f"a txid is an unsigned 64-bit integer, got {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Txid:
        """Parse the 16-lowercase-hex-digit form; anything else raises `InvalidTxid`."""
        if not isinstance(text, str) or not _HEX16.fullmatch(text):
            shown = text if isinstance(text, str) and len(text) <= 40 else f"{str(text)[:40]}..."
            raise InvalidTxid(f"a txid is written as 16 lowercase hex digits, like 00000000000003e8; got {shown!r}")
        return cls(int(text, 16))

    def __str__(self) -> str:
        return f"{int(self):016x}"

    def __repr__(self) -> str:
        return f"Txid(0x{int(self):016x})"


ZERO = Txid(0)
