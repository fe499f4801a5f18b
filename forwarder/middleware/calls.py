"""`@primary_only` calls made while a replica serves a request itself (a read, a passthrough path).

Such a call is a write on the primary like a forwarded one, so the response says so: it carries
`Forwarder-Txid` and the read-your-writes cookie for the call's txid, and the next read waits for
it (then `on_lag` applies) even when the call's own wait timed out (`ReplicationTimeout`). A call
that could not reach the primary fails the request the way a forwarded write fails: `503` with
`Retry-After` when nothing ran (`PrimaryUnavailable`), `504` when it may have run (`OutcomeUnknown`).
"""

from __future__ import annotations

import logging
from contextvars import Token

from starlette.responses import PlainTextResponse
from starlette.types import Message, Scope

from .. import context
from ..exceptions import OutcomeUnknown, PrimaryUnavailable
from ..logsafe import clean
from ..policy import CookiePolicy
from . import headers as h
from .cookie import set_cookie
from .discovery import chain
from .proxy import unavailable

__all__ = ["CallTracking"]

logger = logging.getLogger("forwarder.middleware")


class CallTracking(context.RequestWrites):
    """While one request runs on a replica: the txid of its `@primary_only` calls, stamped on its response.

    ```python
    with CallTracking(scope, cookie_policy) as calls:
        await app(scope, receive, HeldErrorResponse(send, stamp, calls))
    ```
    """

    __slots__ = ("_cookie", "_scope", "_token")

    def __init__(self, scope: Scope, cookie: CookiePolicy) -> None:
        self.txid = None
        self.stale = False
        self._scope = scope
        self._cookie = cookie
        self._token: Token[context.RequestWrites | None] | None = None

    def __enter__(self) -> CallTracking:
        self._token = context.track_writes(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            context.stop_tracking(self._token)

    def stamp(self, message: Message) -> None:
        """Add `Forwarder-Txid` and the cookie to a response start going out after a call that wrote, and
        `Forwarder-Stale: 1` after one whose txid the primary could not learn."""
        txid = self.txid
        if txid is not None:
            message["headers"] = [
                *message.get("headers", ()),
                (h.TXID, str(txid).encode()),
                (b"set-cookie", set_cookie(self._cookie, self._scope, txid).encode()),
            ]
        if self.stale:
            message["headers"] = [*message.get("headers", ()), (h.STALE, b"1")]

    def failure(self, exc: BaseException) -> PlainTextResponse | None:
        """The answer when `exc` says a `@primary_only` call did not get through to the primary, else None."""
        for current in chain(exc):
            if isinstance(current, PrimaryUnavailable):
                response = unavailable(str(current))
                break
            if isinstance(current, OutcomeUnknown):
                response = unavailable(str(current), status=504, retry_after=None)
                break
        else:
            return None
        logger.warning(
            "%s %s: a @primary_only call failed (%s); answering %d",
            clean(self._scope["method"]),
            clean(self._scope["path"]),
            current,
            response.status_code,
        )
        return response
