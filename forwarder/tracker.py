"""Per-node replication position and everyone waiting for it to advance."""

from __future__ import annotations

import asyncio
import heapq
import itertools

from .exceptions import ReplicationTimeout
from .txid import Txid

__all__ = ["Tracker"]


class _Expired(Exception):
    """A waiter's timer fired before its txid was reached."""


def _expire(future: asyncio.Future[Txid]) -> None:
    if not future.done():
        future.set_exception(_Expired())


class Tracker:
    """Owns this node's replication position and wakes the coroutines waiting on it.

    The engine calls `advance()` when the position moves (an inotify event, a LiteFS `tx` event);
    `wait_for()` suspends until the position reaches a txid. Waiters sit in a heap ordered by the
    txid they need, so one advance wakes exactly the reached ones, however many are waiting, and an
    idle tracker runs no code at all. Checking the position and registering the waiter happen with
    no `await` in between, so an advance cannot slip through between the two.

    >>> tracker = Tracker()
    >>> await tracker.wait_for(Txid(5), timeout=1.0)   # returns once something calls advance(5)
    """

    def __init__(self, position: Txid | None = None) -> None:
        self._position = position if position is not None else Txid(0)
        self._waiters: list[tuple[int, int, asyncio.Future[Txid]]] = []
        self._order = itertools.count()
        self._abandoned = 0  # waiters given up since the last compaction (drives compaction only)

    @property
    def position(self) -> Txid:
        """The txid the local replica holds."""
        return self._position

    @property
    def waiting(self) -> int:
        """How many coroutines are suspended in `wait_for()` right now."""
        return sum(1 for _, _, future in self._waiters if not future.done())

    def advance(self, position: Txid) -> None:
        """Record a new position and wake every waiter it satisfies. Older positions are ignored."""
        if position <= self._position:
            return
        self._position = position
        waiters = self._waiters
        while waiters and waiters[0][0] <= position:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(position)

    def reset(self, position: Txid) -> None:
        """Set the position even if it moves backwards (a re-restored replica, a failover)."""
        self._position = position
        self.advance(position)

    async def wait_for(self, txid: Txid, timeout: float | None) -> Txid:
        """Return the position once it is at least `txid`.

        Raises `ReplicationTimeout` after `timeout` seconds (None waits forever). Cancelling the
        caller removes its waiter; nothing is left behind.
        """
        if self._position >= txid:
            return self._position
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Txid] = loop.create_future()
        heapq.heappush(self._waiters, (int(txid), next(self._order), future))
        # A bare timer that fails the future, rather than asyncio.timeout(): no per-waiter Timeout
        # object or task cancellation, which is what makes waking 10,000 waiters cheap.
        timer = loop.call_later(timeout, _expire, future) if timeout is not None else None
        try:
            return await future
        except _Expired:
            raise ReplicationTimeout(txid, self._position, timeout or 0.0) from None
        finally:
            if timer is not None:
                timer.cancel()
            # Only advance() pops entries; a future that failed (timeout) or was cancelled (the
            # caller was) is still in the heap.
            if not future.done() or future.cancelled() or future.exception() is not None:
                future.cancel()
                self._abandon()

    def _abandon(self) -> None:
        # Removing from the middle of a heap is O(n), so cancelled waiters stay until popped; once
        # they are the majority, compact, so a storm of timeouts cannot grow the heap without bound.
        self._abandoned += 1
        if self._abandoned > 64 and self._abandoned * 2 > len(self._waiters):
            self._waiters = [item for item in self._waiters if not item[2].done()]
            heapq.heapify(self._waiters)
            self._abandoned = 0
