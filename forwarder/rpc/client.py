"""The replica side of RPC: call a registered function on the primary, get (result, txid)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import ValidationError

from .._errors import talking_to_primary
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

_ERRORS_BY_STATUS: dict[int, type[RPCError]] = {401: RPCAuthError, 404: UnknownFunction, 422: RPCValidationError}


class RPCClient:
    """Calls `POST /_forwarder/rpc/<name>` on the primary with a signed body. Never retries.

    `client` is an `httpx.AsyncClient` whose `base_url` is the primary's internal URL; it is
    shared with the request forwarder so both use the same keep-alive connections.
    """

    def __init__(self, client: httpx.AsyncClient, secret: bytes, *, timeout: float) -> None:
        self._client = client
        self._secret = secret
        self._timeout = timeout

    async def call(self, name: str, payload: dict[str, Any]) -> tuple[Any, Txid]:
        """Run `name` on the primary; return its JSON result and the txid covering its writes."""
        path = RPC_PATH_PREFIX + name
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(self._secret, "POST", path, body)}
        with talking_to_primary(f"calling {name}()", str(self._client.base_url), unknown=RPCOutcomeUnknown):
            response = await self._client.post(path, content=body, headers=headers, timeout=self._timeout)
        if response.status_code == 200:
            try:
                reply = RPCReply.model_validate_json(response.content)
                return reply.result, Txid.parse(reply.txid)
            except (ValidationError, ValueError) as exc:
                raise RPCOutcomeUnknown(
                    f"calling {name}(): the primary answered 200 with a body that is not an RPC reply ({exc}); "
                    "is FORWARDER_PRIMARY_URL pointing at a forwarder node?"
                ) from None
        raise _error_from(name, response)


def _error_from(name: str, response: httpx.Response) -> RPCError | PrimaryUnavailable:
    try:
        failure = RPCFailureBody.model_validate_json(response.content).error
    except ValidationError:
        text = response.text[:200]
        if response.status_code in (502, 503):
            return PrimaryUnavailable(f"calling {name}(): the primary answered {response.status_code}: {text}")
        return RPCOutcomeUnknown(
            f"calling {name}(): the primary answered {response.status_code} without an RPC error body: {text}",
            status=response.status_code,
        )
    if failure.type == "NotPrimary":
        return PrimaryUnavailable(f"calling {name}(): {failure.message}")
    error_class = _ERRORS_BY_STATUS.get(response.status_code)
    if error_class is not None:
        return error_class(failure.message, status=response.status_code, retryable=failure.retryable)
    return RemoteError(failure.type, failure.message, status=response.status_code, retryable=failure.retryable)
