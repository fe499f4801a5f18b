"""The Litestream engine: `litestream replicate` on the primary, a `restore -f` follower on each replica.

Primary: `promise_position()` (direct writes) answers from local files alone, the newest L0 txid
or `newest + 2`, whose existence the keeper sees to (`litestream_keeper`); `commit_position()`
(writes a replica waits on) works out the first txid that holds every commit so far, waiting out
a sync in progress (`litestream_position`). When the files cannot tell, both ask Litestream to
sync (`POST /sync`, wait=true), and concurrent callers share those syncs (group commit).

Replica: the follower writes its position to `<database>-txid` (`%016x\\n`, tmp file + rename)
after the pages are on disk. The engine watches the database's directory with inotify and
publishes each new position; without inotify it polls the file's stat every millisecond, in
one task for the whole engine. When `<database>` is a symlink into a generation directory
(`forwarder.replica.Generations`: a re-restore swaps the link), the position is the `-txid` of
the file the link points at now; the engine watches that directory too and follows each swap.

Facts and pitfalls behind these choices: `shared/reference/replication-engines.md`, section 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import EngineError, InvalidTxid, PositionFormatError
from ..txid import Txid
from .base import Engine, PrimaryInfo, Role
from .control_socket import ControlSocket
from .follower_guard import CHECK_INTERVAL, FollowerGuard
from .litestream_config import litestream_binary, replicate_config
from .litestream_keeper import TxidKeeper
from .litestream_position import CoveringCheck

if TYPE_CHECKING:
    from asyncinotify import Inotify

__all__ = ["LitestreamEngine", "litestream_binary", "replicate_config"]

logger = logging.getLogger("forwarder.engines.litestream")

QUIET_GAP = 0.05
"""Seconds since the previous `promise_position()` above which it asks sync-status once (see there).

At 20 writes/s or fewer a control-socket round trip is cheap, and it spares a read with the cookie soon
after a lone write a sync's wait: 23.6 against 33.0 ms p50 from local files alone (`bench/prompt_txid.py`).
Asked for every write, it cost a third of the throughput at 8 connections and 3-4 ms p50 at 1 on a loaded
machine (`bench/primary_cost.py`, `forwarder, status`); hence a gap well above a busy client's."""

POLL_INTERVAL = 0.001
"""Seconds between stat() calls of the `-txid` file when inotify is not available."""

