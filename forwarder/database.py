"""Open the node's SQLite database the right way for its role."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Database"]

# Per-connection pragmas for the primary (journal_mode=WAL is persistent and set once in `initialize`).
_PRIMARY_PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA cache_size = -20000",
    "PRAGMA mmap_size = 134217728",
)

_MAX_IDLE = 8
"""Idle primary connections kept for reuse; more than this many at once are closed after use."""


class Database:
    """This node's SQLite database.

    On the primary, connections are read-write with WAL and the production pragmas, and are reused
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

    def __init__(self, path: Path | str, *, is_primary: Callable[[], bool], busy_timeout: float = 5.0) -> None:
        self.path = Path(path).absolute()
        self._is_primary = is_primary
        self._busy_timeout = busy_timeout
        self._idle: list[sqlite3.Connection] = []  # primary connections ready for reuse
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
        if self._is_primary():
            # Usable from any thread: the pool hands it to one user (one worker thread) at a time.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
            for pragma in _PRIMARY_PRAGMAS:
                conn.execute(pragma)
        else:
            conn = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro", uri=True, timeout=self._busy_timeout, isolation_level=None
            )
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads: fresh on a replica, reused on the primary; released on exit."""
        conn, reusable = self._acquire()
        try:
            yield conn
        finally:
            self._release(conn, reusable)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside `BEGIN IMMEDIATE`: committed on success, rolled back on error, released."""
        conn, reusable = self._acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            self._release(conn, reusable)

    def close(self) -> None:
        """Close the idle connections kept for reuse (connections in use close when released)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _acquire(self) -> tuple[sqlite3.Connection, bool]:
        """A connection, and whether it may be reused (it was opened as a primary connection)."""
        if not self._is_primary():
            self.close()  # demoted: read-write connections to this file must not be reused
            return self.connect(), False
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            return self.connect(), True
        conn.row_factory = sqlite3.Row  # undo what the last user may have set
        return conn, True

    def _release(self, conn: sqlite3.Connection, reusable: bool) -> None:
        # Only a clean primary connection goes back: not one left inside a transaction by its user,
        # and none at all once this node is no longer the primary.
        if reusable and self._is_primary() and not conn.in_transaction:
            with self._lock:
                if len(self._idle) < _MAX_IDLE:
                    self._idle.append(conn)
                    return
        conn.close()
