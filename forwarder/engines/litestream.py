"""The Litestream engine: `litestream replicate` on the primary, a `restore -f` follower on each replica.

Primary: `promise_position()` (direct writes) answers from local files alone, the newest L0 txid
or `newest + 2`, whose existence the keeper sees to (`litestream_keeper`); `commit_position()`
(writes a replica waits on) works out the first txid that holds every commit so far, waiting for
the file of a sync in progress (`litestream_position`). When the files cannot tell, both ask
Litestream to sync (`POST /sync`, wait=true), and concurrent callers share those syncs (group commit).

Replica: the follower writes its position to `<database>-txid` after the pages are on disk; the
engine publishes each new one (`txid_watch`, which also follows the generation symlink of a
re-restore), and notices writes by anything but the follower (`follower_guard`).

Facts and pitfalls behind these choices: `shared/reference/replication-engines.md`, section 1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..exceptions import EngineError, InvalidTxid, PositionFormatError
from ..txid import Txid
from .base import Engine, PrimaryInfo, Role
from .control_socket import ControlSocket
from .follower_guard import CHECK_INTERVAL, FollowerGuard
from .litestream_config import litestream_binary, replicate_config
from .litestream_keeper import QUIET, TxidKeeper
from .litestream_position import CoveringCheck
from .txid_watch import TxidWatch

__all__ = ["LitestreamEngine", "litestream_binary", "replicate_config"]

logger = logging.getLogger("forwarder.engines.litestream")

QUIET_GAP = QUIET
"""Seconds since the previous `promise_position()` above which it asks sync-status once (see there):
the keeper's own `QUIET`.

