"""The Datasette plugin: Datasette on every node of a cluster, writes on the primary.

Installed with `pip install 'forwarder[datasette]'`, registered through Datasette's plugin entry
point, active in any Datasette process whose environment sets `FORWARDER_DATABASE` (elsewhere
it does nothing). Then `datasette serve` on a replica needs nothing else:

```
FORWARDER_DATABASE=/data/app.db FORWARDER_SECRET=... FORWARDER_PRIMARY_URL=... datasette serve
```

What it does, through Datasette's plugin hooks:

- `asgi_wrapper`: Datasette's ASGI app inside `ForwarderMiddleware` (reads local, writes
  forwarded, read-your-writes), started and stopped by the ASGI lifespan.
- `startup`: the database at `FORWARDER_DATABASE` (added if `datasette serve` was not given it)
  becomes a `ForwarderDatabase`, which opens SQLite by forwarder's access rule: on a replica,
  every read runs on a fresh read-only connection, closed afterwards, instead of Datasette's
  per-thread connections (which read their first snapshot forever and hold the lock the
  Litestream follower waits for); writes (`execute_write*`, canned/stored write queries, the
  JSON write API, plugins) run on a read-only connection there, so SQLite refuses them and the
  request goes to the primary. On the primary: Datasette's own connections, WAL and the pragmas.
- `handle_exception`: a view that hit the read-only error is raised to the middleware instead
  of answering 500, so a GET that writes (a plugin calling `execute_write`) is forwarded too.
- The signing secret: every node must sign cookies, messages and API tokens alike, so unless
  `DATASETTE_SECRET` is set, it is derived from `FORWARDER_SECRET` (`cluster_secret()`).

Datasette 1.0a41 or later 1.0 alphas (the JSON write API and tokens exist only there). The
replica read path overrides two of `Database`'s internal methods (`_execute_fn`,
`_execute_write_fn`), the only place every read and write passes; a Datasette without them is
refused at start-up rather than served stale.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from datasette import hookimpl as _datasette_hookimpl
from datasette.database import Database

from ._late import RaiseNoted, note
from .connections import FORWARDER_TABLE_PREFIX, AccessRule, configured_role, prepare_primary, read_only_uri
from .context import current_forwarder
from .engines.base import Role
from .exceptions import ConfigurationError

__all__ = ["ForwarderDatabase", "cluster_secret"]

_F = TypeVar("_F", bound=Callable[..., Any])


def hookimpl(function: _F) -> _F:
    """Datasette's `@hookimpl`, typed."""
    return cast(_F, _datasette_hookimpl(function))


_SEAMS = ("_execute_fn", "_execute_write_fn", "execute_isolated_fn", "connect")


def cluster_secret(forwarder_secret: str | None = None) -> str | None:
    """Datasette's signing secret for this cluster: `DATASETTE_SECRET`, else one derived from `FORWARDER_SECRET`.

    Derived (HMAC-SHA256 of a fixed label), not the same value: Datasette exposes its secret to
    plugins, and the forwarder secret also signs the calls between nodes. None when neither is set.
    """
    if forwarder_secret is None:
        explicit = os.environ.get("DATASETTE_SECRET")
        if explicit:
            return explicit
        forwarder_secret = os.environ.get("FORWARDER_SECRET")
    if not forwarder_secret:
        return None
    return hmac.new(forwarder_secret.encode(), b"forwarder datasette secret v1", hashlib.sha256).hexdigest()


def _active() -> bool:
    return bool(os.environ.get("FORWARDER_DATABASE"))


if _active() and not os.environ.get("DATASETTE_SECRET") and (_derived := cluster_secret()):
    # `datasette serve` reads its secret from DATASETTE_SECRET, after loading its plugins.
    os.environ["DATASETTE_SECRET"] = _derived


