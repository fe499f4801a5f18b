"""The Litestream processes of the local cluster: `replicate` on the primary, a `restore -f` follower per replica."""

from __future__ import annotations

import asyncio
import os
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
)
from ..exceptions import EngineError
from ..replica import ReplicaSupervisor, read_txid_file
from ..store import FileStore, Store
from ..txid import Txid
from .processes import ClusterError, ManagedProcess

__all__ = ["Follower", "Replicator", "as_store", "read_txid_file"]

SOCKET_DEADLINE = 10.0
"""Seconds `litestream replicate` gets to open its control socket."""

_MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path is 108 bytes on Linux, NUL included


def as_store(store: Store | Path) -> Store:
    """`store` itself, or a `file` store for a plain directory."""
    return FileStore(store) if isinstance(store, Path) else store


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


class Follower(ReplicaSupervisor):
    """A replica node's `litestream restore -f` follower in the local cluster: the library's
    `ReplicaSupervisor` (generations, atomic re-restore), which the cluster's watchdog drives."""
