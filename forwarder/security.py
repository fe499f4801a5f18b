"""The security knobs of one node (`FORWARDER_PUBLIC_HEALTH`, body limits and timeouts)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SecurityPolicy"]


@dataclass(frozen=True)
class SecurityPolicy:
    """Limits that keep a replica from being an open proxy or a slow-client amplifier.

    `public_health`: serve `/_forwarder/health` to requests that came through the public proxy
    (metrics and RPC never are). `rpc_max_body`: bytes of an RPC body (413 past it).
    `buffer_body`: a forwarded body up to this many bytes is read in full before a connection to
    the primary is taken. `body_timeout`: seconds a client may leave its body idle (408).
    `max_streamed_uploads`: forwarded bodies larger than `buffer_body` streamed at once, kept
    below the pool size so buffered requests always find a connection.
    """

    public_health: bool = False
    rpc_max_body: int = 1024 * 1024
    buffer_body: int = 64 * 1024
    body_timeout: float = 10.0
    max_streamed_uploads: int = 64