A promise (`newest + 2`) made with no write following within `QUIET` is kept by the keeper's write,
so a primary writing every 10-50 ms paid one keeper write, one more LTX file (an S3 PUT on a bucket)
and one more batch for every follower, per write: 57 keeper writes for 60 writes 20 ms apart with a
50 ms gap, 4 with this one (`tests/e2e/test_litestream_engine.py`, writes 20 ms apart).
Past that gap a control-socket round trip is cheap, and `newest + 1` also spares a read with the
cookie soon after a lone write a sync's wait (23.6 against 33.0 ms p50 from local files alone,
`bench/prompt_txid.py`). Closer writes keep the prompt path: asked for every write, sync-status cost
a third of the throughput at 8 connections and 3-4 ms p50 at 1 on a loaded machine
(`bench/primary_cost.py`, `forwarder, status`), and there the next write makes the promised txid."""


class LitestreamEngine(Engine):
    """Replication positions from Litestream 0.5 (`replicate` + control socket, `restore -f` follower).

    On the primary, `socket_path` is Litestream's control socket (default:
    `<database dir>/litestream.sock`, the same default as `ForwarderSettings.socket_path`). On a
    replica, `database` is the follower's output file; its position is read from `<database>-txid`.

    >>> engine = LitestreamEngine(Path("data/app.db"), Role.REPLICA)
    >>> async with engine:
    ...     engine.on_position(tracker.advance)
    """

    name = "litestream"

    def __init__(
        self, database: Path, role: Role, *, socket_path: Path | None = None, primary_id: str | None = None
    ) -> None:
        super().__init__()
        # Litestream identifies a database by its absolute path in `POST /sync` and `GET /txid`.
        self.database = Path(database).absolute()
        self.socket_path = Path(socket_path) if socket_path is not None else self.database.parent / "litestream.sock"
        self.txid_path = self.database.with_name(self.database.name + "-txid")
        self._role = role
        self._primary_id = primary_id
        self._position = Txid(0)
        # Primary: the control-socket client and the group-commit state (see commit_position).
        self._client: ControlSocket | None = None
        self._queued: asyncio.Future[Txid] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self.covering: CoveringCheck | None = CoveringCheck(self.database)  # None: always POST /sync
        self.keeper = TxidKeeper(CoveringCheck(self.database))  # makes promise_position()'s answers exist
        self.quiet_gap = QUIET_GAP
        self._last_promise = 0.0
        # Replica: the follower's position, and the guard against writes by the app.
        self._watch = TxidWatch(self.database, self._set_position)
        self._guard = FollowerGuard(self.database)
        self._guard_task: asyncio.Task[None] | None = None

    @property
    def position(self) -> Txid:
        return self._position

    @property
    def primary(self) -> PrimaryInfo:
        return PrimaryInfo(self._role, self._primary_id)

    @property
    def restored(self) -> bool:
        """On a replica: whether the follower has finished its (first, or latest) restore (`-txid` exists)."""
        return self._role is Role.PRIMARY or self._watch.restored

    @property
    def problem(self) -> str | None:
        return None if self._role is Role.PRIMARY else self._guard.problem

    @property
    def unreadable(self) -> str | None:
        # `Engine.unreadable` in one frame: it runs before every replica read.
        if self._role is Role.PRIMARY:
            return None
        if not self._watch.restored:
            return "restoring"
        return None if self._guard.modified_at is None else "modified"

    def local_writes(self, *, look: bool = True) -> int:
        return 0 if self._role is Role.PRIMARY else self._guard.check() if look else self._guard.writes

    @property
    def write_counter(self) -> Callable[[], int] | None:
        # The guard's own check: no frame of the engine's on the way (it runs twice per response).
        return None if self._role is Role.PRIMARY or not self._guard.watching else self._guard.check

    async def start(self) -> None:
        """Primary: read the current txid if the socket is already up. Replica: start watching `-txid`."""
        if self._role is Role.PRIMARY:
            try:
                await self.read_position()
            except EngineError as exc:
                # Litestream may start after the app; the first /sync will tell if it never does.
                logger.info("Litestream position not read at start (it stays 0 until the first sync): %s", exc)
            return
        if self._watch.started:
            return
        self._watch.start()
        if self._guard.start():
            self._guard_task = asyncio.create_task(self._check_guard(), name=f"litestream-guard {self.database}")

    async def _check_guard(self) -> None:
        # Requests check before each response; this catches writes made outside any request.
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            self._guard.check()

    async def aclose(self) -> None:
        """Stop the watcher, the syncer and the keeper, and close the socket client and the files."""
        await self.keeper.aclose()
        self.keeper.check.close()
        if self.covering is not None:
            await self.covering.aclose()
        await self._watch.aclose()
        tasks = [task for task in (self._syncer, self._guard_task) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # wait(), not await: our own cancellation still propagates, the tasks' does not.
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                logger.error("%s had stopped on an error: %r", task.get_name(), error)
        self._syncer = self._guard_task = None
        self._guard.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- primary ------------------------------------------------------------------------------

    async def commit_position(self) -> Txid:
        """A txid covering every commit finished before this call that exists (primary only): the first L0 file
        that holds the commit, waited for (`CoveringCheck.txid`), when the local files can tell.

        Else group commit: one sync runs, one is queued; a caller joins the queued one (the running one may predate it).
        """
        if self._role is not Role.PRIMARY:
            raise self._not_primary("commit_position()")
        answer = None if self.covering is None else await self.covering.txid()
        settled = self._settle(answer)
        return settled if settled is not None else await self._group_sync()

    async def _group_sync(self) -> Txid:
        if self._queued is None:
            self._queued = asyncio.get_running_loop().create_future()
            if self._syncer is None:
                self._syncer = asyncio.create_task(self._run_syncs(), name="litestream-sync")
        # shield: a cancelled caller must not cancel the sync others share.
        return await asyncio.shield(self._queued)

    async def promise_position(self) -> Txid:
        """A txid covering every commit finished before this call, without waiting on Litestream (primary only).

        The newest L0 txid if it holds the WAL's end, else `newest + 2`, which the keeper makes exist
        (`litestream_keeper`). On a quiet primary (no call for `quiet_gap` s) one sync-status first,
        so that a lone write gets `newest + 1` when no sync runs. When the files cannot tell (the WAL
        just restarted, over `MAX_PENDING_WAL` not synced yet) or the keeper cannot write: `POST /sync`,
        shared by every caller in that window (no wait for a running sync's file: nobody waits on
        this answer right now, and the case is rare).
        """
        if self._role is not Role.PRIMARY:
            raise self._not_primary("promise_position()")
        now = time.monotonic()
        quiet, self._last_promise = now - self._last_promise > self.quiet_gap, now
        covering = self.covering
        if covering is not None and self.keeper.failed is None:
            answer = await covering.promise_after_status(self._request) if quiet else covering.promise()
        else:
            answer = None
        settled = self._settle(answer)
        return settled if settled is not None else await self._group_sync()

    def _settle(self, answer: tuple[int, bool] | None) -> Txid | None:
        """The txid of a covering answer, a promise handed to the keeper to make; None when there is no
        answer, or it is a promise the keeper cannot keep (then `POST /sync`)."""
        if answer is None:
            return None
        txid, promised = answer
        if promised:
            if self.keeper.failed is not None:
                return None
            self.keeper.promise(txid)
        if txid == self._position:
            return self._position  # under load, a run of writes shares one txid: nothing to check or publish
        return self._advance({"txid": txid})

    def _not_primary(self, what: str) -> EngineError:
        return EngineError(
            f"{what} is only available on the primary; this Litestream engine runs as a "
            f"replica of {self.database} (its position comes from {self.txid_path.name})"
        )

    async def read_position(self) -> Txid:
        """On the primary: Litestream's current txid (`GET /txid`), which may not cover the latest commit."""
        if self._role is not Role.PRIMARY:
            return self._position
        return self._advance(await self._request("GET", "/txid", params={"path": str(self.database)}))

    async def _run_syncs(self) -> None:
        try:
            while self._queued is not None:
                # Taking the queued future marks the start of its sync: later callers queue a new one.
                future, self._queued = self._queued, None
                try:
                    txid = await self._sync_once()
                except asyncio.CancelledError:
                    future.set_exception(EngineError("the Litestream engine was closed during commit_position()"))
                    raise
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(txid)
        finally:
            if self._queued is not None:  # cancelled (aclose) with callers still queued
                self._queued.set_exception(EngineError("the Litestream engine was closed during commit_position()"))
                self._queued = None
            self._syncer = None

    async def _sync_once(self) -> Txid:
        reply = await self._request("POST", "/sync", payload={"path": str(self.database), "wait": True})
        return self._advance(reply)

    def _advance(self, reply: dict[str, Any]) -> Txid:
        txid = reply.get("txid")
        if isinstance(txid, bool) or not isinstance(txid, int):
            raise PositionFormatError(f"Litestream's reply has no integer txid: {reply!r}")
        try:
            position = Txid(txid)
        except InvalidTxid as exc:
            raise PositionFormatError(f"Litestream's reply has an invalid txid: {exc}") from None
        if position > self._position:
            self._set_position(position)
        return position

    async def _request(
        self, method: str, path: str, params: dict[str, str] | None = None, payload: Any = None
    ) -> dict[str, Any]:
        if self._client is None:
            self._client = ControlSocket(self.socket_path)
        return await self._client.json(method, path, params=params, payload=payload, database=self.database)

    # -- replica ------------------------------------------------------------------------------

    def _set_position(self, txid: Txid) -> None:
        self._position = txid
        self._publish_position(txid)
