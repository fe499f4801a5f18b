"""The primary side of RPC: `POST /_forwarder/rpc/<name>`, served by the middleware."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ..exceptions import ConfigurationError, EngineError, RPCAuthError, RPCError, RPCValidationError
from ..logsafe import clean
from .signing import SIGNATURE_HEADER
from .wire import RPC_PATH_PREFIX, RPCCall

if TYPE_CHECKING:
    from ..runtime import Forwarder

__all__ = ["serve_rpc"]

logger = logging.getLogger("forwarder.rpc")


class _Refused(Exception):
    def __init__(self, status: int, type: str, message: str, *, retryable: bool = False) -> None:
        self.status, self.type, self.message, self.retryable = status, type, message, retryable


def _failure(status: int, type: str, message: str, *, retryable: bool = False) -> JSONResponse:
    return JSONResponse({"error": {"type": type, "message": message, "retryable": retryable}}, status_code=status)


def _too_large(limit: int) -> _Refused:
    return _Refused(413, "BodyTooLarge", f"RPC bodies are limited to {limit} bytes (FORWARDER_RPC_MAX_BODY)")


async def _read_body(receive: Receive, limit: int, timeout: float) -> bytes:
    """The body, counted while it is read: past `limit` bytes the call is refused, whatever
    Content-Length said; a body idle for `timeout` seconds is refused with 408."""
    chunks: list[bytes] = []
    size = 0
    while True:
        with anyio.move_on_after(timeout) as waited:
            message = await receive()
        if waited.cancelled_caught:
            raise _Refused(408, "BodyTimeout", f"the RPC body stalled for {timeout:g}s (FORWARDER_BODY_TIMEOUT)")
        if message["type"] == "http.disconnect":
            raise _Refused(400, "Disconnected", "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def serve_rpc(forwarder: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
    """Verify, validate and run one call, then reply with the result and the txid covering it."""
    response = await _handle(forwarder, scope, receive)
    await response(scope, receive, send)


async def _handle(forwarder: Forwarder, scope: Scope, receive: Receive) -> JSONResponse:
    path: str = scope["path"]
    name = path[len(RPC_PATH_PREFIX) :]
    headers = Headers(scope=scope)
    try:
        if scope["method"] != "POST":
            raise _Refused(405, "MethodNotAllowed", f"RPC calls use POST, not {scope['method']}")
        if "fly-client-ip" in headers:
            # Fly's public proxy adds Fly-Client-IP; calls between nodes go over the private network.
            raise _Refused(403, "Forbidden", "RPC is only served on the private network, not through the public proxy")
        try:
            verifier = forwarder.signature_verifier
        except ConfigurationError:
            raise _Refused(
                503,
                "NotConfigured",
                f"node {forwarder.topology.node_id} has no FORWARDER_SECRET, so it cannot check RPC signatures; "
                "set the same FORWARDER_SECRET on every node",
            ) from None
        # Presence, form and age of the signature first: an unsigned call never gets its body read.
        signature = verifier.parse(headers.get(SIGNATURE_HEADER))
        limit = forwarder.security.rpc_max_body
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _too_large(limit)
        if not forwarder.is_primary:
            raise _Refused(
                503, "NotPrimary", f"node {forwarder.topology.node_id} is not the primary any more", retryable=True
            )
        body = await _read_body(receive, limit, forwarder.security.body_timeout)
        verifier.check(signature, "POST", path, body)
        remote = forwarder.registry.get(name)
        try:
            call = RPCCall.model_validate_json(body)
        except ValidationError as exc:
            raise _Refused(400, "BadRequest", f"malformed RPC body: {_summary(exc)}") from None
        args, kwargs = remote.decode_arguments(call.args, call.kwargs)
        # Recorded and committed before the function runs: a crash after this is "not run", never "run twice".
        try:
            first = await forwarder.seen_calls.claim(signature.request_id, verifier.expires(signature))
        except Exception as exc:
            logger.error("could not record RPC call %s before running it: %s", signature.request_id, exc)
            raise _Refused(
                503,
                "Unavailable",
                f"could not record the call before running it ({exc}); it did not run",
                retryable=True,
            ) from None
        if not first:
            raise RPCAuthError(f"replayed call: request id {signature.request_id} was already executed")
    except _Refused as refused:
        return _failure(refused.status, refused.type, refused.message, retryable=refused.retryable)
    except RPCError as exc:
        if isinstance(exc, RPCAuthError):
            logger.warning("refused RPC call to %s: %s", clean(name), exc.message)
        return _failure(exc.status, type(exc).__name__, exc.message, retryable=exc.retryable)

    try:
        result = await remote.invoke(args, kwargs)
        data: Any = remote.encode_result(result)
    except RPCValidationError as exc:
        return _failure(exc.status, type(exc).__name__, exc.message)
    except ValidationError as exc:
        return _failure(422, "ValidationError", _summary(exc))
    except RPCError as exc:
        return _failure(exc.status, type(exc).__name__, exc.message, retryable=exc.retryable)
    except Exception as exc:
        logger.exception("RPC %s raised", clean(name))
        return _failure(500, type(exc).__name__, str(exc))
    try:
        txid = await forwarder.commit_position()
    except Exception as exc:
        # It ran and committed: a failure now would tell the caller it did not. Say there is no txid instead,
        # as the middleware does for a write (an engine's error names its cause; anything else is a bug).
        log = logger.error if isinstance(exc, EngineError) else logger.exception
        log("RPC %s ran and committed, but its txid is unknown: %s; answered without one", clean(name), exc)
        return JSONResponse(
            {"result": data, "txid": None},
            headers={"forwarder-stale": "1", "forwarder-node": forwarder.topology.node_id},
        )
    return JSONResponse(
        {"result": data, "txid": str(txid)},
        headers={"forwarder-txid": str(txid), "forwarder-node": forwarder.topology.node_id},
    )


def _summary(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
