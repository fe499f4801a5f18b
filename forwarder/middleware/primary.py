"""Serving on the primary: a write's txid, cookie and `Server-Timing`; `Forwarder-Node` on every response."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..exceptions import EngineError
from ..logsafe import clean
from ..policy import CookiePolicy
from ..runtime import Forwarder
from ..txid import Txid
from . import headers as h
from .cookie import clear_cookie, read_cookie, txid_headers
from .hops import header

__all__ = ["serve_on_primary", "stamped"]

logger = logging.getLogger("forwarder.middleware")

_STALE_WRITE = (
    "the write is committed, and answered with Forwarder-Stale: 1 (no txid: nothing for a replica to wait for)"
)


def serve_on_primary(
    app: ASGIApp,
    forwarder: Forwarder,
    cookie_policy: CookiePolicy,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    is_read: bool,
    claimed: bool = True,
) -> Awaitable[None]:
    """Run the request in `app` on the primary. A write's response carries `Forwarder-Txid` (the txid
    that covers its commit), the read-your-writes cookie and `Server-Timing` (app, commit); a read's
    drops a cookie that is ahead of the primary itself. `claimed=False` says the request came with
    no node header at all (`Glance.claimed`): then no replica waits on it, whatever its headers.

    A write returns the app's own awaitable: no coroutine of ours resumes at each of its awaits."""
    if is_read:
        return _serve_read(app, forwarder, cookie_policy, scope, receive, send)
    started = time.perf_counter()
    node = forwarder.topology.node_id.encode()

    async def start_with_txid(message: Message) -> None:
        app_done = time.perf_counter()
        added = [(h.NODE, node)]
        try:
            # A replica that proxied the write waits for this txid now; anyone else reads later.
            txid = await forwarder.commit_position(prompt=not claimed or header(scope, h.FORWARDED_BY) is None)
        except Exception as exc:
            # The write is committed; failing the response now would make the client think
            # it was not. Tell replicas there is nothing to wait for instead.
            if isinstance(exc, EngineError):  # Litestream down or stuck: its message names the cause and the fix
                logger.error("%s %s: %s; %s", scope["method"], clean(scope["path"]), exc, _STALE_WRITE)
            else:
                logger.exception(
                    "%s %s: could not read the commit position; %s", scope["method"], clean(scope["path"]), _STALE_WRITE
                )
            added.append((h.STALE, b"1"))
        else:
            added += txid_headers(cookie_policy, scope, txid)
        app_ms, commit_ms = (app_done - started) * 1000, (time.perf_counter() - app_done) * 1000
        added.append((b"server-timing", f"app;dur={app_ms:.3f}, commit;dur={commit_ms:.3f}".encode()))
        # A new list: the app may reuse its own (a Response's raw_headers).
        message["headers"] = [*message.get("headers", ()), *added]
        await send(message)

    def send_with_txid(message: Message) -> Awaitable[None]:
        # The body goes straight to `send`'s own awaitable: no coroutine of ours per message.
        return start_with_txid(message) if message["type"] == "http.response.start" else send(message)

    return app(scope, receive, send_with_txid)


async def _serve_read(
    app: ASGIApp, forwarder: Forwarder, cookie_policy: CookiePolicy, scope: Scope, receive: Receive, send: Send
) -> None:
    extra: list[tuple[str, str]] = []
    wanted = read_cookie(scope, cookie_policy)
    if wanted is not None and wanted > forwarder.tracker.position and wanted > await _live_position(forwarder):
        # Ahead of the primary itself: written before a failover that lost it. Waiting
        # would never end; drop the cookie.
        logger.warning("dropping a %s cookie at %s, ahead of the primary", cookie_policy.name, wanted)
        extra.append(("set-cookie", clear_cookie(cookie_policy, scope)))
    await app(scope, receive, stamped(send, forwarder.topology.node_id, extra))


def stamped(send: Send, node_id: str, extra: list[tuple[str, str]] | None = None) -> Send:
    """`send` with `Forwarder-Node` (and `extra` headers) added to the response start."""
    stamp = [(h.NODE, node_id.encode()), *((k.encode(), v.encode()) for k, v in extra or ())]

    def send_stamped(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *stamp]
        return send(message)  # its own awaitable: no coroutine of ours per message

    return send_stamped


async def _live_position(forwarder: Forwarder) -> Txid:
    try:
        return await forwarder.commit_position()
    except Exception:
        return forwarder.tracker.position
