"""The ASGI layer between `ForwarderMiddleware` and Django's `ASGIHandler`."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from .._late import RaiseNoted

__all__ = ["DjangoApp"]


class DjangoApp:
    """Django's ASGI handler as `ForwarderMiddleware` needs it.

    - **lifespan**: Django's handler refuses the lifespan scope, so the server would never
      start the forwarder; this answers it (Django itself has nothing to start or stop).
    - **http**: a view that raised SQLite's read-only error (noted by the backend's
      `got_request_exception` receiver) is raised again once Django has answered its 500, so
      the middleware forwards the request to the primary.
    """

    def __init__(self, django: ASGIApp) -> None:
        self.django = django
        self._http = RaiseNoted(django)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            await self.django(scope, receive, send)
