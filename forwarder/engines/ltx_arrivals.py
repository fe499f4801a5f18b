"""Waiting for the Litestream primary's local L0 to reach a txid: one look every millisecond, shared.

The covering check (`litestream_position`) waits here when a sync was running at its commit: that
sync's file says whether it took the commit. Every waiter shares one task, which looks at the
newest L0 file (two `access` probes by name) every `LOOK_INTERVAL` while anyone waits, and not at
all otherwise.

`LOOK_INTERVAL` is 1 ms and no less: uvloop (what the nodes run) keeps timers in whole
milliseconds, so `asyncio.sleep(0.0005)` there returns at once, and a loop of such sleeps spins
the event loop (measured: 77,000 rounds in 0.2 s, a whole core). The covering check used to ask
Litestream's sync-status in such a loop, one request after another, for as long as a sync ran.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["LOOK_INTERVAL", "LtxArrivals"]

logger = logging.getLogger("forwarder.engines.litestream")

LOOK_INTERVAL = 0.001
"""Seconds between two looks at the newest L0 file while anyone waits (uvloop's timer resolution)."""


class LtxArrivals:
    """`await arrivals.reached(txid, timeout)`: True once the newest L0 txid is at least `txid`.

    `newest()` returns the newest L0 txid now (None when the files cannot tell); it must not block.
    """

    def __init__(self, newest: Callable[[], int | None]) -> None:
        self._newest = newest
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}
        self._looker: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """How many callers wait right now (tests, debugging)."""
        return sum(len(futures) for futures in self._waiting.values())

    async def reached(self, txid: int, timeout: float) -> bool:
        """Whether the newest L0 txid reached `txid` within `timeout` seconds."""
        newest = self._newest()
        if newest is not None and newest >= txid:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(txid, []).append(future)
        if self._looker is None:
            self._looker = asyncio.create_task(self._look(), name="litestream-ltx-arrivals")
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        finally:
            self._forget(txid, future)
        return True

    async def aclose(self) -> None:
        """Stop looking; callers still waiting get False when their timeout ends."""
        looker, self._looker = self._looker, None
        if looker is not None:
            looker.cancel()
            await asyncio.wait([looker])

    def _forget(self, txid: int, future: asyncio.Future[None]) -> None:
        futures = self._waiting.get(txid)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiting[txid]

    async def _look(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(LOOK_INTERVAL)
                newest = self._newest()
                if newest is None:
                    continue
                for txid in [txid for txid in self._waiting if txid <= newest]:
                    for future in self._waiting.pop(txid):
                        if not future.done():
                            future.set_result(None)
        except Exception:  # never expected: a waiter then times out and falls back to POST /sync
            logger.exception("watching the local L0 LTX files failed")
        finally:
            if self._looker is asyncio.current_task():
                self._looker = None
