"""The HTTP client between nodes: no shared cookies, and a pool whose cost does not grow with its size."""

from __future__ import annotations

import httpx
import pytest

from forwarder._http import ShardedTransport, node_client

pytestmark = pytest.mark.anyio


class RecordingPool(httpx.AsyncBaseTransport):
    def __init__(self, limits: httpx.Limits) -> None:
        self.limits = limits
        self.requests: list[str] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        return httpx.Response(200, headers={"set-cookie": "session=someone-else"})

    async def aclose(self) -> None:
        self.closed = True


async def test_requests_are_spread_over_small_pools_and_all_are_closed() -> None:
    pools: list[RecordingPool] = []

    def make_pool(limits: httpx.Limits) -> RecordingPool:
        pools.append(RecordingPool(limits))
        return pools[-1]

    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=7)
    transport = ShardedTransport(limits, shards=8, make_pool=make_pool)
    assert len(pools) == 8
    assert {(p.limits.max_connections, p.limits.max_keepalive_connections) for p in pools} == {(32, 8)}
    assert {p.limits.keepalive_expiry for p in pools} == {7}
    async with node_client(base_url="http://primary", transport=transport) as client:
        for i in range(16):
            assert (await client.get(f"/r{i}")).status_code == 200
    assert [len(p.requests) for p in pools] == [2] * 8
    assert all(p.closed for p in pools)


async def test_unlimited_stays_unlimited_and_small_limits_stay_positive() -> None:
    pools: list[RecordingPool] = []

    def make_pool(limits: httpx.Limits) -> RecordingPool:
        pools.append(RecordingPool(limits))
        return pools[-1]

    ShardedTransport(httpx.Limits(max_connections=None, max_keepalive_connections=3), shards=8, make_pool=make_pool)
    assert {(p.limits.max_connections, p.limits.max_keepalive_connections) for p in pools} == {(None, 1)}


async def test_the_client_keeps_no_cookie_from_a_response() -> None:
    transport = ShardedTransport(httpx.Limits(), shards=2, make_pool=RecordingPool)
    async with node_client(base_url="http://primary", transport=transport) as client:
        await client.get("/login")
        assert not client.cookies
        request = client.build_request("GET", "/next")
        assert "cookie" not in request.headers
