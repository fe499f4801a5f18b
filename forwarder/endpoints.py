"""`@primary_endpoint`: mark a whole HTTP or websocket endpoint as one that runs on the primary."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .context import current_forwarder
from .exceptions import MustRunOnPrimary

__all__ = ["primary_endpoint"]

E = TypeVar("E", bound=Callable[..., Any])


def primary_endpoint(endpoint: E) -> E:
    """Run this endpoint on the primary: on a replica the request is forwarded before it starts.

    For a GET that writes, or a websocket whose whole session must live on the primary. In replay
    mode a websocket is replayed before the handshake (no `101` on the replica); in proxy mode it
    is relayed to the primary.

    ```python
    @primary_endpoint
    async def admin_console(websocket: WebSocket) -> None: ...
    ```
    """

    def check() -> None:
        forwarder = current_forwarder()
        if forwarder is not None and not forwarder.is_primary:
            raise MustRunOnPrimary(
                f"{endpoint.__qualname__} runs on the primary; ForwarderMiddleware forwards it there "
                "(seeing this error means the app is not wrapped in ForwarderMiddleware)"
            )

    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def async_endpoint(*args: Any, **kwargs: Any) -> Any:
            check()
            return await endpoint(*args, **kwargs)

        return async_endpoint  # type: ignore[return-value]

    @functools.wraps(endpoint)
    def sync_endpoint(*args: Any, **kwargs: Any) -> Any:
        check()
        return endpoint(*args, **kwargs)

    return sync_endpoint  # type: ignore[return-value]
