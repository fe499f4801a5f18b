"""The database-access rule: how this node opens SQLite, and when a connection may be reused.

One rule for every way an app reaches the database (DESIGN.md, "Database access"):

- **primary**: read-write, WAL, the production pragmas, pooled;
- **replica**: read-only (`file:<abs path>?mode=ro`, the user's own URI options kept), and no
  connection may serve a snapshot older than the position the tracker has seen;
- **role change** (failover): a connection opened under the old role is never reused.

`forwarder.database` (raw `sqlite3`) and `forwarder.sqlalchemy` apply it; the Django backend and
the Datasette plugin apply it too. Each integration records a `Stamp` when it opens a connection
and asks `AccessRule.may_reuse(stamp)` before handing that connection out again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote

from .engines.base import Role
from .exceptions import ConfigurationError
from .txid import Txid

if TYPE_CHECKING:
    from .runtime import Forwarder
    from .settings import ForwarderSettings

__all__ = [
    "FORWARDER_TABLE_PREFIX",
    "PRIMARY_PRAGMAS",
    "AccessRule",
    "Stamp",
    "configured_role",
    "is_file_database",
    "prepare_primary",
    "read_only_uri",
]

FORWARDER_TABLE_PREFIX = "_forwarder_"
"""Tables forwarder keeps in the app's own database start with this (`_forwarder_rpc_calls`): an
integration hides them from the app's tools (Datasette's table list; Alembic, see the README)."""

PRIMARY_PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA cache_size = -20000",
    "PRAGMA mmap_size = 134217728",
)
"""Per-connection pragmas on the primary (`journal_mode = WAL` is persistent; `prepare_primary` sets it)."""


class _Cursor(Protocol):
    def execute(self, sql: str, /) -> Any: ...
    def fetchone(self) -> Any: ...
    def close(self) -> Any: ...


class DBAPIConnection(Protocol):
    """What `prepare_primary` needs: `sqlite3.Connection`, SQLAlchemy's aiosqlite adapter, Django's."""

    def cursor(self) -> _Cursor: ...


def _split_uri(database: str) -> tuple[str, list[str]]:
    """A SQLite `file:` URI's decoded path and its raw `key=value` options (fragment dropped)."""
    rest = database[len("file:") :].split("#", 1)[0]
    path, _, query = rest.partition("?")
    if path.startswith("//"):
        authority, slash, path = path[2:].partition("/")
        if authority not in ("", "localhost"):
            raise ConfigurationError(
                f"SQLite URI {database!r} names host {authority!r}; SQLite opens local files only: "
                "use file:/absolute/path or file:relative/path"
            )
        path = slash + path
    return unquote(path), [option for option in query.split("&") if option]


def is_file_database(database: str, *, uri: bool = False) -> bool:
    """Whether `database` (what `sqlite3.connect` gets) names a file, not an in-memory database.

    An in-memory or temporary database lives in one process: it cannot be replicated, so a
    cluster refuses it.
    """
    if not uri or not database.startswith("file:"):
        return database not in ("", ":memory:")
    path, options = _split_uri(database)
    return path not in ("", ":memory:") and "mode=memory" not in options


def _refuse_memory(database: str) -> ConfigurationError:
    return ConfigurationError(
        f"database {database!r} is not a file: an in-memory or temporary SQLite database cannot be "
        "replicated to the other nodes; use the file the replication engine replicates, e.g. "
        "the path in FORWARDER_DATABASE (sqlite:////data/app.db)"
    )


def read_only_uri(database: str, *, uri: bool = False) -> str:
    """The read-only URI for `database`: `file:<absolute path>?mode=ro` plus the user's options.

    `database` is a path (relative paths are made absolute against the working directory) or,
    with `uri=True`, a SQLite `file:` URI whose options (`cache=`, `vfs=`, ...) are kept; any
    `mode=` is replaced by `mode=ro`. Open the result with `sqlite3.connect(..., uri=True)`.

    >>> read_only_uri("/data/my app.db")
    'file:/data/my%20app.db?mode=ro'
    >>> read_only_uri("file:/data/app.db?cache=private&mode=rwc", uri=True)
    'file:/data/app.db?mode=ro&cache=private'
    """
    if not is_file_database(database, uri=uri):
        raise _refuse_memory(database)
    options: list[str] = []
    path = database
    if uri and database.startswith("file:"):
        path, options = _split_uri(database)
    absolute = os.path.abspath(path)
    kept = [option for option in options if option.split("=", 1)[0] != "mode"]
    # quote() leaves `/` alone and encodes what SQLite would misread: `?`, `#`, `%`, spaces.
    return f"file:{quote(absolute)}?" + "&".join(["mode=ro", *kept])


