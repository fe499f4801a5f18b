"""Make every txid the Litestream primary promised come to exist: one tiny write when nothing else would.

`CoveringCheck.promise()` answers `newest + 2` for a commit the newest L0 LTX does not hold yet.
That txid holds the commit (see `litestream_position`), and it exists as soon as Litestream has
synced twice more; but Litestream writes an LTX only when the WAL has frames no LTX holds. If the
sync that was running when the commit landed took the commit with it (txid `newest + 1`), and
nothing is written after, Litestream has nothing more to sync and `newest + 2` would never appear:
a replica waiting on it would wait until its timeout.

`TxidKeeper` closes that gap. It remembers the highest txid promised. Once no new promise has come
for `QUIET` seconds (while promises keep coming, commits keep coming, and Litestream keeps syncing
them), it looks: when the newest L0 LTX is below the promise and the WAL holds nothing that LTX
does not (its end is the newest LTX's end), it writes one row of Litestream's own bookkeeping table
the way Litestream does after a checkpoint (`_litestream_seq`, `BUMP`): new WAL frames, so the next
sync makes the next txid. It looks again every `RECHECK` seconds until the promise exists.

Bounded: it runs only while a promise is outstanding (no task, no reads, no writes otherwise);
it writes only when the WAL is seen idle (or nothing moved for `STALL` seconds), at most
`MAX_BUMPS` times without the newest txid moving, and gives a promise up `GIVE_UP` seconds after
the last one (Litestream stopped: replicas time out and apply their lag policy, as for any stall).
Closing it keeps the outstanding promise for up to `CLOSE_WAIT` seconds, then stops it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from contextlib import closing

from .litestream_position import CoveringCheck
from .ltx_arrivals import LOOK_INTERVAL

__all__ = ["BUMP", "TxidKeeper"]

logger = logging.getLogger("forwarder.engines.litestream")

QUIET = 0.01
"""Seconds without a new promise before the keeper reads any file: about one monitor interval, the time
the sync that takes a lone write needs anyway; under load, lulls that long are rare, so the writes
that keep coming, not the keeper, make the promised txids."""

RECHECK = 0.002
"""Seconds between looks while a promise is outstanding and the writes have stopped."""

STALL = 0.1
"""Seconds without the newest txid moving after which the keeper writes even if the WAL does not look idle
(a WAL it cannot read right now, or one just restarted), and after which it looks only this often."""

MAX_BUMPS = 3
"""Writes in a row without the newest txid moving; then the keeper only watches (Litestream is not syncing)."""

GIVE_UP = 60.0
"""Seconds after the last promise at which an outstanding one is given up (logged)."""

CLOSE_WAIT = 1.0
"""Seconds `aclose()` gives an outstanding promise to be kept: a replica may be waiting on it right now."""

BUMP = "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET seq = seq + 1"
"""What Litestream itself runs to put a frame in the WAL (`bumpLitestreamSeq`, v0.5): no schema of ours."""


class TxidKeeper:
    """The keeper of this module's docstring, for the database of one `CoveringCheck`."""

    def __init__(self, check: CoveringCheck) -> None:
        self.check = check
        self.promised = 0
        self.bumps = 0  # writes made so far (tests, benchmarks)
        self.failed: str | None = None  # why a write failed: the engine then stops promising
        self._last = 0.0  # monotonic time of the latest promise
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def promise(self, txid: int) -> None:
        """Make `txid` exist (soon): start keeping it unless a higher one is kept already."""
        self.promised = max(self.promised, txid)
        self._last = time.monotonic()
        if self._task is None:
            self._task = asyncio.create_task(self._keep(), name=f"litestream-keeper {self.check.database}")

    async def aclose(self) -> None:
        """Stop, after keeping the outstanding promise for up to `CLOSE_WAIT` s (Litestream outlives the app)."""
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait([task], timeout=CLOSE_WAIT)
        finally:
            task.cancel()
            await asyncio.wait([task])
            self._task = None

    async def _keep(self) -> None:
        newest_seen: int | None = None
        moved = time.monotonic()
        bumps = 0  # since the newest txid last moved
        try:
            while True:
                wait = self._last + QUIET - time.monotonic()
                if wait > 0:
                    # Never under 1 ms: uvloop's timers are whole milliseconds, and a shorter sleep spins.
                    await asyncio.sleep(max(wait, LOOK_INTERVAL))
                    continue
                end, head = self.check.state()
                newest = None if head is None else head.txid
                if newest is not None and newest >= self.promised:
                    return  # kept (no await since the look: a promise made meanwhile is seen here)
                now = time.monotonic()
                if newest != newest_seen:
                    newest_seen, moved, bumps = newest, now, 0
                if now - self._last > GIVE_UP:
                    logger.warning(
                        "txid %016x was promised for %s but Litestream's newest is %s after %gs; giving it up "
                        "(is `litestream replicate` running?)",
                        self.promised,
                        self.check.database,
                        "none" if newest is None else f"{newest:016x}",
                        GIVE_UP,
                    )
                    return
                idle = end is not None and head is not None and end.salts == head.salts and head.end >= end.end
                stalled = now - moved > STALL
                if (idle or stalled) and bumps < MAX_BUMPS:
                    bumps += 1
                    moved = now  # a stalled bump is not repeated before another STALL
                    if not await self._bump():
                        return
                await asyncio.sleep(STALL if stalled else RECHECK)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _bump(self) -> bool:
        try:
            await asyncio.to_thread(self._write)
        except sqlite3.Error as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            logger.error(
                "cannot write %s to make promised txid %016x exist (%s); answering writes with POST /sync from now on",
                self.check.database,
                self.promised,
                self.failed,
            )
            return False
        self.bumps += 1
        return True

    def _write(self) -> None:
        with closing(sqlite3.connect(self.check.database, timeout=5, isolation_level=None)) as conn:
            # No fsync while holding the write lock: Litestream reads the WAL file, durable or not.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(BUMP)
