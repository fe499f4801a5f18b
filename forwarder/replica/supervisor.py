"""`ReplicaSupervisor`: restore a replica's copy, follow the store, and restore it again without a window.

Litestream 0.5.17 followers have two failure modes the supervisor heals (reference pitfalls 3, 4):
a follower that stops advancing silently (issue #1515), and a follower whose file something else
wrote to (`FollowerGuard`). Either way the copy is restored again into a new generation
(`Generations`), which is swapped in atomically once it holds at least what the old one did, so
readers never see a missing file or a position going back. `forwarder replica` runs one per host;
`forwarder dev` runs one per replica node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from .._process import ManagedProcess
from ..engines.follower_guard import FollowerGuard
from ..engines.litestream_config import Intervals, litestream_environ, recommended_intervals, restore_argv
from ..exceptions import EngineError, FollowerError
from ..store import FileStore, Store
from ..txid import Txid
from .generations import Generations
from .primary import PrimaryPosition
from .txid_file import read_txid_file

__all__ = ["MIN_GAP", "RESTORE_DEADLINE", "STALL_LIMIT", "WATCH_INTERVAL", "ReplicaSupervisor"]

logger = logging.getLogger("forwarder.replica")

STALL_LIMIT = 5.0
"""Seconds a follower may go without advancing while the primary is ahead before it is restored again."""
MIN_GAP = 1.0
"""Seconds between two restores of one replica; doubled for each stall that follows a restore within
`BACKOFF_WINDOW`, up to `MAX_GAP` (a store that is down would otherwise be restored against in a loop)."""
MAX_GAP = 60.0
BACKOFF_WINDOW = 60.0
RESTORE_DEADLINE = 30.0
"""Seconds a restore gets to write its first `-txid` and catch up with the copy it replaces."""
WATCH_INTERVAL = 0.25
"""Seconds between the supervisor's looks at the follower."""
GRACE = 1.0
"""Seconds an old generation is kept after a swap, for connections that opened it just before."""
_NO_BACKUP_YET = "no matching backup files available"


