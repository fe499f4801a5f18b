"""The replica side of RPC: call a registered function on the primary, get (result, txid)."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from pydantic import ValidationError

from .._errors import talking_to_primary
from ..channel.transport import ChannelTransport
from ..exceptions import (
    PrimaryUnavailable,
    RemoteError,
    RPCAuthError,
    RPCError,
    RPCOutcomeUnknown,
    RPCValidationError,
    UnknownFunction,
)
from ..txid import Txid
from .signing import SIGNATURE_HEADER, sign
from .wire import RPC_PATH_PREFIX, RPCFailureBody, RPCReply

__all__ = ["RPCClient"]

logger = logging.getLogger("forwarder.rpc")

_ERRORS_BY_STATUS: dict[int, type[RPCError]] = {401: RPCAuthError, 404: UnknownFunction, 422: RPCValidationError}


class RPCClient:
    """Calls `POST /_forwarder/rpc/<name>` on the primary with a signed body. Never retries.

    `client` is an `httpx.AsyncClient` whose `base_url` is the primary's internal URL; it is
    shared with the request forwarder so both use the same keep-alive connections. With `channel`
    (the node channel under it), a call goes on the channel itself, as the proxy's requests do:
    httpx's request and response objects cost a call about as much as they cost a forwarded write.
    """

    def __init__(
        self, client: httpx.AsyncClient, secret: bytes, *, timeout: float, channel: ChannelTransport | None = None
    ) -> None:
        self._client = client
        self._secret = secret
        self._timeout = timeout
        self._channel = channel

    async def call(self, name: str, payload: dict[str, Any]) -> tuple[Any, Txid | None]:
        """Run `name` on the primary; return its JSON result and the txid covering its writes (None: the
        primary ran it but could not learn the txid, see `RPCReply`)."""
        path = RPC_PATH_PREFIX + name
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (SIGNATURE_HEADER.encode(), sign(self._secret, "POST", path, body).encode()),
        ]
        with talking_to_primary(f"calling {name}()", str(self._client.base_url), unknown=RPCOutcomeUnknown):
            answer = await self._on_channel(path, headers, body)
            if answer is None:
                response = await self._client.post(path, content=body, headers=headers, timeout=self._timeout)
                answer = response.status_code, response.content
        status, content = answer
        if status == 200:
            try:
                reply = RPCReply.model_validate_json(content)
                if reply.txid is None:
                    logger.warning(
                        "%s() ran on the primary, which could not learn its txid (see its log); returning without "
                        "waiting: this replica may not show the write yet",
                        name,
                    )
                    return reply.result, None
                return reply.result, Txid.parse(reply.txid)
            except (ValidationError, ValueError) as exc:
                raise RPCOutcomeUnknown(
                    f"calling {name}(): the primary answered 200 with a body that is not an RPC reply ({exc}); "
                    "is FORWARDER_PRIMARY_URL pointing at a forwarder node?"
                ) from None
        raise _error_from(name, status, content)

    async def _on_channel(self, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes] | None:
        """(status, body) of the call sent on the node channel itself; None when it goes over HTTP."""
        if self._channel is None:
            return None
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self._timeout)
        answer = await self._channel.send_whole(self._client.base_url, "POST", path.encode(), headers, body, timeouts)
        if answer is None:
            return None
        status, _, stream = answer
        try:
            return status, b"".join([chunk async for chunk in stream])
        finally:
            await stream.aclose()


def _error_from(name: str, status: int, content: bytes) -> RPCError | PrimaryUnavailable:
    try:
        failure = RPCFailureBody.model_validate_json(content).error
    except ValidationError:
        text = content.decode("utf-8", "replace")[:200]
        if status in (502, 503):
            return PrimaryUnavailable(f"calling {name}(): the primary answered {status}: {text}")
        return RPCOutcomeUnknown(
            f"calling {name}(): the primary answered {status} without an RPC error body: {text}", status=status
        )
    if failure.type == "NotPrimary":
        return PrimaryUnavailable(f"calling {name}(): {failure.message}")
    error_class = _ERRORS_BY_STATUS.get(status)
    if error_class is not None:
        return error_class(failure.message, status=status, retryable=failure.retryable)
    return RemoteError(failure.type, failure.message, status=status, retryable=failure.retryable)
