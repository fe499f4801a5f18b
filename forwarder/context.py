"""Which running `Forwarder` a `@primary_only` call belongs to, and which request it reports its txid to."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import Forwarder
    from .txid import Txid

__all__ = ["RequestWrites", "current_forwarder", "note_stale", "note_write", "stop_tracking", "track_writes"]

_current: ContextVar[Forwarder | None] = ContextVar("forwarder.current", default=None)
_running: list[Forwarder] = []


def current_forwarder() -> Forwarder | None:
    """The forwarder of the request being handled, else the one running in this process.

    None when no forwarder runs here (a script, a test without the middleware): callers then run
    the function locally, as on a single-node app.
    """
    forwarder = _current.get()
    if forwarder is not None:
        return forwarder
    if len(_running) == 1:
        return _running[0]
    if not _running:
        return None
    raise RuntimeError(
        f"{len(_running)} forwarders are running in this process and this call is outside any request "
        "handled by ForwarderMiddleware; wrap it in `with forwarder.activate():` to say which one"
    )


class RequestWrites:
    """The txid of the latest `@primary_only` call made while one request is served on a replica, and
    whether one ran without a txid (`stale`: the primary could not learn it)."""

    __slots__ = ("stale", "txid")

    def __init__(self) -> None:
        self.txid: Txid | None = None
        self.stale = False


# A mutable holder in the variable: contexts are copied into tasks and threads, the holder is shared.
_writes: ContextVar[RequestWrites | None] = ContextVar("forwarder.writes", default=None)


track_writes = _writes.set
"""`track_writes(writes)`: record calls made from here on (in this context and those copied from it)
into `writes`; returns the token for `stop_tracking`. The variable's own method: no frame of ours,
on every replica read."""

stop_tracking = _writes.reset
"""`stop_tracking(token)`: back to what was tracked before `track_writes`."""


def note_write(txid: Txid) -> None:
    """A `@primary_only` call committed at `txid`: the request being served, if any, says so."""
    writes = _writes.get()
    if writes is not None and (writes.txid is None or txid > writes.txid):
        writes.txid = txid


def note_stale() -> None:
    """A `@primary_only` call ran on the primary, which could not learn its txid: the request being
    served, if any, says `Forwarder-Stale: 1`."""
    writes = _writes.get()
    if writes is not None:
        writes.stale = True