class ReplicaSupervisor:
    """One replica's Litestream follower: restores `store` into `database` (a generation symlink),
    follows it, and restores it again, with an atomic swap, when it stalls or is written to.

    `primary` tells the primary's txid (`HealthPosition`, `StorePosition`); without it a stall
    cannot be told from an idle primary, and only exits and foreign writes cause restores.

    >>> supervisor = ReplicaSupervisor("db2", Path("/data/app.db"), S3Store(...), log_path=Path("f.log"))
    >>> await supervisor.start()      # first restore: returns once `-txid` exists
    >>> await supervisor.run()        # watch and heal until cancelled
    """

    def __init__(
        self,
        name: str,
        database: Path,
        store: Store | Path,
        *,
        log_path: Path,
        intervals: Intervals | None = None,
        primary: PrimaryPosition | None = None,
        stall_limit: float = STALL_LIMIT,
        min_gap: float = MIN_GAP,
        restore_deadline: float = RESTORE_DEADLINE,
    ) -> None:
        self.name = name
        self.database = Path(database).absolute()
        self.store = FileStore(store) if isinstance(store, Path) else store
        self.intervals = intervals or recommended_intervals(self.store)
        self.log_path = log_path
        self.primary = primary
        self.stall_limit = stall_limit
        self.min_gap = min_gap
        self.restore_deadline = restore_deadline
        self.generations = Generations(self.database)
        self.guard = FollowerGuard(self.database)
        self.process: ManagedProcess | None = None
        self.paused = False
        """Set by `pause()` (tests): the follower is frozen on purpose and is not restored meanwhile."""
        self.restores = 0
        """Restores since `start()` (the first one not counted)."""
        self.reasons: list[str] = []
        """Why each of those restores was made."""
        self.lock = asyncio.Lock()
        self._last_position: Txid | None = None
        self._progress_at = time.monotonic()
        self._last_restore = float("-inf")
        self._gap = min_gap
        self._pending: Path | None = None  # the generation being restored, not to be cleaned up
        self._swapped_at = float("-inf")

    # -- state ----------------------------------------------------------------------------------

    @property
    def txid_path(self) -> Path:
        """The current generation's `-txid` (the node's own `<db>-txid` before the first restore)."""
        current = self.generations.current() or self.database
        return current.with_name(current.name + "-txid")

    @property
    def running(self) -> bool:
        """True while the follower process runs."""
        return self.process is not None and self.process.running

    @property
    def returncode(self) -> int | None:
        """Exit status of the current follower process (None while it runs or before the first start)."""
        return self.process.returncode if self.process is not None else None

    def position(self) -> Txid | None:
        """The txid the current copy holds (None before its first restore finished)."""
        return read_txid_file(self.txid_path)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Wipe every generation (a follower cannot resume), restore, and point the node's path at
        the copy; return once it is there. Raises `FollowerError` if it cannot be restored."""
        await self.stop()
        self.database.parent.mkdir(parents=True, exist_ok=True)
        self.generations.reset()
        process, target = await self._restore()
        self.generations.swap(target)
        self.process, self._pending = process, None
        self._last_position, self._progress_at = self.position(), time.monotonic()

    async def stop(self) -> None:
        """Stop the follower (the copy stays readable until the next `start()`)."""
        if self.process is not None:
            await self.process.stop()
        self.paused = False

    def pause(self) -> None:
        """Freeze the follower (SIGSTOP) on purpose: the copy stops advancing until `resume()`."""
        if self.process is not None and self.process.running:
            self.process.signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """Let a paused follower continue (SIGCONT)."""
        if self.process is not None and self.paused:
            self.process.signal(signal.SIGCONT)
        self.paused = False
        self._progress_at = time.monotonic()

    async def _restore(self) -> tuple[ManagedProcess, Path]:
        """Start `restore -f` into a new generation; return once its first `-txid` is written."""
        target = self._pending = self.generations.new()
        txid_path = target.with_name(target.name + "-txid")
        deadline = time.monotonic() + self.restore_deadline
        while True:
            process = ManagedProcess(
                f"{self.name} litestream restore -f",
                restore_argv(target, self.store, self.intervals),
                log_path=self.log_path,
                env=litestream_environ(self.store),
            )
            await process.start()
            while process.running and not txid_path.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if txid_path.exists():
                return process, target
            await process.stop()
            log = process.tail()
            if _NO_BACKUP_YET in log and time.monotonic() < deadline:  # replicate has not synced yet
                await asyncio.sleep(0.1)
                continue
            self.generations.remove(target.parent)
            self._pending = None
            raise FollowerError(
                f"{self.name}: `litestream restore -f` did not restore {target} within {self.restore_deadline:g}s "
                f"(status {process.returncode}, log {self.log_path}):\n{log}"
            )

    # -- healing --------------------------------------------------------------------------------

    async def restore_again(self, reason: str) -> bool:
        """Restore into a new generation and swap it in; False when rate-limited. Raises `FollowerError`."""
        now = time.monotonic()
        if now - self._last_restore < self._gap:
            logger.debug(
                "%s: not restoring again yet (%s): the last restore was %.1fs ago",
                self.name,
                reason,
                now - self._last_restore,
            )
            return False
        async with self.lock:
            logger.warning("%s: restoring the copy again: %s", self.name, reason)
            floor = self.position()
            old = self.process
            self._last_restore = time.monotonic()
            process, target = await self._restore()
            try:
                await self._catch_up(target, floor)
                # The old follower may have moved on meanwhile (a store that was down is back): freeze it
                # and reach where it stopped, so no reader that waited for a txid on it misses it here.
                if old is not None:
                    old.signal(signal.SIGSTOP)
                await self._catch_up(target, self.position())
            except FollowerError:
                await process.stop()
                self.generations.remove(target.parent)
                self._pending = None
                if old is not None and not self.paused:
                    old.signal(signal.SIGCONT)
                raise
            self.generations.swap(target)
            self.process, self._pending, self._swapped_at = process, None, time.monotonic()
            self.restores += 1
            self.reasons.append(reason)
            self.guard.check()  # the swap clears a foreign-write problem
            self.paused = False
            self._last_position, self._progress_at = self.position(), time.monotonic()
            if old is not None:
                old.signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
                await old.stop()
            logger.warning("%s: restored again at %s (%s)", self.name, self.position(), target.parent.name)
        return True

    async def _catch_up(self, target: Path, floor: Txid | None) -> None:
        """Wait until the new copy holds at least `floor` (the old copy's position): a reader that
        waited for a txid on the old copy must find it on the new one."""
        txid_path = target.with_name(target.name + "-txid")
        deadline = time.monotonic() + self.restore_deadline
        while floor is not None and (read_txid_file(txid_path) or 0) < floor:
            if time.monotonic() > deadline:
                raise FollowerError(
                    f"{self.name}: the new copy {target} did not reach {floor} (the old copy's position) within "
                    f"{self.restore_deadline:g}s; see {self.log_path}"
                )
            await asyncio.sleep(0.01)

    def problem(self, primary: Txid | None) -> tuple[str, bool] | None:
        """Why the copy must be restored again now, and whether that is a stall; None if it is fine."""
        now = time.monotonic()
        position = self.position()
        if position != self._last_position:  # advancing: catching up is not stalling
            self._last_position, self._progress_at = position, now
        if self.guard.problem is not None:
            return "its database file was written by something other than its follower", False
        if not self.running:
            return f"its follower exited with status {self.returncode}", False
        if primary is None or (position is not None and position >= primary):
            self._progress_at = now
            return None
        if now - self._progress_at > self.stall_limit:
            stalled = now - self._progress_at
            return f"no progress for {stalled:.1f}s while the primary is ahead ({position} < {primary})", True
        return None

    async def watch_once(self) -> None:
        """One look: restore again if needed, remove unused old generations."""
        self.guard.check()
        self._clean_up()
        if self.paused or self.lock.locked():
            self._progress_at = time.monotonic()
            return
        primary = None
        if self.primary is not None:
            try:
                primary = await self.primary()
            except EngineError as exc:
                logger.debug("%s: primary position unknown: %s", self.name, exc)
        found = self.problem(primary)
        if found is None:
            if time.monotonic() - self._last_restore > BACKOFF_WINDOW:
                self._gap = self.min_gap
            return
        reason, stalled = found
        try:
            restored = await self.restore_again(reason)
        except FollowerError as exc:
            logger.error("%s: could not restore the copy again (will retry): %s", self.name, exc)
            restored = True  # counts for the back-off: a store that is down fails every time
        if restored and stalled:
            self._gap = min(self._gap * 2, MAX_GAP)

    async def run(self) -> None:
        """Watch and heal every `WATCH_INTERVAL` until cancelled."""
        self.guard.start()
        try:
            while True:
                await asyncio.sleep(WATCH_INTERVAL)
                await self.watch_once()
        finally:
            self.guard.close()

    def _clean_up(self) -> None:
        if time.monotonic() - self._swapped_at < GRACE:
            return
        for generation in self.generations.stale():
            if generation.name != (self._pending.parent.name if self._pending else None):
                if not self.generations.in_use(generation):
                    with contextlib.suppress(OSError):
                        self.generations.remove(generation)
