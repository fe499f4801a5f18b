"""The replication engine interface: positions, commit positions, change and primary signals."""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from ..txid import Txid

__all__ = ["Engine", "PositionListener", "PrimaryInfo", "PrimaryListener", "Role"]

logger = logging.getLogger("forwarder.engines")

PositionListener = Callable[[Txid], None]


class Role(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"


@dataclass(frozen=True)
class PrimaryInfo:
    """Who the primary is, as far as the engine knows.

    `role` is this node's role. `primary_id` names the primary node (its machine id or hostname)
    when the engine knows it; None means the static topology decides.
    """

    role: Role
    primary_id: str | None = None
    known: bool | None = field(default=None, compare=False)
    """For a replica with no `primary_id`: False when the engine knows there is no reachable
    primary right now (forget the old one); None when the engine has no say (static topology)."""


PrimaryListener = Callable[[PrimaryInfo], None]


class Engine(ABC):
    """A replication engine under one SQLite database.

    It answers four questions (DESIGN.md, "Engine"): the local `position`; on the primary a
    `commit_position()` that covers every commit finished before the call; a signal each time the
    position advances (listeners registered with `on_position`); and who the primary is
    (`primary`, with `on_primary_change` listeners for failover).

    Constructors do no I/O; `start()` connects and `aclose()` releases. Use as `async with engine:`.
    """

    name: str = "engine"

    def __init__(self) -> None:
        self._position_listeners: list[PositionListener] = []
        self._primary_listeners: list[PrimaryListener] = []

    @property
    @abstractmethod
    def position(self) -> Txid:
        """The txid the local database holds (on the primary: the latest committed one known)."""

    @property
    @abstractmethod
    def primary(self) -> PrimaryInfo:
        """This node's role and, when the engine knows it, the primary's id."""

    @abstractmethod
    async def commit_position(self) -> Txid:
        """On the primary: a txid that covers every commit finished before this call."""

    async def promise_position(self) -> Txid:
        """On the primary: like `commit_position()`, for a write no replica is waiting on right now.

        The engine may answer at once with a txid that covers the commit but comes to exist a little
        later (Litestream: up to two syncs later, `litestream_keeper`), rather than wait for one
        that exists. Default: `commit_position()`.
        """
        return await self.commit_position()

    @property
    def restored(self) -> bool:
        """False while a replica's local copy is not usable yet (its first restore has not finished)."""
        return True

    @property
    def problem(self) -> str | None:
        """What is wrong with the local copy, with the fix, or None (e.g. the app wrote to a replica's file)."""
        return None

    def local_writes(self, *, look: bool = True) -> int:
        """How many writes not made by the engine the local replica file has seen (checked now, without
        blocking; `look=False`: as of the last check, with no system call). Engines whose file cannot
        be written by the app (LiteFS) always say 0."""
        return 0

    @property
    def unreadable(self) -> str | None:
        """Why a replica read cannot be served from the local copy now, or None: "restoring" (not
        `restored`) or "modified" (a `problem`). One look, made before every replica read."""
        if not self.restored:
            return "restoring"
        return None if self.problem is None else "modified"

    @property
    def write_counter(self) -> Callable[[], int] | None:
        """`local_writes()` as one callable, called before each part of a replica's response; None
        when the app cannot write the local file (the engine does not override `local_writes`)."""
        return None if type(self).local_writes is Engine.local_writes else self.local_writes

    async def read_position(self) -> Txid:
        """The position asked of the engine now (on the primary: including commits made outside
        any request, by start-up DDL, a cron job or another process). Default: `position`."""
        return self.position

    async def start(self) -> None:  # noqa: B027 - optional hook, engines without I/O skip it
        """Connect to the engine and begin watching for changes."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Stop watching and release every resource."""

    def on_position(self, listener: PositionListener) -> None:
        """Call `listener(txid)` each time the local position advances."""
        self._position_listeners.append(listener)

    def on_primary_change(self, listener: PrimaryListener) -> None:
        """Call `listener(info)` each time the primary or this node's role changes."""
        self._primary_listeners.append(listener)

    def _publish_position(self, txid: Txid) -> None:
        # Each listener on its own: one that raises must neither stop the engine's watcher nor
        # keep the position from the others (the Tracker, whose waiters depend on it).
        for listener in self._position_listeners:
            try:
                listener(txid)
            except Exception:
                logger.exception("%s engine: position listener %r failed on %s", self.name, listener, txid)

    def _publish_primary(self, info: PrimaryInfo) -> None:
        for listener in self._primary_listeners:
            try:
                listener(info)
            except Exception:
                logger.exception("%s engine: primary listener %r failed on %s", self.name, listener, info)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
