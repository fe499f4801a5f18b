"""Writes discovered late in frameworks that turn every exception into a 500 page.

`ForwarderMiddleware` forwards a request to the primary when the app *raises* SQLite's read-only
error before its response started. Django and Datasette catch view exceptions and answer 500
themselves, so the error never reaches the middleware. Their integrations note it instead, in
the request's ASGI scope (a Django `got_request_exception` receiver, Datasette's
`handle_exception` hook), and a thin ASGI layer between the middleware and the framework raises
it once the framework returns. The 500 it sent meanwhile is held by the middleware (it holds
every 5xx until the app finishes) and dropped when the request is forwarded.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .middleware.discovery import needs_primary

__all__ = ["RaiseNoted", "note"]

_KEY = "forwarder.needs_primary"


def note(scope: MutableMapping[str, Any] | None, exc: BaseException) -> bool:
    """Remember `exc` for `RaiseNoted` if it means "run this on the primary"; whether it did."""
    holder = scope.get(_KEY) if scope is not None else None
    if not isinstance(holder, list) or needs_primary(exc) is None:
        return False
    holder.append(exc)
    return True


class RaiseNoted:
    """Run `app`, then raise the exception `note()` recorded for this request, if any."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A list, not the exception itself: frameworks hand their views copies of the scope
        # (Datasette's router does), and every copy shares this one list.
        noted: list[BaseException] = []
        scope[_KEY] = noted
        try:
            await self.app(scope, receive, send)
        finally:
            scope.pop(_KEY, None)
        if noted:
            raise noted[0]
