"""How far behind the primary this replica is, in seconds."""

from __future__ import annotations

import time
from collections import deque

from .txid import Txid

__all__ = ["LagMeter"]


class LagMeter:
    """Measures replica lag as the age of the oldest txid known to be on the primary but not here.

    Txids known to be committed on the primary arrive from forwarded responses, RPC replies and
    the periodic primary probe (`observe`). Lag is how long ago the oldest one this replica has
    not reached was first seen; 0 when the replica holds everything it has heard of. It needs no
    arithmetic on txids, so it means the same for Litestream and LiteFS.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[int, float]] = deque()
        self._now = time.monotonic

    def observe(self, primary_txid: Txid, position: Txid) -> None:
        """The primary is known to hold `primary_txid` now; this replica holds `position`."""
        self.settle(position)
        if primary_txid > position and (not self._pending or primary_txid > self._pending[-1][0]):
            self._pending.append((int(primary_txid), self._now()))

    def settle(self, position: Txid) -> None:
        """Forget every txid the replica has reached."""
        pending = self._pending
        while pending and pending[0][0] <= position:
            pending.popleft()

    def lag(self, position: Txid) -> float:
        """Seconds this replica has been behind a txid the primary holds (0 if caught up)."""
        self.settle(position)
        if not self._pending:
            return 0.0
        return max(0.0, self._now() - self._pending[0][1])
