"""Read a Litestream follower's `<db>-txid` file."""

from __future__ import annotations

from pathlib import Path

from ..exceptions import InvalidTxid
from ..txid import Txid

__all__ = ["read_txid_file"]


def read_txid_file(path: Path) -> Txid | None:
    """The txid in a follower's `-txid` file; None if it is missing or unreadable."""
    try:
        return Txid.parse(path.read_text(encoding="ascii", errors="replace").strip())
    except (OSError, InvalidTxid):
        return None
