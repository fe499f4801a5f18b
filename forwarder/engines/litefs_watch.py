"""The inotify watch on the LiteFS mount directory: which of `-pos` and `.primary` changed.

On a real FUSE mount inotify sees nothing (LiteFS changes the files from inside the daemon), so
the events stream is the main signal; on a plain directory, such as the fake in
`forwarder.dev.fake_litefs`, the watch sees every change at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncinotify import Inotify

__all__ = ["MountWatch"]

logger = logging.getLogger("forwarder.engines.litefs")


@dataclass
class MountWatch:
    """Calls `on_pos`, `on_primary` or `on_lost` (events were dropped) as files of `mount` change."""

    mount: Path
    pos_name: str
    primary_name: str
    on_pos: Callable[[], None]
    on_primary: Callable[[], None]
    on_lost: Callable[[], None]
    _inotify: Inotify | None = field(default=None, init=False)

    def start(self) -> bool:
        """Start watching; False when inotify is not available here (the stream alone is followed)."""
        try:
            from asyncinotify import Inotify, Mask

            inotify = Inotify()
        except (ImportError, OSError, ValueError) as exc:
            logger.info("inotify is not available (%s); following %s through LiteFS events only", exc, self.mount)
            return False
        mask = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE | Mask.MODIFY
        try:
            # The directory, not the files: a file replaced by rename or deleted and created again
            # would end a watch on the file itself.
            inotify.add_watch(self.mount, mask)
        except OSError as exc:
            inotify.close()
            logger.info("cannot watch %s with inotify (%s); following LiteFS events only", self.mount, exc)
            return False
        self._inotify = inotify
        return True

    async def follow(self) -> None:
        """Dispatch changes until the watch ends (the directory unmounted or removed) or the task is cancelled."""
        from asyncinotify import Mask

        assert self._inotify is not None
        # A writer that truncates and writes `.primary` in place would show it blank for a moment;
        # act on `.primary` only once it is complete (closed, renamed into place) or gone.
        primary_mask = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.DELETE
        try:
            while True:
                event = await self._inotify.get()
                if event.mask & Mask.IGNORED:
                    break
                name = None if event.name is None else str(event.name)
                if event.mask & Mask.Q_OVERFLOW:
                    self.on_lost()  # events were lost, whatever their names
                elif name == self.pos_name:
                    self.on_pos()
                elif name == self.primary_name and event.mask & primary_mask:
                    self.on_primary()
        finally:
            self.close()
        logger.warning(
            "the inotify watch on %s ended (unmounted or removed?); following LiteFS events only", self.mount
        )

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
