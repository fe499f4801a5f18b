"""A Litestream replica's position: the follower's `<database>-txid`, watched with inotify.

The follower writes `%016x\\n` to a temporary file and renames it over `-txid` after the pages are
on disk. The watch reads the file again on each event that names it, and publishes every change.
It watches the database's directory, not the file (a rename would end a file watch), and, when
`<database>` is a symlink into a generation directory (`forwarder.replica.Generations`: a
re-restore swaps the link), that directory too, moving to the new one on each swap. Where inotify
is missing it polls the file's stat every `POLL_INTERVAL` instead.

The events are read on the event loop as soon as the descriptor is readable and parsed from the
kernel's records directly (`inotify_records`): under forwarded writes the follower renames `-txid`
about a hundred times a second, and building an event object and a path for each record was
about 6 % of a replica's time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import InvalidTxid
from ..txid import Txid
from .inotify_records import CLOSE_WRITE, CREATE, DELETE, IGNORED, MOVED_TO, OVERFLOW, READ_SIZE, records

if TYPE_CHECKING:
    from asyncinotify import Inotify, Watch

__all__ = ["POLL_INTERVAL", "TxidWatch"]

logger = logging.getLogger("forwarder.engines.litestream")

POLL_INTERVAL = 0.001
"""Seconds between stat calls on `-txid` where inotify is not available."""

_MAX_REMEMBERED_GARBAGE = 64

_WATCHED = MOVED_TO | CLOSE_WRITE | CREATE | DELETE
# DELETE: a re-restore removes `-txid` first, and the copy is not usable until it is back.
# MOVED_TO of the database's own name: a generation swap (the link renamed over).


class TxidWatch:
    """The position of one replica's file, published through `publish(txid)` on every change."""

    def __init__(self, database: Path, publish: Callable[[Txid], None]) -> None:
        self.database = database
        self.txid_path = database.with_name(database.name + "-txid")
        self.position = Txid(0)
        self.restored = False
        """Whether the follower has finished its (first, or latest) restore: `-txid` exists."""
        self._publish = publish
        self._names = {os.fsencode(self.txid_path.name), os.fsencode(database.name)}
        self._db_name = os.fsencode(database.name)
        self._txid_now = os.path.realpath(database) + "-txid"  # re-resolved on swaps: inotify keeps order
        self._inotify: Inotify | None = None
        self._parent_wd = -1
        self._generation: Watch | None = None  # the watch on the current generation's directory
        self._generation_dir: str | None = None
        self._garbage_seen: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Read the position and keep following it, in one task (on the running loop)."""
        if self._task is not None:
            return
        # Watch first, then read: a change between the two is then seen by the watch.
        watching = self._start_inotify()
        self.refresh()
        follow = self._follow_inotify() if watching else self._poll()
        self._task = asyncio.create_task(follow, name=f"litestream-watch {self.txid_path}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # wait(), not await: our own cancellation still propagates
            if not task.cancelled() and (error := task.exception()) is not None:
                logger.error("%s had stopped on an error: %r", task.get_name(), error)
        self._close_inotify()

    def refresh(self) -> None:
        """Re-read `-txid` and publish any change, higher or lower. Never raises."""
        txid = self._read_txid()
        if txid is None or txid == self.position:
            return
        if txid < self.position:
            # The follower was wiped and restored again (or the primary's history restarted). Report
            # it so listeners that care (Tracker.reset) can; Tracker.advance ignores it.
            logger.info("replica position went back from %s to %s (follower re-restored)", self.position, txid)
        self.position = txid
        self._publish(txid)

    def _start_inotify(self) -> bool:
        try:
            from asyncinotify import Inotify, Mask

            inotify = Inotify(sync_timeout=0)  # only its descriptor and watches: the records are read here
        except (ImportError, OSError, ValueError) as exc:
            logger.info("inotify is not available (%s); polling %s every %gs", exc, self.txid_path, POLL_INTERVAL)
            return False
        try:
            self._parent_wd = inotify.add_watch(self.txid_path.parent, Mask(_WATCHED)).wd
        except OSError as exc:
            inotify.close()
            logger.info("cannot watch %s with inotify (%s); polling instead", self.txid_path.parent, exc)
            return False
        self._inotify = inotify
        self._watch_generation()
        return True

    def _watch_generation(self) -> None:
        """Resolve the link again, and watch the directory of the generation it points at (if not the parent)."""
        from asyncinotify import Mask

        self._txid_now = os.path.realpath(self.database) + "-txid"
        directory = os.path.dirname(self._txid_now)
        if self._inotify is None or directory == str(self.txid_path.parent) or directory == self._generation_dir:
            return
        old, self._generation, self._generation_dir = self._generation, None, None
        if old is not None:
            with suppress(OSError, ValueError, KeyError):
                self._inotify.rm_watch(old)
        try:
            self._generation = self._inotify.add_watch(Path(directory), Mask(_WATCHED))
            self._generation_dir = directory
        except OSError as exc:  # swapped again meanwhile: the next event of the parent re-resolves
            logger.debug("cannot watch %s: %s", directory, exc)

    async def _follow_inotify(self) -> None:
        assert self._inotify is not None
        loop = asyncio.get_running_loop()
        fd = self._inotify.fd
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("cannot read inotify events for %s: %s", self.txid_path, exc)
                data = b""
            if (not data or not self._handle(data)) and not ended.done():
                ended.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await ended
        finally:
            loop.remove_reader(fd)
            self._close_inotify()
        logger.warning("the inotify watch on %s ended (directory removed?); polling instead", self.txid_path.parent)
        await self._poll()

    def _handle(self, data: bytes) -> bool:
        """Act on a batch of records; False once the watch on the parent directory has ended."""
        refresh = resolve = False
        for wd, mask, name in records(data):
            if mask & IGNORED:
                if wd == self._parent_wd:
                    return False
                continue  # an old generation's directory was removed
            if mask & OVERFLOW:
                refresh = resolve = True  # lost events: resolve the link anew
            elif name in self._names:
                refresh = True
                resolve = resolve or name == self._db_name  # the database's name renamed: a swap
        # One read per batch: the file says the latest position, whatever happened in between.
        if resolve:
            self._watch_generation()
        if refresh:
            self.refresh()
        return True

    def _close_inotify(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._parent_wd = -1
        self._generation = self._generation_dir = None

    async def _poll(self) -> None:
        last: tuple[int, int, int] | None = None
        self.refresh()
        while True:
            self._txid_now = os.path.realpath(self.database) + "-txid"
            try:
                st = os.stat(self._txid_now)
                key: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
            except FileNotFoundError:
                key = None
            if key != last:
                last = key
                self.refresh()
            await asyncio.sleep(POLL_INTERVAL)

    def _read_txid(self) -> Txid | None:
        """The follower's position; 0 when it has not restored yet; None when the file holds garbage."""
        try:
            # os-level: open, read, close, where Path.read_text makes six system calls.
            fd = os.open(self._txid_now, os.O_RDONLY | os.O_CLOEXEC)
            try:
                raw = os.read(fd, 256)
            finally:
                os.close(fd)
        except FileNotFoundError:
            if self.restored:
                logger.warning("%s is gone: the follower is restoring %s again", self.txid_path, self.database)
            self.restored = False
            return Txid(0)
        except OSError as exc:
            logger.warning("cannot read %s: %s; keeping position %s", self.txid_path, exc, self.position)
            return None
        content = raw.decode("ascii", errors="replace").strip()
        if not content:
            return None  # being written by something that does not rename into place; the next event has it
        try:
            txid = Txid.parse(content)
        except InvalidTxid as exc:
            if content not in self._garbage_seen:
                if len(self._garbage_seen) >= _MAX_REMEMBERED_GARBAGE:
                    self._garbage_seen.clear()
                self._garbage_seen.add(content)
                logger.warning("ignoring %s: %s; keeping position %s", self.txid_path, exc, self.position)
            return None
        self.restored = True
        return txid
