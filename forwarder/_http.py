"""The one way forwarder builds HTTP clients for traffic between nodes."""

from __future__ import annotations

import http.cookiejar
import itertools
from collections.abc import Callable
from typing import Any

import httpx

from .channel.transport import ChannelTransport

KEEPALIVE_EXPIRY = 2.0
"""Seconds an idle connection to another node is kept: under uvicorn's default `--timeout-keep-alive`
(5), so a request never goes out on a connection the server is closing at that moment (which fails
with "Server disconnected without sending a response", a write of unknown outcome)."""


def node_transport(handshake: Callable[[], list[tuple[bytes, bytes]]] | None = None) -> httpx.AsyncBaseTransport:
    """Pooled HTTP connections to the primary, behind the node channel when `handshake` signs its
    opening (then a `ChannelTransport`)."""
    # Idle connections are dropped before uvicorn's own 5 s keep-alive timeout closes them:
    # a request sent on a connection the primary is closing gets no answer, and for a write
    # that is a 504 ("may have run") where nothing ran.
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_EXPIRY)
    transport: httpx.AsyncBaseTransport = ShardedTransport(limits)
    if handshake is not None:
        transport = ChannelTransport(transport, handshake=handshake, max_streams=256)
    return transport


def primary_client(url: str, *, timeout: httpx.Timeout, transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    """The client a node sends everything for the primary with, over `transport` (`node_transport`,
    or what tests pass)."""
    return node_client(base_url=url, timeout=timeout, transport=transport)


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that never takes a cookie nor adds one: not even looked at per response."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


def node_client(**options: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` for node-to-node traffic, shared by every user's requests.

    It keeps no cookies: a `Set-Cookie` meant for one user must never ride along on the next
    user's request through the same pool (and parsing each response's cookies only to drop them
    was 2 % of a replica's CPU per forwarded write). It adds no header of its own: a forwarded
    request carries its client's. It ignores HTTP_PROXY and friends, which are meant for the app's
    outbound traffic, not for the private network between nodes.
    """
    client = httpx.AsyncClient(cookies=_NoCookies(), trust_env=False, **options)
    # Without this, a forwarded request that lacks them would gain httpx's own Accept, Accept-Encoding
    # (an app with gzip middleware would then compress what its client cannot read) and User-Agent.
    for name in _HTTPX_DEFAULTS:
        del client.headers[name]
    return client


_HTTPX_DEFAULTS = ("accept", "accept-encoding", "connection", "user-agent")


class ShardedTransport(httpx.AsyncBaseTransport):
    """Requests spread round-robin over `shards` independent connection pools to one primary.

    httpcore 1.0's pool walks every connection of the pool, probing each idle socket, on every
    request and every release (encode/httpcore#1035, still open), so one pool's cost per request
    grows with its size: at 32 concurrent forwards it was 40 % of a replica's CPU. Smaller pools
    keep that walk short; the total limits stay those given.
    """

    def __init__(
        self,
        limits: httpx.Limits,
        *,
        shards: int = 8,
        make_pool: Callable[[httpx.Limits], httpx.AsyncBaseTransport] = lambda limits: httpx.AsyncHTTPTransport(
            limits=limits
        ),
    ) -> None:
        def share(total: int | None) -> int | None:
            return None if total is None else max(1, -(-total // shards))

        per_shard = httpx.Limits(
            max_connections=share(limits.max_connections),
            max_keepalive_connections=share(limits.max_keepalive_connections),
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._pools = [make_pool(per_shard) for _ in range(shards)]
        self._turn = itertools.count()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pools[next(self._turn) % len(self._pools)]
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
