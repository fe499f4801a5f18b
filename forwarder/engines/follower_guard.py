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

When the database path is a symlink into a generation directory (`forwarder.replica`), the
sidecar files live beside the real file: the guard watches that directory too, moves to the new
one when the link is swapped (which counts as the restore), and ignores writes to old ones.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..quick_calls import QuickPoll
from .inotify_records import MODIFY, MOVED_TO, OVERFLOW, READ_SIZE, records

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
        self._db_name = os.fsencode(database.name)
        self._real = database
        self._inotify: Inotify | None = None
        self._parent_wd = -1
        self._generation_wd = -1
        self._poll: QuickPoll | None = None  # the fast "anything new?" test on the hot path
        self.writes = 0
        """Foreign writes seen so far (each inotify event counts once)."""
        self._modified_at: float | None = None  # wall clock of the first write since the last restore
        self._replaced = False  # a restore has renamed a new file into place since

    @property
    def wal(self) -> Path:
        return self._real.with_name(self._real.name + "-wal")

    @property
    def journal(self) -> Path:
        return self._real.with_name(self._real.name + "-journal")

    @property
    def txid_path(self) -> Path:
        return self._real.with_name(self._real.name + "-txid")

    @property
    def watching(self) -> bool:
        """False when inotify is not available here (the guard then sees nothing)."""
        return self._inotify is not None

    def start(self) -> bool:
        """Begin watching the database's directory; False if inotify is not available."""
        try:
            from asyncinotify import Inotify, Mask

            inotify = Inotify(sync_timeout=0)
            self._parent_wd = inotify.add_watch(self.database.parent, Mask.MODIFY | Mask.CREATE | Mask.MOVED_TO).wd
        except (ImportError, OSError, ValueError) as exc:
            logger.warning(
                "cannot watch %s for writes by the app (%s): a write on this replica's file would go unnoticed",
                self.database.parent,
                exc,
            )
            return False
        self._inotify = inotify
        self._poll = QuickPoll(inotify.fd)
        self._follow_link()
        return True

    def _follow_link(self) -> None:
        """Resolve the database path again and watch the directory of the file it is now."""
        self._real = real = Path(os.path.realpath(self.database))
        self._wal_name = os.fsencode(real.name + "-wal")
        self._journal_name = os.fsencode(real.name + "-journal")
        self._generation_wd = -1
        if self._inotify is None or real.parent == self.database.parent:
            return
        from asyncinotify import Mask

        try:
            self._generation_wd = self._inotify.add_watch(real.parent, Mask.MODIFY | Mask.CREATE).wd
        except OSError as exc:  # swapped again meanwhile: that swap's event resolves it anew
            logger.debug("cannot watch %s: %s", real.parent, exc)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = self._poll = None

    def check(self) -> int:
        """Read the events that are waiting, without blocking; return `writes`.

        This runs before every replica response, so it parses the kernel's records itself (a
        `poll(0)` that keeps the GIL, `QuickPoll`, and one `read` when something is waiting)
        rather than building an event object per record.
        """
        inotify, poll = self._inotify, self._poll
        if inotify is None or poll is None:
            return self.writes
        while poll.ready():
            try:
                data = os.read(inotify.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                logger.warning("cannot read inotify events for %s: %s", self.database, exc)
                break
            self._parse(data)
        if self._replaced and self._restored():
            logger.warning("%s was restored from the replication store; its local reads are used again", self.database)
            self._modified_at, self._replaced = None, False
        return self.writes

    def _parse(self, data: bytes) -> None:
        for wd, mask, name in records(data):
            current = wd == self._generation_wd or (wd == self._parent_wd and self._generation_wd == -1)
            if mask & OVERFLOW:
                # Records were lost: a write may be among them. Take the safe side.
                self._seen_write("(inotify queue overflow)")
            # Read-only connections create an empty -wal; only a writer puts a frame in it.
            elif current and ((name == self._wal_name and mask & MODIFY) or name == self._journal_name):
                self._seen_write(name.decode(errors="replace"))
            elif wd == self._parent_wd and name == self._db_name and mask & MOVED_TO:
                self._follow_link()  # a restore renamed a new file (or a new generation's link) into place
                if self._modified_at is not None:
                    self._replaced = True

    @property
    def modified_at(self) -> float | None:
        """Wall clock of the first foreign write since the last restore (None: no `problem`)."""
        return self._modified_at

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