def configured_role(settings: ForwarderSettings | None = None) -> Role:
    """This node's role as its `FORWARDER_*` settings give it, without starting a forwarder.

    Litestream: `FORWARDER_ROLE`, else replica when `FORWARDER_PRIMARY_URL` is set. LiteFS (the
    role is the lease's): a replica while the mount holds `.primary`, which LiteFS writes on
    replicas only.
    """
    from .settings import ForwarderSettings

    settings = settings or ForwarderSettings.load()
    role = settings.resolved_role
    if role is None:
        return Role.REPLICA if (settings.database.parent / ".primary").exists() else Role.PRIMARY
    return Role(role)


def prepare_primary(connection: DBAPIConnection) -> None:
    """Make a new primary connection production-ready: WAL (Litestream requires it) and the pragmas."""
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode = WAL")
        mode = cursor.fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(
                f"could not switch the database to WAL mode (got {mode!r}); the replication engine needs WAL"
            )
        for pragma in PRIMARY_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


@dataclass(frozen=True)
class Stamp:
    """What a connection was opened under: the node's role, its position, and which forwarder."""

    role: Role
    position: Txid
    owner: int = 0
    """`id()` of the forwarder that applied the rule (0: none, a single-node app)."""


class AccessRule:
    """The database-access rule for one node, read live from its role and its position.

    `role` and `position` are called each time (they change on failover and on every replicated
    transaction). Build it for a running node with `AccessRule.of(forwarder)`.

    `replica_busy_timeout` is the busy timeout (seconds) of replica connections: a follower holds
    SQLite's lock while it applies a batch, and a read that cannot get it within this bound fails
    with "database is locked", which the middleware serves from the primary instead.
    """

    def __init__(
        self,
        role: Callable[[], Role],
        position: Callable[[], Txid],
        *,
        owner: int = 0,
        replica_busy_timeout: float = 0.1,
    ) -> None:
        self._role = role
        self._position = position
        self._owner = owner
        self.replica_busy_timeout = replica_busy_timeout

    @classmethod
    def of(cls, forwarder: Forwarder) -> AccessRule:
        """The rule for `forwarder`'s node: its topology's role and its tracker's position."""
        return cls(
            lambda: forwarder.topology.role,
            lambda: forwarder.tracker.position,
            owner=id(forwarder),
            replica_busy_timeout=forwarder.replica_busy_timeout,
        )

    @classmethod
    def from_settings(cls, settings: ForwarderSettings | None = None) -> AccessRule:
        """The rule for a process of this node where no forwarder runs (`manage.py`, a script).

        The role comes from the `FORWARDER_*` settings (`configured_role`) and stays fixed; there
        is no tracker, so the position is 0 and reuse is decided by the role alone.
        """
        role = configured_role(settings)
        return cls(lambda: role, lambda: Txid(0))

    @property
    def role(self) -> Role:
        return self._role()

    def stamp(self) -> Stamp:
        """Record this before opening a connection (the position first: the file can only be newer)."""
        return Stamp(self._role(), self._position(), self._owner)

    def may_reuse(self, stamp: Stamp) -> bool:
        """Whether a connection opened under `stamp` may serve another use now.

        Never across a role change (or a change of forwarder); on a replica, never once the
        tracker has seen a newer position: the connection may still read its older snapshot.
        """
        if stamp.owner != self._owner or stamp.role is not self._role():
            return False
        return stamp.role is Role.PRIMARY or stamp.position >= self._position()

    def connect_arguments(self, database: str, *, uri: bool = False, role: Role | None = None) -> tuple[str, bool]:
        """What to pass to `sqlite3.connect` (database, uri) for `role` (default: this node's now).

        The primary opens `database` as given; a replica opens its read-only URI. An in-memory
        database is refused on any role: the other nodes could never see it.
        """
        if not is_file_database(database, uri=uri):
            raise _refuse_memory(database)
        if (role or self._role()) is Role.PRIMARY:
            return database, uri
        return read_only_uri(database, uri=uri), True

    def connect(self, path: Path | str, **kwargs: Any) -> tuple[sqlite3.Connection, Stamp]:
        """A new `sqlite3` connection to `path` for this role, and the stamp to reuse it by.

        On a replica the busy timeout is `replica_busy_timeout`, whatever `timeout` says."""
        stamp = self.stamp()
        database, uri = self.connect_arguments(str(path), role=stamp.role)
        if stamp.role is not Role.PRIMARY:
            kwargs["timeout"] = self.replica_busy_timeout
        conn = sqlite3.connect(database, uri=uri, **kwargs)
        if stamp.role is Role.PRIMARY:
            try:
                prepare_primary(conn)
            except BaseException:
                conn.close()
                raise
        return conn, stamp