_MAX_REMEMBERED_GARBAGE = 64


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
        # Replica: the one watcher task and what it needs.
        self._watcher: asyncio.Task[None] | None = None
        self._inotify: Inotify | None = None
        self._parent_watch: Any = None
        self._generation_watch: Any = None
        self._generation_dir: Path | None = None
        self._txid_now = os.path.realpath(self.database) + "-txid"  # re-resolved on swaps: inotify keeps order
        self._txid_mask: Any = None
        self._garbage_seen: set[str] = set()
        self._restored = False
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
        return self._role is Role.PRIMARY or self._restored

    @property
    def problem(self) -> str | None:
        return None if self._role is Role.PRIMARY else self._guard.problem

    def local_writes(self, *, look: bool = True) -> int:
        return 0 if self._role is Role.PRIMARY else self._guard.check() if look else self._guard.writes

    async def start(self) -> None:
        """Primary: read the current txid if the socket is already up. Replica: start watching `-txid`."""
        if self._role is Role.PRIMARY:
            try:
                await self.read_position()
            except EngineError as exc:
                # Litestream may start after the app; the first /sync will tell if it never does.
                logger.info("Litestream position not read at start (it stays 0 until the first sync): %s", exc)
            return
        if self._watcher is not None:
            return
        # Watch first, then read: a change between the two is then seen by the watcher.
        watching = self._start_inotify()
        self._refresh()
        follow = self._follow_inotify() if watching else self._poll()
        self._watcher = asyncio.create_task(follow, name=f"litestream-watch {self.txid_path}")
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
            self.covering.close()
        tasks = [task for task in (self._watcher, self._syncer, self._guard_task) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # wait(), not await: our own cancellation still propagates, the tasks' does not.
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                logger.error("%s had stopped on an error: %r", task.get_name(), error)
        self._watcher = self._syncer = self._guard_task = None
        self._close_inotify()
        self._guard.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- primary ------------------------------------------------------------------------------

    async def commit_position(self) -> Txid:
        """A txid covering every commit finished before this call (primary only), from local files if they can tell.

        Else group commit: one sync runs, one is queued; a caller joins the queued one (the running one may predate it).
        """
        self._require_primary("commit_position()")
        if self.covering is not None and (txid := await self.covering.txid(self._request)) is not None:
            return self._advance({"txid": txid})
        return await self._group_sync()

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
        shared by every caller in that window, not `commit_position()`'s polling of sync-status
        (under load that polling cost the event loop more than the rare forced sync).
        """
        self._require_primary("promise_position()")
        now = time.monotonic()
        quiet, self._last_promise = now - self._last_promise > self.quiet_gap, now
        covering = self.covering
        if covering is not None and self.keeper.failed is None:
            answer = await covering.promise_after_status(self._request) if quiet else covering.promise()
        else:
            answer = None
        if answer is not None:
            txid, promised = answer
            if promised:
                self.keeper.promise(txid)
            return self._advance({"txid": txid})
        return await self._group_sync()

    def _require_primary(self, what: str) -> None:
        if self._role is not Role.PRIMARY:
            raise EngineError(
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

    def _start_inotify(self) -> bool:
        try:
            from asyncinotify import Inotify, Mask

            inotify = Inotify()
        except (ImportError, OSError, ValueError) as exc:
            logger.info("inotify is not available (%s); polling %s every %gs", exc, self.txid_path, POLL_INTERVAL)
            return False
        try:
            # The directory, not the file: Litestream replaces the file by rename, which a file watch would miss.
            # DELETE: a re-restore removes `-txid` first, and the copy is not usable until it is back.
            # MOVED_TO of the database's own name: a generation swap (the link renamed over).
            self._txid_mask = Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.CREATE | Mask.DELETE
            self._parent_watch = inotify.add_watch(self.txid_path.parent, self._txid_mask)
        except OSError as exc:
            inotify.close()
            logger.info("cannot watch %s with inotify (%s); polling instead", self.txid_path.parent, exc)
            return False
        self._inotify = inotify
        self._watch_generation()
        return True

    def current_txid_path(self) -> Path:
        """The `-txid` of the file `database` is now (through a generation symlink), kept for `_read_txid`."""
        self._txid_now = os.path.realpath(self.database) + "-txid"
        return Path(self._txid_now)

    def _watch_generation(self) -> None:
        """Watch the directory of the generation the link points at now (if not the parent)."""
        directory = self.current_txid_path().parent
        if self._inotify is None or directory == self.txid_path.parent or directory == self._generation_dir:
            return
        old, self._generation_watch, self._generation_dir = self._generation_watch, None, None
        if old is not None:
            with suppress(OSError, ValueError, KeyError):
                self._inotify.rm_watch(old)
        try:
            self._generation_watch = self._inotify.add_watch(directory, self._txid_mask)
            self._generation_dir = directory
        except OSError as exc:  # swapped again meanwhile: the next event of the parent re-resolves
            logger.debug("cannot watch %s: %s", directory, exc)

    async def _follow_inotify(self) -> None:
        from asyncinotify import Mask

        assert self._inotify is not None
        names = {self.txid_path.name, self.database.name}
        try:
            while True:
                event = await self._inotify.get()
                if event.mask & Mask.IGNORED:
                    if event.watch is self._parent_watch or self._parent_watch is None:
                        break
                    continue  # an old generation's directory was removed
                # Lost events (queue overflow), or the database's name renamed (a swap): resolve the link anew.
                if (lost := event.mask & Mask.Q_OVERFLOW) or (event.name is not None and str(event.name) in names):
                    if lost or str(event.name) == self.database.name:
                        self._watch_generation()
                    self._refresh()
        finally:
            self._close_inotify()
        logger.warning("the inotify watch on %s ended (directory removed?); polling instead", self.txid_path.parent)
        await self._poll()

    def _close_inotify(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._parent_watch = self._generation_watch = self._generation_dir = None

    async def _poll(self) -> None:
        last: tuple[int, int, int] | None = None
        self._refresh()
        while True:
            try:
                st = os.stat(self.current_txid_path())
                key: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
            except FileNotFoundError:
                key = None
            if key != last:
                last = key
                self._refresh()
            await asyncio.sleep(POLL_INTERVAL)

    def _refresh(self) -> None:
        """Re-read `-txid` and publish any change, higher or lower. Never raises."""
        txid = self._read_txid()
        if txid is None or txid == self._position:
            return
        if txid < self._position:
            # The follower was wiped and restored again (or the primary's history restarted). Report
            # it so listeners that care (Tracker.reset) can; Tracker.advance ignores it.
            logger.info("replica position went back from %s to %s (follower re-restored)", self._position, txid)
        self._set_position(txid)

    def _set_position(self, txid: Txid) -> None:
        self._position = txid
        self._publish_position(txid)

    def _read_txid(self) -> Txid | None:
        """The follower's position; 0 when it has not restored yet; None when the file holds garbage."""
        try:
            text = Path(self._txid_now).read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            if self._restored:
                logger.warning("%s is gone: the follower is restoring %s again", self.txid_path, self.database)
            self._restored = False
            return Txid(0)
        except OSError as exc:
            logger.warning("cannot read %s: %s; keeping position %s", self.txid_path, exc, self._position)
            return None
        content = text.strip()
        if not content:
            return None  # being written by something that does not rename into place; the next event has it
        try:
            txid = Txid.parse(content)
        except InvalidTxid as exc:
            if content not in self._garbage_seen:
                if len(self._garbage_seen) >= _MAX_REMEMBERED_GARBAGE:
                    self._garbage_seen.clear()
                self._garbage_seen.add(content)
                logger.warning("ignoring %s: %s; keeping position %s", self.txid_path, exc, self._position)
            return None
        self._restored = True
        return txid
