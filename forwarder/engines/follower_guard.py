"""Notice when anything but the Litestream follower writes to a replica's database file.

A Litestream follower applies pages straight into its output file and never uses SQLite's
`-wal` or rollback `-journal` for it; read-only connections create an empty `-wal` and `-shm`
but never write a frame. So a write to `<db>-wal` or a `<db>-journal` on a follower's file is a
write by some SQLite connection opened read-write: the app on a plain `sqlite:///` URL, a cron
job, a shell. Such a write is never replicated, it is wiped by the next restore, and the pages it
left behind can corrupt the follower's copy (`PRAGMA integrity_check`: "wrong # of entries in
index"). LiteFS refuses such writes at the FUSE layer; Litestream cannot.

The guard reads inotify events synchronously (`check()`), so the middleware can ask "did anyone
write since this request began?" right before a response goes out, with no await and no race
with the event loop; it also runs every `CHECK_INTERVAL` on its own to catch writes outside
requests. Once the file has been restored again (a new inode, an empty `-wal`, a fresh `-txid`),
the problem clears by itself.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncinotify import Inotify

__all__ = ["CHECK_INTERVAL", "FollowerGuard"]

logger = logging.getLogger("forwarder.engines.litestream")

CHECK_INTERVAL = 0.25
"""Seconds between the guard's own checks when no request asks."""


class FollowerGuard:
    """Counts writes to a follower's database file made by anything but the follower."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.wal = database.with_name(database.name + "-wal")
        self.journal = database.with_name(database.name + "-journal")
        self.txid_path = database.with_name(database.name + "-txid")
        self._inotify: Inotify | None = None
        self.writes = 0
        """Foreign writes seen so far (each inotify event counts once)."""
        self._modified_at: float | None = None  # wall clock of the first write since the last restore
        self._replaced = False  # a restore has renamed a new file into place since

    @property
    def watching(self) -> bool:
        """False when inotify is not available here (the guard then sees nothing)."""
        return self._inotify is not None

    def start(self) -> bool:
        """Begin watching the database's directory; False if inotify is not available."""
        try:
            from asyncinotify import Inotify, Mask

            inotify = Inotify(sync_timeout=0)
            inotify.add_watch(self.database.parent, Mask.MODIFY | Mask.CREATE | Mask.MOVED_TO)
        except (ImportError, OSError, ValueError) as exc:
            logger.warning(
                "cannot watch %s for writes by the app (%s): a write on this replica's file would go unnoticed",
                self.database.parent,
                exc,
            )
            return False
        self._inotify = inotify
        return True

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def check(self) -> int:
        """Read the events that are waiting, without blocking; return `writes`."""
        inotify = self._inotify
        if inotify is None:
            return self.writes
        from asyncinotify import Mask

        while True:
            try:
                event = inotify.sync_get()
            except (BlockingIOError, OSError):
                break
            if event is None:
                break
            name = str(event.name) if event.name is not None else ""
            # Read-only connections create an empty -wal; only a writer puts a frame in it.
            if (name == self.wal.name and event.mask & Mask.MODIFY) or name == self.journal.name:
                self._seen_write(name)
            elif name == self.database.name and event.mask & Mask.MOVED_TO and self._modified_at is not None:
                self._replaced = True
        if self._replaced and self._restored():
            logger.warning("%s was restored from the replication store; its local reads are used again", self.database)
            self._modified_at, self._replaced = None, False
        return self.writes

    @property
    def problem(self) -> str | None:
        """What is wrong with the file and how to fix it, while a foreign write is not yet restored over."""
        if self._modified_at is None:
            return None
        return (
            f"database modified: something other than the Litestream follower wrote to {self.database} "
            f"({time.time() - self._modified_at:.1f}s ago); that write is not replicated and will be lost when "
            "the file is restored. Reads are served by the primary until then. Fix: open the replica's database "
            "read-only (forwarder.sqlalchemy.create_engine, forwarder.database, or a `file:...?mode=ro` URI), "
            "and run writes on the primary"
        )

    def _seen_write(self, name: str) -> None:
        self.writes += 1
        self._replaced = False  # a write after a restore began needs another restore
        if self._modified_at is not None:
            return
        self._modified_at = time.time()
        logger.error("%s (%s written)", self.problem, name)

    def _restored(self) -> bool:
        """Whether the restore that renamed a new file into place has finished: its `-txid` is written
        (a re-restore deletes the old one first) and no frame is left in the WAL."""
        if not self.txid_path.exists():
            return False
        try:
            return os.stat(self.wal).st_size == 0
        except FileNotFoundError:
            return True
        except OSError:
            return False
