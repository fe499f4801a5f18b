"""Waiting for the Litestream primary's local L0 to reach a txid: told by inotify, shared by every waiter.

The covering check's exact answer (`litestream_position`) waits here for the file that holds its
commit: each new file's header says whether it does. Litestream writes each L0 file under a temporary name
and renames it into `ltx/0/` (`<txid>-<txid>.ltx`), so one inotify watch on that directory sees
every new txid as it lands: no look at the files while nothing lands, and a waiter resumes within
the event loop's next turn. The watch is set up by the first waiter and kept.

Where inotify is missing (or the directory is not there yet, or the watch ended: the directory was
removed), one shared task looks at the newest file instead, every `LOOK_INTERVAL` while anyone
waits. That is 1 ms and no less: uvloop (what the nodes run) keeps timers in whole milliseconds,
so `asyncio.sleep(0.0005)` there returns at once and a loop of such sleeps spins the event loop
(measured: 77,000 rounds in 0.2 s, a whole core). The covering check once asked Litestream's
sync-status in such a loop, one request after another, for as long as a sync ran.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .inotify_records import IGNORED, OVERFLOW, READ_SIZE, records

if TYPE_CHECKING:
    from asyncinotify import Inotify

__all__ = ["LOOK_INTERVAL", "LtxArrivals"]

logger = logging.getLogger("forwarder.engines.litestream")

LOOK_INTERVAL = 0.001
"""Seconds between two looks at the newest L0 file while anyone waits, without inotify (uvloop's timer resolution)."""

_NAME_SIZE = len("0000000000000001-0000000000000001.ltx")


class LtxArrivals:
    """`await arrivals.reached(txid, timeout)`: True once the newest L0 txid is at least `txid`.

    `newest()` returns the newest L0 txid now (None when the files cannot tell); it must not block.
    `directory` is the L0 directory to watch (None: look every `LOOK_INTERVAL` instead).
    """

    def __init__(self, newest: Callable[[], int | None], directory: Path | None = None) -> None:
        self._newest = newest
        self._directory = directory
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}
        self._looker: asyncio.Task[None] | None = None
        self._inotify: Inotify | None = None
        self._watch_failed = directory is None

    @property
    def waiting(self) -> int:
        """How many callers wait right now (tests, debugging)."""
        return sum(len(futures) for futures in self._waiting.values())

    @property
    def watching(self) -> bool:
        """Whether inotify tells of new files (else a shared look every `LOOK_INTERVAL` while anyone waits)."""
        return self._inotify is not None

    async def reached(self, txid: int, timeout: float) -> bool:
        """Whether the newest L0 txid reached `txid` within `timeout` seconds."""
        self._watch()  # before the look: a file that lands after the look is then an event
        newest = self._newest()
        if newest is not None and newest >= txid:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(txid, []).append(future)
        if self._inotify is None and self._looker is None:
            self._looker = asyncio.create_task(self._look(), name="litestream-ltx-arrivals")
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        finally:
            self._forget(txid, future)
        return True

    async def aclose(self) -> None:
        """Stop watching and looking; callers still waiting get False when their timeout ends."""
        self._unwatch()
        self._watch_failed = True
        looker, self._looker = self._looker, None
        if looker is not None:
            looker.cancel()
            await asyncio.wait([looker])

    def _watch(self) -> None:
        if self._inotify is not None or self._watch_failed or self._directory is None:
            return
        try:
            from asyncinotify import Inotify, Mask

            inotify = Inotify(sync_timeout=0)  # only its descriptor and watch: the records are read here
        except (ImportError, OSError, ValueError) as exc:
            logger.info("inotify is not available (%s); looking at %s every %gs", exc, self._directory, LOOK_INTERVAL)
            self._watch_failed = True
            return
        try:
            # MOVED_TO: Litestream renames each file into place; CLOSE_WRITE: one written in place, whole.
            inotify.add_watch(self._directory, Mask.MOVED_TO | Mask.CLOSE_WRITE)
        except OSError as exc:  # not made yet (no sync so far): try again with the next waiter
            inotify.close()
            logger.debug("cannot watch %s yet (%s); looking instead", self._directory, exc)
            return
        self._inotify = inotify
        asyncio.get_running_loop().add_reader(inotify.fd, self._readable)

    def _unwatch(self) -> None:
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            asyncio.get_running_loop().remove_reader(inotify.fd)
            inotify.close()

    def _readable(self) -> None:
        assert self._inotify is not None
        try:
            data = os.read(self._inotify.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.warning("cannot read inotify events for %s: %s; looking instead", self._directory, exc)
            data = b""
        landed = 0
        ended = not data
        for _, mask, name in records(data):
            if mask & IGNORED:
                ended = True  # the directory was removed (Litestream starting over): look instead
            elif mask & OVERFLOW:
                landed = max(landed, self._newest() or 0)  # records were lost: the files say
            elif len(name) == _NAME_SIZE and name.endswith(b".ltx"):
                try:
                    landed = max(landed, int(name[17:33], 16))
                except ValueError:
                    continue
        if landed:
            self._wake(landed)
        if ended:
            self._unwatch()
            if self._waiting and self._looker is None:
                self._looker = asyncio.create_task(self._look(), name="litestream-ltx-arrivals")

    def _wake(self, newest: int) -> None:
        for txid in [txid for txid in self._waiting if txid <= newest]:
            for future in self._waiting.pop(txid):
                if not future.done():
                    future.set_result(None)

    def _forget(self, txid: int, future: asyncio.Future[None]) -> None:
        futures = self._waiting.get(txid)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiting[txid]

    async def _look(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(LOOK_INTERVAL)
                newest = self._newest()
                if newest is not None:
                    self._wake(newest)
        except Exception:  # never expected: a waiter then times out and falls back to POST /sync
            logger.exception("looking at the local L0 LTX files failed")
        finally:
            if self._looker is asyncio.current_task():
                self._looker = None
