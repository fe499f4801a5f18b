"""The `forwarder.django` database backend: Django's sqlite3 backend under the access rule.

Django loads this module for `"ENGINE": "forwarder.django"`. `DatabaseWrapper` is Django's own
sqlite3 `DatabaseWrapper` with four backend methods overridden:

- `get_connection_params`: the rule's connect arguments. The primary opens `NAME` as given; a
  replica opens `file:<absolute NAME>?mode=ro`, so any write raises SQLite's read-only error and
  `ForwarderMiddleware` forwards the request to the primary.
- `get_new_connection`: on the primary, WAL and the production pragmas (`prepare_primary`).
- `is_usable` / `close_if_unusable_or_obsolete` (Django's health checks, run when a request
  starts and ends and, with `CONN_HEALTH_CHECKS`, before a reused connection's first query): a
  connection opened under another role, or by another forwarder, is closed; and a replica's
  connection is closed at the end of every request whatever `CONN_MAX_AGE` says. On a Litestream
  follower an idle open connection keeps its old snapshot *and* holds the lock `restore -f` waits
  for (bench/replica_pool.py measured it for SQLAlchemy's pool), so a persistent replica
  connection would not only read stale rows, it would stop the replica from advancing.
- `prepare_database` (Django calls it first thing in `manage.py migrate`): refused on a replica.

The forwarder is the app's running one (`current_forwarder()`; Django runs sync views in
threads through asgiref's `sync_to_async`, which copies the request's context variables, so the
middleware's forwarder is found there). In a process where none runs (`manage.py`), the role
comes from the `FORWARDER_*` settings (`AccessRule.from_settings`); with no forwarder running and
an in-memory database (Django's test runner), the backend is Django's sqlite3 backend as is.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from django.core.management.base import CommandError
from django.core.signals import got_request_exception
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteDatabaseWrapper

from .._late import note
from ..connections import AccessRule, Stamp, is_file_database, prepare_primary
from ..context import current_forwarder
from ..engines.base import Role
from ..exceptions import MustRunOnPrimary

__all__ = ["DatabaseWrapper", "MigrateOnReplica"]


class MigrateOnReplica(MustRunOnPrimary, CommandError):
    """`manage.py migrate` ran on a replica, whose database file is the replication engine's."""


class DatabaseWrapper(SQLiteDatabaseWrapper):
    """Django's sqlite3 `DatabaseWrapper`, opening connections by forwarder's access rule."""

    display_name = "SQLite (forwarder)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._forwarder_stamp: Stamp | None = None
        self._pending_stamp: Stamp | None = None
        self._rules: tuple[object, AccessRule] | None = None

    def access_rule(self) -> AccessRule | None:
        """The rule this connection follows now; None for a plain in-memory database outside a cluster."""
        forwarder = current_forwarder()
        if forwarder is not None:
            if self._rules is None or self._rules[0] is not forwarder:
                self._rules = (forwarder, AccessRule.of(forwarder))
            return self._rules[1]
        name = str(self.settings_dict["NAME"])
        if not is_file_database(name, uri=name.startswith("file:")):
            return None
        if self._rules is None or self._rules[0] is not None:
            self._rules = (None, AccessRule.from_settings())
        return self._rules[1]

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        rule = self.access_rule()
        if rule is None:
            self._pending_stamp = None
            return params
        stamp = rule.stamp()  # before opening: the file can only be newer than the stamp says
        database = str(params["database"])
        target, uri = rule.connect_arguments(database, uri=database.startswith("file:"), role=stamp.role)
        # Django always connects with uri=True; a plain path is then still read as a file name.
        params.update(database=target, uri=True if uri else params.get("uri", True))
        self._pending_stamp = stamp
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> sqlite3.Connection:
        connection: sqlite3.Connection = super().get_new_connection(conn_params)
        stamp, self._pending_stamp = self._pending_stamp, None
        if stamp is not None and stamp.role is Role.PRIMARY:
            try:
                prepare_primary(connection)
            except BaseException:
                connection.close()
                raise
        self._forwarder_stamp = stamp
        return connection

    def _may_keep(self) -> bool:
        stamp = self._forwarder_stamp
        rule = self.access_rule()
        if stamp is None:  # opened outside the rule (an in-memory database, no forwarder)
            return rule is None
        return rule is not None and rule.may_reuse(stamp)

    def is_usable(self) -> bool:
        return bool(super().is_usable()) and self._may_keep()

    def close_if_unusable_or_obsolete(self) -> None:
        super().close_if_unusable_or_obsolete()
        if self.connection is None or self.in_atomic_block:
            return
        stamp = self._forwarder_stamp
        if (stamp is not None and stamp.role is Role.REPLICA) or not self._may_keep():
            # Between requests on a replica no connection stays open: see the module docstring.
            self.close()

    def prepare_database(self) -> None:
        rule = self.access_rule()
        if rule is not None and rule.role is Role.REPLICA:
            raise MigrateOnReplica(
                f"this node is a replica: its database {self.settings_dict['NAME']} is a copy that the "
                "replication engine keeps, and a migration here would be refused (read-only) or lost. "
                "Run `manage.py migrate` on the primary (FORWARDER_ROLE=primary, its FORWARDER_DATABASE); "
                "the replicas receive the new schema through replication"
            )
        super().prepare_database()


def _note_late_write(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """`got_request_exception`: a view hit the read-only error; let the ASGI layer raise it."""
    import sys

    exc = sys.exc_info()[1]
    if exc is not None and request is not None:
        note(getattr(request, "scope", None), exc)


got_request_exception.connect(_note_late_write, dispatch_uid="forwarder.django.late_writes")
