"""SQLAlchemy and SQLModel engines that follow the database-access rule: one changed import.

```python
from forwarder.sqlalchemy import create_engine          # instead of sqlmodel's or sqlalchemy's

engine = create_engine("sqlite:////data/app.db")        # same arguments, plus optional forwarder=
```

`create_engine` and `create_async_engine` (aiosqlite) take SQLAlchemy's own arguments and return
SQLAlchemy's own engines, with pool and engine events that apply `forwarder.connections`:

- **primary**: the URL as given; WAL and the production pragmas on every new connection
  (`connect` event); SQLAlchemy's normal pool.
- **replica**: every new connection opens the read-only URI (`do_connect` event), so a write raises
  SQLite's "attempt to write a readonly database" and `ForwarderMiddleware` forwards the request.
  Replica connections stay pooled only while they cannot hold replication up
  (`forwarder.replica_pool`): an idle one lingers at most 10 ms, and pooled ones are closed as
  soon as the Litestream follower asks for the file. Only WAL-mode connections are pooled: while
  one is open the follower cannot write the file, so it never reads an older snapshot than a
  fresh one would. Measured in bench/replica_pool.py and bench/sqlmodel_read.py.
- **any pooled connection** is handed out again only if the rule allows it (`checkout` event,
  else `DisconnectionError` and the pool opens a fresh one): never across a role change
  (failover), never on a replica once the tracker's position moved.

Without `forwarder=`, the engine uses the app's running forwarder (`current_forwarder()`), looked
up when a connection opens: apps create engines at import time, before the forwarder starts.
With no forwarder running at all (a script, a single-node test) the engine is SQLAlchemy's, as is.

This module imports SQLAlchemy: install it with `pip install 'forwarder[sqlalchemy]'`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine as _sa_create_engine, event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine as _sa_create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from .connections import AccessRule, Stamp, is_file_database, prepare_primary
from .context import current_forwarder
from .engines.base import Role
from .exceptions import ConfigurationError
from .follower_lock import file_id
from .replica_pool import LINGER, ReplicaIdle
from .txid import Txid

if TYPE_CHECKING:
    from .runtime import Forwarder

__all__ = ["create_async_engine", "create_engine"]

_STAMP = "forwarder.stamp"  # ConnectionPoolEntry.info key: the Stamp the connection was opened under
_FRESH = "forwarder.fresh"  # set by do_connect, cleared by the first checkout
_PATH = "forwarder.path"  # the database path as the URL gives it (a replica's symlink to its generation)
_POOLABLE = "forwarder.poolable"  # a replica connection in WAL mode: the follower cannot write under it
_FILE = "forwarder.file"  # (device, inode) of the file a replica connection opened

_NO_RULE = Stamp(Role.PRIMARY, Txid(0), 0)  # opened with no forwarder running: a plain single-node connection


def create_engine(url: str | URL, *, forwarder: Forwarder | None = None, **kwargs: Any) -> Engine:
    """`sqlalchemy.create_engine` (and `sqlmodel.create_engine`) for a forwarder node.

    Same arguments and result; `forwarder` defaults to the app's running forwarder.
    """
    _refuse_creator(kwargs, "creator")
    _refuse_other_databases(url)
    engine = _sa_create_engine(url, **kwargs)
    _Binding(engine, forwarder).listen()
    return engine


def create_async_engine(url: str | URL, *, forwarder: Forwarder | None = None, **kwargs: Any) -> AsyncEngine:
    """`sqlalchemy.ext.asyncio.create_async_engine` for a forwarder node (`sqlite+aiosqlite://` URLs).

    Same arguments and result; `forwarder` defaults to the app's running forwarder.
    """
    _refuse_creator(kwargs, "async_creator")
    _refuse_creator(kwargs, "creator")
    _refuse_other_databases(url)
    engine = _sa_create_async_engine(url, **kwargs)
    # aiosqlite connections close on the event loop, not from the reaper thread: no lingering.
    _Binding(engine.sync_engine, forwarder, linger=0).listen()
    return engine


def _refuse_creator(kwargs: dict[str, Any], name: str) -> None:
    if name in kwargs:
        raise ConfigurationError(
            f"{name}= bypasses the URL, so forwarder could not open the replica read-only; "
            "drop it and put the database path (and options) in the URL, or use sqlalchemy's own create_engine"
        )


def _refuse_other_databases(url: str | URL) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise ConfigurationError(
            f"forwarder.sqlalchemy got a {parsed.get_backend_name()} URL ({parsed!r}); forwarder replicates "
            "SQLite only: use a sqlite:/// (or sqlite+aiosqlite:///) URL to the replicated file"
        )


class ReplicaPooling(enum.Enum):
    """How a replica engine keeps connections (`BUSY` is the rule; the others are measured against it)."""

    BUSY = "busy"
    """Pooled while other requests use the engine and the follower is not waiting for the file."""
    NEVER = "never"
    """Closed on every checkin: a fresh connection per checkout."""
    RECYCLE = "recycle"
    """Pooled until the position moves: blocks a Litestream follower (kept for bench/replica_pool.py)."""


class _Binding:
    """The events that apply the access rule to one engine's pool."""

    def __init__(
        self,
        engine: Engine,
        forwarder: Forwarder | None,
        *,
        replica_pooling: ReplicaPooling = ReplicaPooling.BUSY,
        linger: float = LINGER,
    ) -> None:
        self.engine = engine
        self.forwarder = forwarder
        self._arguments: dict[tuple[str, bool, Role], tuple[str, bool]] = {}
        self._rule: AccessRule | None = None
        self._rule_of: Forwarder | None = None
        # linger 0: idle connections are closed when the engine goes idle, by the request that
        # leaves last (async engines, whose connections close on the event loop).
        self._replicas = ReplicaIdle(self._queue_pool, linger=linger, reaper=linger > 0)
        # Only a QueuePool's dispose() closes idle connections and nothing else (a StaticPool's
        # closes its one shared connection): other pools get a fresh connection per checkout.
        self.replica_pooling = replica_pooling if isinstance(engine.pool, QueuePool) else ReplicaPooling.NEVER

    def _queue_pool(self) -> QueuePool:
        pool = self.engine.pool  # read each time: Engine.dispose() puts a new pool in place
        assert isinstance(pool, QueuePool)  # replica_pooling is NEVER for any other pool class
        return pool

    def listen(self) -> None:
        event.listen(self.engine, "do_connect", self._do_connect)
        event.listen(self.engine, "connect", self._connect)
        event.listen(self.engine, "checkout", self._checkout)
        if self.replica_pooling is not ReplicaPooling.RECYCLE:
            event.listen(self.engine, "checkin", self._checkin)

    def rule(self) -> AccessRule | None:
        """The rule of the forwarder this engine follows now (None: no forwarder, a plain engine)."""
        forwarder = self.forwarder or current_forwarder()
        if forwarder is None:
            return None
        if forwarder is not self._rule_of:
            self._rule, self._rule_of = AccessRule.of(forwarder), forwarder
        return self._rule

    def _do_connect(self, dialect: Any, record: ConnectionPoolEntry, cargs: list[Any], cparams: dict[str, Any]) -> None:
        rule = self.rule()
        stamp = _NO_RULE if rule is None else rule.stamp()
        record.info[_STAMP] = stamp
        record.info[_FRESH] = True
        if rule is None:
            return
        database = str(cargs[0]) if cargs else str(cparams.get("database", ""))
        uri = bool(cparams.get("uri", False))
        key = (database, uri, stamp.role)
        arguments = self._arguments.get(key)
        if arguments is None:
            if not is_file_database(database, uri=uri):
                raise ConfigurationError(
                    f"{self.engine.url!r} is an in-memory database: on a forwarder cluster every node must use the "
                    "replicated file; use sqlite:////<absolute path of FORWARDER_DATABASE> "
                    "(e.g. sqlite:////data/app.db)"
                )
            # Worked out once per role: a replica opens a connection per request.
            arguments = self._arguments[key] = rule.connect_arguments(database, uri=uri, role=stamp.role)
        target, uri = arguments
        record.info[_PATH] = database
        if cargs:
            cargs[0] = target
        else:
            cparams["database"] = target
        cparams["uri"] = uri
        if stamp.role is not Role.PRIMARY:
            # A follower applying a batch holds the lock: past this bound the read goes to the primary.
            cparams["timeout"] = rule.replica_busy_timeout

    def _connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        stamp: Stamp = record.info.get(_STAMP, _NO_RULE)
        if stamp.owner and stamp.role is Role.PRIMARY:
            prepare_primary(dbapi_connection)
        elif stamp.owner and self.replica_pooling is ReplicaPooling.BUSY:
            self._replicas.path = path = record.info.get(_PATH, "")
            record.info[_FILE] = identity = file_id(path)
            # Only a WAL-mode reader keeps the follower out for as long as it is open; a rollback-mode
            # one would let the follower write between two reads, under its page cache.
            record.info[_POOLABLE] = self._replicas.wal_mode(identity)

    def _checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        stamp: Stamp = record.info.get(_STAMP, _NO_RULE)
        rule = self.rule()
        if record.info.pop(_FRESH, False):
            # Opened for this checkout: it has read nothing yet, so it has no snapshot to be stale.
            if stamp.owner and stamp.role is Role.REPLICA and self.replica_pooling is ReplicaPooling.BUSY:
                self._replicas.checked_out()
            return
        if rule is None:
            if stamp.owner:
                raise exc.DisconnectionError("forwarder stopped: connection opened under its rule")
            return
        if stamp.role is Role.REPLICA and self.replica_pooling is ReplicaPooling.BUSY:
            if not rule.may_reuse(stamp):
                raise exc.DisconnectionError(f"opened at txid {stamp.position}; the position moved")
            if self._blocks_replication(record):
                self._replicas.close_idle()
                raise exc.DisconnectionError("the follower is waiting for the replica's file")
            self._replicas.checked_out()
            return
        if not rule.may_reuse(stamp):
            # The pool discards it and opens a new one (do_connect applies the rule anew).
            raise exc.DisconnectionError(
                f"opened as {stamp.role.value} at txid {stamp.position}; now {rule.role.value}, position moved"
            )

    def _blocks_replication(self, record: ConnectionPoolEntry) -> bool:
        """Whether keeping this replica connection open now would hold the follower up (or read an old file)."""
        return not record.info.get(_POOLABLE, False) or self._replicas.must_close(record.info.get(_FILE))

    def _checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        stamp: Stamp | None = record.info.get(_STAMP)
        if stamp is None or stamp.role is not Role.REPLICA or not stamp.owner:
            return
        if self.replica_pooling is ReplicaPooling.NEVER:
            if dbapi_connection is not None:
                record.invalidate()  # closed now: an idle connection on a follower's file may hold its lock
            return
        replicas = self._replicas
        replicas.checked_in()
        if dbapi_connection is None:
            return  # invalidated while in use: nothing to keep
        replicas.refresh()
        rule = self.rule()
        # The file's generation is checked at the next checkout: not here, on every request's way out.
        keep = (
            (replicas.in_use > 0 or replicas.linger > 0)
            and not replicas.wanted
            and record.info.get(_POOLABLE, False)
            and rule is not None
            and rule.may_reuse(stamp)
        )
        if keep:
            replicas.kept()
            return
        # The engine is idle, or the follower wants the file: leave no connection open on it.
        record.invalidate()
        self._replicas.close_idle()
