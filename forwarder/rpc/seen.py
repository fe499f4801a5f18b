"""Which RPC request ids already ran: at most once, across restarts of the primary and failovers.

With a database, ids live in the node's own SQLite file, in `_forwarder_rpc_calls(id, expires)`.
An id is inserted and committed *before* the function runs, so a crash after that means "not
run", never "run twice"; and because the table is in the replicated database, a new primary after
a failover has the ids its predecessor recorded (up to what replication had shipped, the same as
for the function's own writes). Rows are pruned once their signature has expired: past `expires`
the signature itself is refused. Without a database (a Forwarder built in a test) the ids are kept
in memory only, for the life of the process.
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from typing import Protocol

import anyio

from ..database import Database

__all__ = ["MemorySeenCalls", "SQLiteSeenCalls", "SeenCalls", "seen_calls_for"]

TABLE = "_forwarder_rpc_calls"
PRUNE_INTERVAL = 10.0
"""Seconds between deletions of expired ids."""


class SeenCalls(Protocol):
    async def claim(self, request_id: str, expires: int) -> bool:
        """Record `request_id` (valid until unix time `expires`); False if it was already recorded."""
        ...


class MemorySeenCalls:
    """Ids in this process's memory (lost on restart): only for a Forwarder without a database."""

    def __init__(self, *, max_ids: int = 1_000_000) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._max_ids = max_ids

    async def claim(self, request_id: str, expires: int) -> bool:
        now = time.time()
        seen = self._seen
        while seen and next(iter(seen.values())) < now:
            seen.popitem(last=False)
        if request_id in seen:
            return False
        seen[request_id] = expires
        seen.move_to_end(request_id)
        while len(seen) > self._max_ids:
            seen.popitem(last=False)
        return True


class SQLiteSeenCalls:
    """Ids in `_forwarder_rpc_calls` of the node's database, committed before the call runs."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._created = False
        self._pruned = 0.0

    def _claim(self, request_id: str, expires: int) -> bool:
        now = time.time()
        with self._database.write() as conn:
            if not self._created:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, expires INTEGER NOT NULL)")
            if now - self._pruned > PRUNE_INTERVAL:
                conn.execute(f"DELETE FROM {TABLE} WHERE expires < ?", (int(now),))
            try:
                conn.execute(f"INSERT INTO {TABLE} (id, expires) VALUES (?, ?)", (request_id, expires))
            except sqlite3.IntegrityError:
                return False  # the transaction still commits the table and the pruning
        self._created = True
        if now - self._pruned > PRUNE_INTERVAL:
            self._pruned = now
        return True

    async def claim(self, request_id: str, expires: int) -> bool:
        return await anyio.to_thread.run_sync(self._claim, request_id, expires)


def seen_calls_for(database: Database | None) -> SeenCalls:
    """The durable store when the node has a database, else memory."""
    return MemorySeenCalls() if database is None else SQLiteSeenCalls(database)
