"""Idle replica connections in a pool: kept only while they cannot hold replication up.

A WAL-mode reader keeps SQLite's SHARED lock on the file for as long as it is open, and a Litestream
follower must wait for every such lock before it applies a batch (replication-engines.md, follower
pitfall 2). While one is open the follower cannot write, so a pooled connection never reads an
older file than a fresh one would; the danger is only that it stalls replication. So idle
connections are kept for at most `LINGER` seconds after the engine was last used, and closed as
soon as the follower asks for the file (SQLite's PENDING byte, `forwarder.follower_lock`).

The file is looked at once every `_TICK` seconds: whether the follower is waiting, and whether a
re-restore put a new file in place. Under load the first checkin after a tick looks; a reaper
thread, alive only while the pool may hold idle connections, looks when no checkin has (and
closes what lingers). Checkouts, and the other checkins, read what was seen last, so most requests'
way through the pool makes no system call: each one lets another thread take the GIL, and on a
small VM the handoff costs far more than the call (measured: a 1 µs `stat` took 165 µs with one
other Python thread awake), and each wake-up of an otherwise idle thread costs one. Without a reaper
(async engines) a checkout looks itself. A connection handed out in the tick after a re-restore
still reads no older data than the tracker's position, which retires it once it moves
(`forwarder.connections.AccessRule.may_reuse`).

Closing goes through the pool's own `dispose()`, which takes idle connections out of the pool's
queue before it closes them: a connection the pool is handing out at that moment is never touched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from .follower_lock import FileId, WriterProbe, file_id, is_wal_file

__all__ = ["LINGER", "IdlePool", "ReplicaIdle"]

LINGER = 0.01
"""Seconds idle replica connections are kept after the engine's last checkin: the dev cluster's
follow interval, so a follower never waits longer for an idle pool than between two store polls."""

_TICK = LINGER
"""How often the file is looked at (by a checkin under load, else by the reaper) while connections
may be idle. Every look and every wake-up costs the app's threads a GIL handoff: at 2 ms the
SQLModel app on a replica lost 10 % of its read throughput (bench/sqlmodel_read.py), and a waiting
follower never needs an answer sooner than its own interval."""


class IdlePool(Protocol):
    """What this needs of a pool (`sqlalchemy.pool.QueuePool`): count and close its idle connections."""

    def checkedin(self) -> int: ...
    def dispose(self) -> None: ...


class ReplicaIdle:
    """When one replica pool was last used, how many of its connections are out, and the reaper."""

    def __init__(self, pool: Callable[[], IdlePool], linger: float = LINGER, *, reaper: bool = True) -> None:
        self.pool = pool
        self.linger = linger
        self.path = ""
        """The database path connections open (a replica's symlink to its current generation)."""
        self.lock = threading.RLock()  # the reaper's start and end; closing fires the pool's events
        # One item per connection out of the pool: append() and pop() are single, thread-safe steps,
        # so the hot path takes no lock (a contended lock cost the app's threads GIL handoffs).
        self._out: list[None] = []
        self.probe = WriterProbe()
        self._last_checkin = 0.0
        self._wal: dict[FileId, bool] = {}
        self._looked_at = 0.0  # when `file` and `wanted` were last looked at (monotonic)
        self._reaper: threading.Thread | None = None
        self._use_reaper = reaper
        self.file: FileId | None = None
        """The file `path` named at the reaper's last look."""
        self.wanted = False
        """The follower was waiting for the file at the reaper's last look (idle connections are closed)."""

    @property
    def in_use(self) -> int:
        """How many of the pool's connections are checked out."""
        return len(self._out)

    def checked_out(self) -> None:
        """A connection left the pool for a use."""
        self._out.append(None)

    def checked_in(self) -> None:
        """A connection came back (kept or not)."""
        try:
            self._out.pop()
        except IndexError:
            pass  # a connection checked out before this count began (Engine.dispose())

    def wal_mode(self, identity: FileId | None) -> bool:
        """Whether the file `path` named as `identity` is a WAL-mode database (from its header, once per file).

        Read from the header, not asked with `PRAGMA journal_mode` on each new connection: that
        was a query per connection opened. Once per file is enough, because Litestream replicates
        only WAL-mode databases, so a follower's file never leaves WAL mode while it is in place.
        """
        if identity is None:
            return False
        known = self._wal.get(identity)
        if known is None:
            known = self._wal[identity] = is_wal_file(self.path)
        return known

    def follower_waiting(self, identity: FileId | None = None) -> bool:
        """Whether the follower holds SQLite's PENDING byte of the current file (`identity`: its `file_id`)."""
        return bool(self.path) and self.probe.writer_waiting(self.path, identity)

    def must_close(self, opened: FileId | None) -> bool:
        """Whether a pooled connection opened on file `opened` may not be handed out again: the file
        was replaced (a re-restore's new generation) or the follower is waiting for it. With a
        reaper, as seen at most 1.5 `_TICK` ago; without one, looked at now."""
        current, wanted = (self.file, self.wanted) if self._use_reaper else self._look()
        return opened != current or wanted

    def refresh(self) -> None:
        """On a checkin: look at the file if nobody has for `_TICK` (while a reaper runs).

        Under load the checkins do the looking, on threads that are running anyway, and the
        reaper only wakes: each look it makes costs the app's threads two GIL handoffs more.
        """
        now = time.monotonic()
        if self._reaper is not None and now - self._looked_at >= _TICK:
            self._looked_at = now
            self.file, self.wanted = self._look()

    def kept(self) -> None:
        """A connection goes back to the pool to be reused: start the reaper if none runs."""
        self._last_checkin = time.monotonic()
        if not self._use_reaper or self._reaper is not None:
            return
        with self.lock:
            if self._reaper is None:
                self.file, self.wanted = self._look()  # what the last reaper saw may be long out of date
                self._looked_at = time.monotonic()
                self._reaper = threading.Thread(target=self._reap, name="forwarder-replica-pool", daemon=True)
                self._reaper.start()

    def close_idle(self) -> None:
        """Close every idle connection now; the pool opens new ones on demand."""
        self.pool().dispose()

    def _look(self) -> tuple[FileId | None, bool]:
        current = file_id(self.path)
        return current, self.follower_waiting(current)

    def _reap(self) -> None:
        while True:
            # Wake half a tick after the next look is due: under load a checkin has made it by then
            # and the reaper only sleeps again; quiet, it looks itself. A follower that starts
            # waiting is seen within 1.5 ticks either way.
            time.sleep(max(self._looked_at + 1.5 * _TICK - time.monotonic(), _TICK / 10))
            now = time.monotonic()
            if now - self._looked_at >= _TICK:
                self._looked_at = now
                seen = self._look()  # not under the lock: checkouts and checkins need it meanwhile
                with self.lock:
                    self.file, self.wanted = seen
            with self.lock:
                since = time.monotonic() - self._last_checkin
                quiet = self.in_use == 0 and since >= self.linger
                if quiet or self.wanted:
                    self.close_idle()
                if self.in_use == 0 and since >= _TICK and self.pool().checkedin() == 0:
                    # Nothing can be idle until a checkin, and a checkin starts a new reaper (the
                    # engine's own dispose() also ends up here). Not within a tick of a checkin: its
                    # connection may not be in the pool's queue yet. What it saw is void once it is
                    # gone: the next one looks anew before anything is handed out again.
                    self._reaper, self.wanted = None, False
                    return
