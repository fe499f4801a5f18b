"""The local cluster's watchdog: restores a follower again when it died, stalled, or its file was written."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..engines.follower_guard import FollowerGuard
from ..exceptions import EngineError
from ..txid import Txid
from .processes import ClusterError

if TYPE_CHECKING:
    from .cluster import NodeProcess
    from .replication import Replicator

__all__ = ["STALL_LIMIT", "WATCHDOG_INTERVAL", "Watchdog"]

logger = logging.getLogger("forwarder.dev.cluster")

WATCHDOG_INTERVAL = 0.25
"""Seconds between the watchdog's looks at every follower."""
STALL_LIMIT = 5.0
"""Seconds a follower may stay behind the primary without advancing before the watchdog restores it again
(pitfall 4)."""


class Watchdog:
    """Looks at every replica's follower each `WATCHDOG_INTERVAL` and restores it again when needed."""

    def __init__(self, replicator: Replicator, nodes: Sequence[NodeProcess]) -> None:
        self.replicator = replicator
        self.nodes = nodes

    async def run(self) -> None:
        """Restore again any follower that died or stopped advancing (Litestream issue #1515, pitfall 4),
        and any replica file something other than its follower wrote to (the app on a writable URL)."""
        behind_since: dict[str, float] = {}
        self._last_position: dict[str, Txid | None] = {}
        guards = {node.id: FollowerGuard(node.database) for node in self.nodes}
        for guard in guards.values():
            guard.start()
        try:
            while True:
                await asyncio.sleep(WATCHDOG_INTERVAL)
                await self._watch_once(behind_since, guards)
        finally:
            for guard in guards.values():
                guard.close()

    async def _watch_once(self, behind_since: dict[str, float], guards: dict[str, FollowerGuard]) -> None:
        try:
            primary_txid = await self.replicator.txid()
        except EngineError as exc:
            logger.debug("watchdog: primary position unknown: %s", exc)
            return
        for node in self.nodes:
            now = time.monotonic()
            follower = node.follower
            guard = guards[node.id]
            guard.check()
            if follower is None or follower.paused or node.lock.locked():
                behind_since.pop(node.id, None)  # being restarted or deliberately paused
                continue
            reason = None
            position = follower.position()
            # A follower that advanced since the last look is catching up, not stalled: with a slow
            # store (s3, a 250 ms follow interval) one under steady writes is behind at every look.
            if position != self._last_position.get(node.id):
                self._last_position[node.id] = position
                behind_since.pop(node.id, None)
            if guard.problem is not None:
                reason = "its database file was written by something other than its follower"
            elif not follower.running:
                reason = f"its follower exited with status {follower.returncode}"
            elif position is not None and position >= primary_txid:
                behind_since.pop(node.id, None)
            elif now - behind_since.setdefault(node.id, now) > STALL_LIMIT:
                reason = f"its follower stayed behind the primary ({position} < {primary_txid}) for {STALL_LIMIT:g}s"
            if reason is None:
                continue
            behind_since.pop(node.id, None)
            logger.warning("watchdog: restoring %s again: %s", node.id, reason)
            try:
                async with node.lock:
                    await follower.stop()
                    await follower.start()
                guard.check()
            except ClusterError as exc:
                logger.error("watchdog: %s could not be restored (will retry): %s", node.id, exc)
