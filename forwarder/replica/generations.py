"""A replica's database file as generations: `<db>` is a symlink to `<dir>/.gen-<n>/<name>`.

A Litestream 0.5.17 follower cannot resume and cannot restore over an existing file, so a follower
that must restore again needs a new, empty output file. Restoring into the node's own path would
leave a window (file deleted, then half-written) in which every reader fails ("unable to open
database file", missing tables), and in which any read-write connection recreates an empty file
that blocks the restore. Instead, each restore writes a new generation directory, and once it
has caught up, the node's path is switched to it in one `rename(2)` of a symlink:

- a reader opening `<db>` gets the old generation or the new one, never nothing: SQLite resolves
  the link (checked with SQLite 3.40: its `-wal`, `-shm` and `-journal` live beside the real
  file, in the generation directory), so one connection stays on one file for its whole life;
- the follower's `-txid` is `<dir>/.gen-<n>/<name>-txid`; the Litestream engine and the follower
  guard follow the link (`current()`) and move with it;
- the old generation is removed once no SQLite connection holds a lock on it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

__all__ = ["GENERATION_PREFIX", "Generations"]

GENERATION_PREFIX = ".gen-"
_SIDECARS = ("", "-txid", "-txid.tmp", "-wal", "-shm", "-journal")


class Generations:
    """The generation directories of one replica database path (`database`, e.g. `/data/app.db`)."""

    def __init__(self, database: Path) -> None:
        self.database = Path(database).absolute()
        self.directory = self.database.parent
        self.name = self.database.name

    def _number(self, path: Path) -> int | None:
        if not path.name.startswith(GENERATION_PREFIX):
            return None
        suffix = path.name[len(GENERATION_PREFIX) :]
        return int(suffix) if suffix.isdigit() else None

    def all(self) -> list[Path]:
        """Every generation directory, oldest first."""
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        numbered = [(n, p) for p in entries if (n := self._number(p)) is not None and p.is_dir()]
        return [p for _, p in sorted(numbered)]

    def current(self) -> Path | None:
        """The real file `database` points at now, or None before the first swap."""
        try:
            target = os.readlink(self.database)
        except (FileNotFoundError, OSError):
            return None
        return (self.directory / target).absolute()

    def new(self) -> Path:
        """A fresh, empty generation directory; returns the database path inside it."""
        numbers = [self._number(p) or 0 for p in self.all()]
        current = self.current()
        if current is not None:
            numbers.append(self._number(current.parent) or 0)
        directory = self.directory / f"{GENERATION_PREFIX}{max(numbers, default=0) + 1}"
        directory.mkdir(parents=True)
        return directory / self.name

    def swap(self, target: Path) -> None:
        """Point `database` at `target` atomically (a temporary symlink renamed over it).

        `<db>-txid` becomes a link to the new generation's `-txid` too, right after, for tools that
        read it there: in between it names the old generation's position, which is never ahead of
        the new copy (a swap waits until the new copy has caught up)."""
        self._link(target, self.database)
        self._link(target.with_name(target.name + "-txid"), self.database.with_name(self.name + "-txid"))
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename survives a crash of the host
        finally:
            os.close(fd)

    def _link(self, target: Path, link: Path) -> None:
        temporary = self.directory / f".{link.name}.swap-{os.getpid()}"
        temporary.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, self.directory), temporary)
        os.replace(temporary, link)

    def reset(self) -> None:
        """Remove `database` (a link or a plain file of an older layout), its sidecars and every
        generation: a restarted follower cannot resume, so a first start restores from scratch."""
        for suffix in _SIDECARS:
            self.directory.joinpath(self.name + suffix).unlink(missing_ok=True)
        for generation in self.all():
            shutil.rmtree(generation, ignore_errors=True)

    def stale(self) -> list[Path]:
        """Generation directories other than the current one (and other than `keep`)."""
        current = self.current()
        keep = current.parent if current is not None else None
        return [g for g in self.all() if g != keep]

    def in_use(self, generation: Path) -> bool:
        """Whether some process holds a POSIX lock on the generation's database file: a SQLite
        connection inside a read transaction (or a follower applying a batch)."""
        try:
            inode = os.stat(generation / self.name).st_ino
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError), open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                # "1: POSIX  ADVISORY  READ 1234 08:01:5678 1073741824 1073742335"
                fields = [f for f in line.split() if f != "->"]  # "->": a waiter, not a holder
                if len(fields) > 5 and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return True
        return False

    def remove(self, generation: Path) -> None:
        """Delete one generation directory."""
        shutil.rmtree(generation, ignore_errors=True)
