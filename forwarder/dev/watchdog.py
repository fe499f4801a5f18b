"""The local cluster's watchdog: drives each replica's `ReplicaSupervisor`, the same one `forwarder replica` runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..replica.supervisor import STALL_LIMIT, WATCH_INTERVAL

if TYPE_CHECKING:
    from .cluster import NodeProcess

__all__ = ["STALL_LIMIT", "WATCHDOG_INTERVAL", "Watchdog"]

WATCHDOG_INTERVAL = WATCH_INTERVAL
"""Seconds between the watchdog's looks at every follower."""


class Watchdog:
    """Looks at every replica's follower each `WATCHDOG_INTERVAL`; its supervisor restores the copy
    again (into a new generation, swapped in atomically) when the follower died, stalled while the
    primary was ahead (Litestream issue #1515, pitfall 4), or its file was written by the app."""

    def __init__(self, nodes: Sequence[NodeProcess]) -> None:
        self.nodes = nodes

    async def run(self) -> None:
        """Watch until cancelled."""
        supervisors = [node.follower for node in self.nodes if node.follower is not None]
        for supervisor in supervisors:
            supervisor.guard.start()
        try:
            while True:
                await asyncio.sleep(WATCHDOG_INTERVAL)
                # Together: one node's restore (a second or more) must not delay the others' looks.
                await asyncio.gather(*(self._watch(node) for node in self.nodes))
        finally:
            for supervisor in supervisors:
                with contextlib.suppress(Exception):
                    supervisor.guard.close()

    async def _watch(self, node: NodeProcess) -> None:
        if node.follower is None or node.lock.locked():
            return  # being restarted by the cluster itself
        async with node.lock:
            await node.follower.watch_once()
