"""Proxy mode: stream a request to the primary, wait for its txid locally, stream the answer back."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from .._errors import talking_to_primary
from ..exceptions import ConfigurationError, InvalidTxid, OutcomeUnknown, PrimaryUnavailable, ReplicationTimeout
from ..runtime import Forwarder
from ..txid import Txid
from . import headers as h

__all__ = ["ClientDisconnected", "forward_http", "unavailable"]

logger = logging.getLogger("forwarder.middleware")


class ClientDisconnected(Exception):
    """The client went away while its body was being streamed to the primary."""


# This node's server adds its own Date and Server; passing the primary's would duplicate them.
_NOT_PASSED_BACK = h.HOP_BY_HOP | {b"date", b"server"}


def unavailable(message: str, *, status: int = 503, retry_after: int | None = 1) -> PlainTextResponse:
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def _request_headers(scope: Scope, forwarder: Forwarder, reason: str) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in scope["headers"] if k.lower() not in h.HOP_BY_HOP]
    names = {k.lower() for k, _ in out}
    client = scope.get("client")
    if client:
        xff = next((v for k, v in out if k.lower() == b"x-forwarded-for"), None)
        ip = client[0].encode()
        out = [(k, v) for k, v in out if k.lower() != b"x-forwarded-for"]
        out.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
    if b"x-forwarded-proto" not in names:
        out.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
    host = next((v for k, v in out if k.lower() == b"host"), None)
    if host is not None and b"x-forwarded-host" not in names:
        out.append((b"x-forwarded-host", host))
    out.append((h.FORWARDED_BY, forwarder.topology.node_id.encode()))
    out.append((h.REASON, reason.encode()))
    return out


def _target(scope: Scope) -> str:
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    return (path + (b"?" + query if query else b"")).decode("latin-1")


async def _body(receive: Receive, buffered: bytes | None) -> AsyncIterator[bytes]:
    if buffered is not None:
        yield buffered
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def forward_http(
    forwarder: Forwarder,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    reason: str,
    body: bytes | None = None,
) -> None:
    """Send the request to the primary and answer with its response once this replica holds the write.

    The request body is streamed (or `body` sent when it was already read), never retried. Before
    anything reached the primary a failure is a 503 with `Retry-After`; after, a 504 saying the
    write may have run.
    """
    started = time.perf_counter()
    method = scope["method"]
    target = _target(scope)
    what = f"forwarding {method} {scope['path']}"
    try:
        client = forwarder.client
        request = client.build_request(
            method, target, headers=_request_headers(scope, forwarder, reason), content=_body(receive, body)
        )
        with talking_to_primary(what, str(client.base_url)):
            response = await client.send(request, stream=True)
    except ConfigurationError as exc:
        await unavailable(f"{what}: {exc}")(scope, receive, send)
        return
    except PrimaryUnavailable as exc:
        logger.warning("%s", exc)
        await unavailable(str(exc))(scope, receive, send)
        return
    except OutcomeUnknown as exc:
        logger.error("%s", exc)
        await unavailable(str(exc), status=504, retry_after=None)(scope, receive, send)
        return
    except ClientDisconnected:
        logger.info("%s: client disconnected while sending the body; not forwarded", what)
        return

    try:
        extra: list[tuple[bytes, bytes]] = [(h.FORWARDED_VIA, b"proxy")]
        txid_text = response.headers.get("forwarder-txid")
        answered = time.perf_counter()
        waited = 0.0
        # A copy that is restoring, or that the app wrote to, is not read from until it is whole
        # again (reads go to the primary), so there is nothing to wait for on it.
        usable = forwarder.engine.restored and forwarder.engine.problem is None
        if txid_text and usable:
            wait_started = time.perf_counter()
            try:
                await forwarder.wait_for(Txid.parse(txid_text))
            except ReplicationTimeout as exc:
                logger.warning("%s: committed on the primary, but %s", what, exc)
                extra.append((h.STALE, b"1"))
            except InvalidTxid:
                logger.warning("%s: the primary sent a malformed Forwarder-Txid %r", what, txid_text)
            waited = time.perf_counter() - wait_started
        # Server-Timing entries add up: the primary's own (app, commit) plus this hop's.
        extra.append(
            (
                b"server-timing",
                f"primary;dur={(answered - started) * 1000:.3f}, replication;dur={waited * 1000:.3f}".encode(),
            )
        )
        start: Message = {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in _NOT_PASSED_BACK] + extra,
        }
        await send(start)
        with talking_to_primary(what, str(client.base_url)):
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        logger.info(
            "forwarded %s %s to primary %s: %d, txid %s, waited %.1f ms, total %.1f ms (%s)",
            method,
            scope["path"],
            forwarder.topology.primary_id or forwarder.topology.primary_url,
            response.status_code,
            txid_text or "-",
            waited * 1000,
            (time.perf_counter() - started) * 1000,
            reason,
        )
    finally:
        await response.aclose()