class ForwarderDatabase(Database):
    """A Datasette `Database` that opens the replicated file by forwarder's access rule."""

    def __init__(self, ds: Any, path: str) -> None:
        super().__init__(ds, path=path, is_mutable=True)
        self._fixed_rule: AccessRule | None = None

    def rule(self) -> AccessRule:
        """The running forwarder's rule, or (before it starts: `datasette serve`'s start-up) the settings' role."""
        forwarder = current_forwarder()
        if forwarder is not None:
            return AccessRule.of(forwarder)
        if self._fixed_rule is None:
            self._fixed_rule = AccessRule.from_settings()
        return self._fixed_rule

    def _on_replica(self) -> bool:
        return self.rule().role is Role.REPLICA

    def connect(self, write: bool = False) -> sqlite3.Connection:
        if not self._on_replica():
            conn: sqlite3.Connection = super().connect(write=write)
            if write:
                prepare_primary(conn)
            return conn
        # Read-only for writes too: SQLite refuses them, and the request goes to the primary.
        return sqlite3.connect(read_only_uri(str(self.path)), uri=True, check_same_thread=False)

    async def _run_fresh(self, fn: Callable[[sqlite3.Connection], Any], *, prepare: bool, transaction: bool) -> Any:
        def run() -> Any:
            conn = self.connect()
            try:
                if prepare:
                    self.ds._prepare_connection(conn, self.name)
                if transaction:
                    with conn:
                        return fn(conn)
                return fn(conn)
            finally:
                conn.close()

        if self.ds.executor is None:
            return run()
        ctx = contextvars.copy_context()  # the request's forwarder and Datasette's own context
        return await asyncio.get_running_loop().run_in_executor(self.ds.executor, ctx.run, run)

    async def _execute_fn(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if not self._on_replica():
            return await super()._execute_fn(fn)
        # A connection per read: it sees the replica as it is now and holds no lock afterwards.
        return await self._run_fresh(fn, prepare=True, transaction=False)

    async def _execute_write_fn(
        self, fn: Callable[..., Any], block: bool = True, transaction: bool = True, request: Any = None
    ) -> Any:
        if not self._on_replica():
            return await super()._execute_write_fn(fn, block=block, transaction=transaction, request=request)
        # No write thread on a replica: its connection would stay open on the follower's file.
        return await self._run_fresh(fn, prepare=False, transaction=transaction)

    async def execute_isolated_fn(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if not self._on_replica():
            return await super().execute_isolated_fn(fn)
        return await self._run_fresh(fn, prepare=False, transaction=False)

    async def hidden_table_names(self) -> list[str]:
        """Datasette's hidden tables, plus forwarder's own (`_forwarder_*`: RPC call ids)."""
        hidden: list[str] = await super().hidden_table_names()
        names = await self.table_names()
        return hidden + [name for name in names if name.startswith(FORWARDER_TABLE_PREFIX) and name not in hidden]


def _replicated_path() -> Path:
    from .settings import ForwarderSettings

    return ForwarderSettings.load().database.absolute()


@hookimpl
def startup(datasette: Any) -> None:
    """Serve `FORWARDER_DATABASE` as a `ForwarderDatabase` (replacing Datasette's own `Database` for it)."""
    if not _active():
        return
    missing = [name for name in _SEAMS if not callable(getattr(Database, name, None))]
    if missing:
        raise ConfigurationError(
            f"this Datasette ({', '.join(missing)} missing from datasette.database.Database) is not one forwarder "
            "supports: its replica reads could be stale. Install a supported one: pip install 'forwarder[datasette]'"
        )
    configured_role()  # invalid FORWARDER_* settings fail here, at start-up, with their message
    path = _replicated_path()
    for name, db in list(datasette.databases.items()):
        if isinstance(db, ForwarderDatabase):
            return
        if db.path and Path(db.path).absolute() == path:
            route = db.route
            datasette.remove_database(name)  # closes its per-thread connections
            datasette.add_database(ForwarderDatabase(datasette, str(path)), name=name, route=route)
            return
    datasette.add_database(ForwarderDatabase(datasette, str(path)), name=path.stem)


@hookimpl
def asgi_wrapper(datasette: Any) -> Callable[[Any], Any] | None:
    """Put Datasette inside `ForwarderMiddleware`, with a node built from the `FORWARDER_*` settings."""
    if not _active():
        return None
    from .middleware import ForwarderMiddleware
    from .runtime import Forwarder

    forwarder = Forwarder.from_settings()

    def wrap(app: Any) -> Any:
        return ForwarderMiddleware(RaiseNoted(app), forwarder=forwarder)

    return wrap


@hookimpl
def handle_exception(datasette: Any, request: Any, exception: BaseException) -> None:
    """A view hit the read-only error on a replica: note it, so the request is forwarded, not answered 500."""
    if _active() and request is not None:
        note(request.scope, exception)


class _Served:
    """`forwarder.datasette:app`: Datasette over `FORWARDER_DATABASE`, as `datasette serve` runs it.

    For `forwarder dev --datasette` (and `uvicorn forwarder.datasette:app`). Built on its first
    ASGI call: this module is also the plugin, imported while Datasette loads its plugins.
    """

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from datasette.app import Datasette

            self._app = Datasette([], secret=cluster_secret()).app()
        await self._app(scope, receive, send)


app = _Served()
