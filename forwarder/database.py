"""Open the node's SQLite database the right way for its role."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .connections import AccessRule, Stamp
from .engines.base import Role
from .txid import Txid

__all__ = ["Database"]

_MAX_IDLE = 40
"""Idle primary connections kept for reuse; more than this many at once are closed after use.

As many as anyio's default worker threads (`to_thread.run_sync`: 40), the most a Starlette or
FastAPI app runs at once: with 8, a primary taking 64 concurrent forwarded writes opened and closed
a connection for most of them (the pragmas and the open cost more than a small write), and took
492 against 426 forwarded writes per second, its app CPU 1.06 against 1.18 ms a write (medians of 4
alternating rounds, wrk at 32 connections on each of two replicas). An idle connection holds only
the pages it read (SQLite's cache fills as it is used)."""


class Database:
    """This node's SQLite database.

    It applies the database-access rule (`forwarder.connections`) to raw `sqlite3`. On the
    primary, connections are read-write with WAL and the production pragmas, and are reused
    (opening one and setting its pragmas costs more than a small write). On a replica,
    every connection is a fresh `mode=ro` one, used for one request and closed: a long-lived
    connection on a Litestream follower's file reads stale pages and can block the follower
    (replication-engines.md, "Follower pitfalls"). A write attempted on a replica fails with
    SQLite's "attempt to write a readonly database", which the middleware turns into a forward.

    ```python
    with forwarder.database.read() as conn:
        rows = conn.execute("SELECT * FROM messages").fetchall()
    with forwarder.database.write() as conn:      # commits on success, rolls back on error
        conn.execute("INSERT INTO messages (text) VALUES (?)", ("hi",))
    ```
    """

    def __init__(
        self,
        path: Path | str,
        *,
        is_primary: Callable[[], bool],
        busy_timeout: float = 5.0,
        replica_busy_timeout: float = 0.1,
    ) -> None:
        self.path = Path(path).absolute()
        self._is_primary = is_primary
        self._busy_timeout = busy_timeout
        # On a replica a read waits `replica_busy_timeout` for the follower's lock, then the
        # middleware serves it from the primary; `busy_timeout` is the primary's.
        self._rule = AccessRule(
            lambda: Role.PRIMARY if is_primary() else Role.REPLICA,
            lambda: Txid(0),
            replica_busy_timeout=replica_busy_timeout,
        )
        self._idle: list[tuple[sqlite3.Connection, Stamp]] = []  # primary connections ready for reuse
        self._lock = threading.Lock()  # connections are taken and returned from worker threads

    def initialize(self) -> None:
        """On the primary: create the file if needed and switch it to WAL (Litestream requires WAL)."""
        if not self._is_primary():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"could not switch {self.path} to WAL mode (got {mode!r})")
        finally:
            conn.close()

    def connect(self) -> sqlite3.Connection:
        """A new connection for this node's role; the caller closes it."""
        return self._open()[0]

    def _open(self) -> tuple[sqlite3.Connection, Stamp]:
        # check_same_thread=False: the pool hands a connection to one user (one worker thread) at a time.
        conn, stamp = self._rule.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        return conn, stamp

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads: fresh on a replica, reused on the primary; released on exit."""
        conn, stamp = self._acquire()
        try:
            yield conn
        finally:
            self._release(conn, stamp)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside `BEGIN IMMEDIATE`: committed on success, rolled back on error, released."""
        conn, stamp = self._acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            self._release(conn, stamp)

    def close(self) -> None:
        """Close the idle connections kept for reuse (connections in use close when released)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def _acquire(self) -> tuple[sqlite3.Connection, Stamp]:
        """A connection and the stamp it was opened under."""
        if self._rule.role is not Role.PRIMARY:
            self.close()  # demoted: read-write connections to this file must not be reused
            return self._open()
        with self._lock:
            kept = self._idle.pop() if self._idle else None
        if kept is None or not self._rule.may_reuse(kept[1]):
            if kept is not None:
                kept[0].close()
            return self._open()
        kept[0].row_factory = sqlite3.Row  # undo what the last user may have set
        return kept

    def _release(self, conn: sqlite3.Connection, stamp: Stamp) -> None:
        # Only a clean primary connection goes back: not one left inside a transaction by its user,
        # and none opened as a replica's (a replica never pools: pitfall 2 of the follower).
        if stamp.role is Role.PRIMARY and self._rule.may_reuse(stamp) and not conn.in_transaction:
            with self._lock:
                if len(self._idle) < _MAX_IDLE:
                    self._idle.append((conn, stamp))
                    return
        conn.close()
