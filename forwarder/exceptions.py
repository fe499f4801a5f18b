"""Every error forwarder raises, in one tree.

```
ForwarderError
├── ConfigurationError (ValueError)      bad settings, caught at start-up
├── InvalidTxid (ValueError)             text that is not a 16-hex-digit txid
├── EngineError                          the replication engine cannot answer
│   ├── EngineUnavailable                socket, file or process missing
│   └── PositionFormatError              a position file or reply that cannot be parsed
├── ReplicationTimeout                   the local replica did not reach a txid in time
├── PrimaryUnavailable                   the primary cannot be reached (nothing was executed)
├── MustRunOnPrimary                     raised on a replica by a @primary_endpoint; the middleware forwards
├── OutcomeUnknown                       a request reached the primary but no answer came back
├── ChannelProtocolError                 a node channel message that is not a frame (the channel closes)
└── RPCError                             a call to a @primary_only function failed
    ├── RPCAuthError                     401: missing, forged, expired or replayed signature
    ├── UnknownFunction                  404: no function registered under that name
    ├── RPCValidationError               400/422: arguments or result do not match the type hints
    ├── RemoteError                      the function itself raised on the primary
    └── RPCOutcomeUnknown (OutcomeUnknown) the call may have run: the reply never came back
```

Users catch `ForwarderError` and never need to import httpx or websockets exception types:
third-party errors are translated where they are raised (see `forwarder/_errors.py`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ChannelProtocolError",
    "ConfigurationError",
    "EngineError",
    "EngineUnavailable",
    "FollowerError",
    "ForwarderError",
    "InvalidTxid",
    "LocalWriteAfterResponse",
    "MustRunOnPrimary",
    "OutcomeUnknown",
    "PositionFormatError",
    "PrimaryUnavailable",
    "RPCAuthError",
    "RPCError",
    "RPCOutcomeUnknown",
    "RPCValidationError",
    "RemoteError",
    "ReplicationTimeout",
    "UnknownFunction",
]

_NO_RESULT: Any = object()


class ForwarderError(Exception):
    """Base class of every error raised by forwarder."""


class ConfigurationError(ForwarderError, ValueError):
    """The settings are invalid or incomplete; the message names the setting and the fix."""


class InvalidTxid(ForwarderError, ValueError):
    """A txid in text form is not 16 lowercase hex digits, or is out of range."""


class EngineError(ForwarderError):
    """The replication engine could not answer a question about positions or the primary."""


class EngineUnavailable(EngineError):
    """The engine's socket, file or process is missing or not answering."""


class PositionFormatError(EngineError):
    """A position file or engine reply exists but its content cannot be parsed."""


class FollowerError(EngineError):
    """A replica's Litestream follower could not restore its copy; the message names its log."""


class ReplicationTimeout(ForwarderError):
    """The local replica did not reach `txid` within `timeout` seconds.

    When raised after a write that the primary committed (an RPC or a forwarded request),
    the write is NOT lost: `committed` is True and `result` holds what the primary returned.
    Only this node's replica is behind.
    """

    def __init__(self, txid: int, position: int, timeout: float, *, result: Any = _NO_RESULT) -> None:
        self.txid = txid
        self.position = position
        self.timeout = timeout
        self.result = None if result is _NO_RESULT else result
        self.committed = result is not _NO_RESULT
        what = "the write was committed on the primary, " if self.committed else ""
        super().__init__(
            f"local replica is at txid {position:016x} and did not reach {txid:016x} within {timeout:g}s; "
            f"{what}this node's replica is lagging (check the replication engine, or raise "
            "FORWARDER_REPLICATION_TIMEOUT)"
        )

    def with_result(self, result: Any) -> ReplicationTimeout:
        """The same timeout, carrying the committed result of the write that preceded it."""
        return ReplicationTimeout(self.txid, self.position, self.timeout, result=result)


class PrimaryUnavailable(ForwarderError):
    """The primary could not be reached; the request or call was not executed there."""


class LocalWriteAfterResponse(ForwarderError):
    """The app wrote to a replica's own database file after its response had started.

    Raised by the middleware to break the response off: the write is not replicated, so the
    client must not take it as done.
    """


class MustRunOnPrimary(ForwarderError):
    """Raised on a replica by an endpoint marked `@primary_endpoint`, before it does anything.

    `ForwarderMiddleware` catches it and forwards the request (or websocket) to the primary; an
    app only sees it when the middleware is missing.
    """


class OutcomeUnknown(ForwarderError):
    """A request was sent to the primary but no complete answer came back: it may have run.

    Forwarder never retries it, because a write must not run twice.
    """


class ChannelProtocolError(ForwarderError):
    """A message on the node channel between two nodes is not a well-formed frame.

    The node that received it closes the channel; requests in flight on it fail as they would on a
    broken connection.
    """


class RPCError(ForwarderError):
    """A call to a `@primary_only` function failed; `status` is the HTTP status of the reply."""

    status: int = 500
    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable


class RPCAuthError(RPCError):
    """The call's signature is missing, forged, expired or already used (HTTP 401)."""

    status = 401


class UnknownFunction(RPCError):
    """No `@primary_only` function is registered under the called name (HTTP 404)."""

    status = 404


class RPCValidationError(RPCError):
    """The arguments, the body or the result do not match the function's type hints (HTTP 422)."""

    status = 422


class RemoteError(RPCError):
    """The function raised on the primary; `type` is the remote exception's class name."""

    def __init__(self, type: str, message: str, *, status: int = 500, retryable: bool = False) -> None:
        super().__init__(f"{type}: {message}", status=status, retryable=retryable)
        self.type = type
        self.remote_message = message


class RPCOutcomeUnknown(RPCError, OutcomeUnknown):
    """The call was sent but no reply came back in time: it may or may not have run on the primary."""

    status = 504
