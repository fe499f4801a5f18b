"""One websocket relayed between an ASGI client and an upstream server, both ways, until either ends.

Both relays of the project use it: a replica's middleware relaying a websocket to the primary
(`forwarder.middleware.websocket`) and the dev edge relaying one to a node
(`forwarder.dev.edge.websocket`).

```python
upstream = await connect_upstream(url, headers=[...], subprotocols=None, open_timeout=2.0)
async with upstream:
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    end = await relay(receive, send, upstream)  # never raises for a close or a reset
```

How an end on one side is passed to the other:

- a close with a code that may go in a close frame (RFC 6455 section 7.4: 1000-1003, 1007-1014,
  3000-4999) is passed on with its reason;
- a close without a code (1005) is passed on as 1000, a normal closure;
- a reset (no close frame, 1006; `ConnectionClosed` or `OSError` while reading or writing) is
  passed on as 1001 (going away) to the upstream and as 1011 (internal error) to the client;
- any other code (out of range, 1004, 1015, not an int) is passed on as 1000.

Backpressure: each direction holds at most one message. `upstream.send` waits while the
connection's write buffer is over its limit, `upstream.recv` is bounded by the connection's
incoming queue (`max_queue` frames, then it stops reading from the socket), and the ASGI `send`
returns when the server has taken the message; so a slow reader slows its writer instead of
growing a buffer in between.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import anyio
from starlette.types import Message, Receive, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.typing import Subprotocol

__all__ = ["NO_STATUS", "RESET", "RelayEnd", "connect_upstream", "relay", "sendable_close_code"]

logger = logging.getLogger("forwarder.websocket_relay")

NO_STATUS = 1005
"""The close code that stands for a close frame without a code; never sent."""
RESET = 1006
"""The close code that stands for a connection that ended without a close frame; never sent."""

_MAX_REASON = 123  # bytes of a close frame's reason (125 minus the 2-byte code)


@dataclass(frozen=True)
class RelayEnd:
    """How a relay ended: which side ended it, with which code (1005: no code, 1006: reset) and reason."""

    by: Literal["client", "upstream"]
    code: int
    reason: str = ""


def sendable_close_code(code: object, *, reset: int) -> int:
    """The code to close the other side with, given the code one side ended with (see the module docstring)."""
    if isinstance(code, int) and not isinstance(code, bool):
        if code in EXTERNAL_CLOSE_CODES or 3000 <= code < 5000:
            return code
        if code == RESET:
            return reset
    return 1000


async def connect_upstream(
    uri: str,
    *,
    headers: Sequence[tuple[str, str]],
    subprotocols: Sequence[str] | None,
    open_timeout: float,
) -> ClientConnection:
    """Open the upstream side of a relay, with the options both relays need.

    Raises what `websockets.asyncio.client.connect` raises (`InvalidStatus`, `InvalidHandshake`,
    `OSError`, `TimeoutError`): each caller answers a failed handshake its own way.
    """
    return await connect(
        uri,
        additional_headers=list(headers),
        subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
        user_agent_header=None,  # the client's own User-Agent is among `headers`
        open_timeout=open_timeout,
        max_size=None,  # the app's own limits apply at the far end, as without a relay
        compression=None,  # on loopback or a private network compression only costs CPU
        proxy=None,  # HTTP_PROXY is for the app's outbound traffic, not the private network
    )


async def relay(receive: Receive, send: Send, upstream: ClientConnection) -> RelayEnd:
    """Copy messages between the ASGI client and `upstream` until one side ends, then close the other.

    The client's `websocket.accept` must have been sent already. Returns how the relay ended; a
    close, a close without a code or a reset on either side is an ordinary end, not an error.
    """
    ends: list[RelayEnd] = []

    async def run(pump: Callable[[], Awaitable[RelayEnd]], scope: anyio.CancelScope) -> None:
        ends.append(await pump())
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, lambda: _client_to_upstream(receive, upstream), tg.cancel_scope)
        tg.start_soon(run, lambda: _upstream_to_client(upstream, send), tg.cancel_scope)
    end = ends[0]
    if end.by == "client":
        await _close_upstream(upstream, end)
    else:
        await _close_client(send, end)
    logger.debug("websocket relay ended by the %s: %d %s", end.by, end.code, end.reason)
    return end


async def _client_to_upstream(receive: Receive, upstream: ClientConnection) -> RelayEnd:
    while True:
        message: Message = await receive()
        if message["type"] == "websocket.disconnect":
            code = message.get("code")
            reason = message.get("reason")
            return RelayEnd(
                "client", code if isinstance(code, int) else NO_STATUS, reason if isinstance(reason, str) else ""
            )
        if message["type"] != "websocket.receive":
            continue
        text = message.get("text")
        try:
            await upstream.send(text if text is not None else message.get("bytes") or b"")
        except ConnectionClosed as exc:
            return _upstream_end(exc)
        except OSError as exc:
            return RelayEnd("upstream", RESET, str(exc))


async def _upstream_to_client(upstream: ClientConnection, send: Send) -> RelayEnd:
    while True:
        try:
            data = await upstream.recv()
        except ConnectionClosed as exc:
            return _upstream_end(exc)
        except OSError as exc:
            return RelayEnd("upstream", RESET, str(exc))
        message: Message = {"type": "websocket.send", "text" if isinstance(data, str) else "bytes": data}
        try:
            await send(message)
        except OSError as exc:  # uvicorn's ClientDisconnected is an OSError: the client reset
            return RelayEnd("client", RESET, str(exc))


def _upstream_end(exc: ConnectionClosed) -> RelayEnd:
    if exc.rcvd is None:  # no close frame from the upstream: it reset the connection
        return RelayEnd("upstream", RESET)
    return RelayEnd("upstream", exc.rcvd.code, exc.rcvd.reason)


async def _close_upstream(upstream: ClientConnection, end: RelayEnd) -> None:
    code = sendable_close_code(end.code, reset=1001)
    try:
        await upstream.close(code, _reason(end.reason) if code == end.code else "")
    except (ConnectionClosed, OSError):  # already gone: nothing left to close
        pass


async def _close_client(send: Send, end: RelayEnd) -> None:
    code = sendable_close_code(end.code, reset=1011)
    try:
        await send({"type": "websocket.close", "code": code, "reason": _reason(end.reason) if code == end.code else ""})
    except OSError:  # the client went away at the same time
        pass


def _reason(text: str) -> str:
    """`text` cut to what a close frame can carry, on a character boundary."""
    return text.encode("utf-8")[:_MAX_REASON].decode("utf-8", "ignore")
