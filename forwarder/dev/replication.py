"""The Litestream processes of the local cluster: `replicate` on the primary, a `restore -f` follower per replica."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from ..engines.base import Role
from ..engines.litestream import LitestreamEngine
from ..engines.litestream_config import (
    Intervals,
    litestream_environ,
    recommended_intervals,
    replicate_argv,
    replicate_config,
    restore_argv,
)
from ..exceptions import EngineError, InvalidTxid
from ..store import FileStore, Store
from ..txid import Txid
from .processes import ClusterError, ManagedProcess

__all__ = ["Follower", "Replicator", "as_store", "read_txid_file"]

SOCKET_DEADLINE = 10.0
"""Seconds `litestream replicate` gets to open its control socket."""

RESTORE_DEADLINE = 30.0
"""Seconds a follower gets to finish its first restore (write `<db>-txid`)."""

_MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path is 108 bytes on Linux, NUL included
_NO_BACKUP_YET = "no matching backup files available"
_FOLLOWER_FILES = ("", "-txid", "-txid.tmp", "-wal", "-shm", "-journal")


def as_store(store: Store | Path) -> Store:
    """`store` itself, or a `file` store for a plain directory."""
    return FileStore(store) if isinstance(store, Path) else store


def read_txid_file(path: Path) -> Txid | None:
    """The txid in a follower's `-txid` file; None if it is missing or unreadable."""
    try:
        return Txid.parse(path.read_text(encoding="ascii", errors="replace").strip())
    except (OSError, InvalidTxid):
        return None


class Replicator:
    """`litestream replicate` of the primary's database into `store` (a directory or an S3 bucket)."""

    def __init__(
        self,
        database: Path,
        store: Store | Path,
        socket_path: Path,
        *,
        log_path: Path,
        intervals: Intervals | None = None,
    ) -> None:
        self.database = database.absolute()
        self.store = as_store(store)
        self.intervals = intervals or recommended_intervals(self.store)
        self.socket_path = socket_path.absolute()
        self.config_path = self.database.parent / "litestream.yml"
        self.engine = LitestreamEngine(self.database, Role.PRIMARY, socket_path=self.socket_path)
        self.process = ManagedProcess(
            "litestream replicate",
            replicate_argv(self.config_path),
            log_path=log_path,
            env=litestream_environ(self.store),
        )

    async def start(self) -> None:
        """Put the database in WAL mode, write the config, start `replicate`, wait for its socket and a first sync."""
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ClusterError(
                f"the control socket path {self.socket_path} is longer than the {_MAX_SOCKET_PATH} bytes a unix "
                "socket path may have; use a shorter data directory"
            )
        try:
            await self.engine.read_position()
        except EngineError:
            pass
        else:
            raise ClusterError(
                f"a Litestream process already answers on {self.socket_path}: another cluster (or a leftover "
                "`litestream replicate` of a killed one) uses this data directory; stop it or pick another --data-dir"
            )
        self.database.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(self.store, FileStore):
            self.store.path.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.database)) as db:  # Litestream only replicates WAL-mode databases
            db.execute("PRAGMA journal_mode=WAL")
        self.socket_path.unlink(missing_ok=True)  # a stale socket of a killed run
        # The config may hold the store's secret key: readable by this user only.
        self.config_path.unlink(missing_ok=True)
        self.config_path.touch(mode=0o600)
        self.config_path.write_text(replicate_config(self.database, self.store, self.socket_path, self.intervals))
        await self.process.start()
        deadline = time.monotonic() + SOCKET_DEADLINE
        while True:
            if not self.process.running:
                raise ClusterError(
                    f"`litestream replicate` exited with status {self.process.returncode} "
                    f"(log {self.process.log_path}):\n{self.process.tail()}"
                )
            try:
                await self.engine.read_position()
                break
            except EngineError as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"`litestream replicate` did not answer on {self.socket_path} within {SOCKET_DEADLINE:g}s "
                        f"({exc}); log {self.process.log_path}:\n{self.process.tail()}"
                    ) from None
            await asyncio.sleep(0.02)
        # A forced sync puts a first snapshot into the replica directory, so followers can restore at once.
        await self.engine.commit_position()

    async def txid(self) -> Txid:
        """The primary's current txid (`GET /txid`); raises `EngineError` if the socket does not answer."""
        return await self.engine.read_position()

    async def stop(self) -> None:
        """Stop `replicate` (it syncs once more on SIGTERM) and close the socket client."""
        await self.engine.aclose()
        await self.process.stop()


class Follower:
    """`litestream restore -f` of `store` (a directory or an S3 bucket) into one replica node's database file.

    Litestream 0.5.17 cannot resume a follower (reference pitfall 3), so every start wipes the
    node's files and restores from scratch.
    """

    def __init__(
        self, name: str, database: Path, store: Store | Path, *, log_path: Path, intervals: Intervals | None = None
    ) -> None:
        self.name = name
        self.database = database.absolute()
        self.store = as_store(store)
        self.intervals = intervals or recommended_intervals(self.store)
        self.txid_path = self.database.with_name(self.database.name + "-txid")
        self.log_path = log_path
        self.process: ManagedProcess | None = None
        self.paused = False

    @property
    def running(self) -> bool:
        """True while the follower process runs."""
        return self.process is not None and self.process.running

    @property
    def returncode(self) -> int | None:
        """Exit status of the last follower process (None while it runs or before the first start)."""
        return self.process.returncode if self.process is not None else None

    def position(self) -> Txid | None:
        """The txid the follower has applied (None before its first restore finished)."""
        return read_txid_file(self.txid_path)

    def wipe(self) -> None:
        """Delete the node's database and its sidecar files."""
        for suffix in _FOLLOWER_FILES:
            self.database.with_name(self.database.name + suffix).unlink(missing_ok=True)

    async def start(self) -> None:
        """Wipe, restore and follow; return once the first restore is done (`-txid` exists)."""
        self.database.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + RESTORE_DEADLINE
        while True:
            self.wipe()
            self.paused = False
            self.process = process = ManagedProcess(
                f"{self.name} litestream restore -f",
                restore_argv(self.database, self.store, self.intervals),
                log_path=self.log_path,
                env=litestream_environ(self.store),
            )
            await process.start()
            while process.running and not self.txid_path.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if self.txid_path.exists():
                return
            await process.stop()
            log = process.tail()
            # The replica directory has no snapshot yet (replicate just started): try again.
            if _NO_BACKUP_YET in log and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                continue
            raise ClusterError(
                f"{self.name}: `litestream restore -f` did not restore {self.database} "
                f"(status {process.returncode}, log {self.log_path}):\n{log}"
            )

    async def stop(self) -> None:
        """Stop the follower process (its files stay until the next `start()` wipes them)."""
        if self.process is not None:
            await self.process.stop()
        self.paused = False

    def pause(self) -> None:
        """Freeze the follower (SIGSTOP): the node's replica stops advancing until `resume()`."""
        if self.process is not None and self.process.running:
            self.process.signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """Let a paused follower continue (SIGCONT)."""
        if self.process is not None and self.paused:
            self.process.signal(signal.SIGCONT)
        self.paused = False
