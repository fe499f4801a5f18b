"""Which running `Forwarder` a `@primary_only` call belongs to."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import Forwarder

__all__ = ["current_forwarder"]

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
