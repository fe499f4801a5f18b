"""An in-process engine for unit tests: a primary and its replicas share one `MemoryLog`."""

from __future__ import annotations

from ..txid import Txid
from .base import Engine, PrimaryInfo, Role

__all__ = ["MemoryEngine", "MemoryLog"]


class MemoryLog:
    """The replicated log that memory engines share: the primary commits, replicas apply.

    Replication is explicit, so a test decides exactly when a replica catches up:

    >>> log = MemoryLog()
    >>> primary, replica = MemoryEngine(log, Role.PRIMARY), MemoryEngine(log, Role.REPLICA)
    >>> txid = log.commit()          # a write on the primary
    >>> replica.apply(txid)          # the replica receives it (or: log.auto_apply = True)
    """

    def __init__(self, *, auto_apply: bool = False) -> None:
        self.head = Txid(0)
        self.auto_apply = auto_apply
        self.replicas: list[MemoryEngine] = []

    def commit(self) -> Txid:
        """Record one committed transaction on the primary and return its txid."""
        self.head = Txid(self.head + 1)
        if self.auto_apply:
            for replica in self.replicas:
                replica.apply(self.head)
        return self.head


class MemoryEngine(Engine):
    """An engine whose positions live in memory, driven by the test through `MemoryLog`."""

    name = "memory"

    def __init__(self, log: MemoryLog, role: Role, *, primary_id: str | None = None) -> None:
        super().__init__()
        self.log = log
        self._role = role
        self._primary_id = primary_id
        self._position = Txid(0)
        if role is Role.REPLICA:
            log.replicas.append(self)

    @property
    def position(self) -> Txid:
        return self.log.head if self._role is Role.PRIMARY else self._position

    @property
    def primary(self) -> PrimaryInfo:
        return PrimaryInfo(self._role, self._primary_id)

    async def commit_position(self) -> Txid:
        return self.log.head

    def apply(self, txid: Txid | None = None) -> None:
        """Make this replica hold `txid` (default: everything the primary committed)."""
        target = self.log.head if txid is None else txid
        if target > self._position:
            self._position = target
            self._publish_position(target)

    def fail_over(self, role: Role, primary_id: str | None) -> None:
        """Simulate a failover: change this node's role and the primary it follows."""
        self._role, self._primary_id = role, primary_id
        self._publish_primary(self.primary)
