"""The JSON bodies of RPC calls and replies (DESIGN.md, "Wire protocol")."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RPCCall", "RPCFailure", "RPCFailureBody", "RPCReply", "RPC_PATH_PREFIX"]

RPC_PATH_PREFIX = "/_forwarder/rpc/"


class RPCCall(BaseModel):
    """`POST /_forwarder/rpc/<name>` body: positional and keyword arguments in JSON form."""

    model_config = ConfigDict(extra="forbid")

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class RPCReply(BaseModel):
    """200 reply: the function's result in JSON form and the txid covering its writes.

    `txid` is None when the function ran and committed but the primary could not learn the txid (its
    replication engine is down or stuck): there is then nothing for the replica to wait for."""

    result: Any
    txid: str | None


class RPCFailure(BaseModel):
    type: str
    message: str
    retryable: bool = False


class RPCFailureBody(BaseModel):
    """4xx/5xx reply."""

    error: RPCFailure
