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
    if scope is None or scope.get("type") != "http" or needs_primary(exc) is None:
        return False
    scope.setdefault(_KEY, exc)
    return True


class RaiseNoted:
    """Run `app`, then raise the exception `note()` recorded for this request, if any."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        exc = scope.pop(_KEY, None) if scope["type"] == "http" else None
        if isinstance(exc, BaseException):
            raise exc
