"""A LiteFS failover seen by the middleware: the next forwarded write goes to the new primary."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from forwarder import Forwarder, ForwarderMiddleware, Role, Topology
from forwarder.dev.fake_litefs import FakeLiteFS
from forwarder.engines.litefs import LiteFSEngine

pytestmark = pytest.mark.anyio


def primary_app(name: str, seen: list[str]) -> Starlette:
    async def write(request: Request) -> Response:
        seen.append(name)
        return JSONResponse({"served_by": name}, status_code=201)

    return Starlette(routes=[Route("/w", write, methods=["POST"])])


async def test_a_primary_change_moves_forwarded_writes_within_one_request(tmp_path: Path) -> None:
    seen: list[str] = []
    primaries = {"n1": primary_app("n1", seen), "n3": primary_app("n3", seen)}

    class HostTransport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            target = httpx.ASGITransport(app=primaries[request.url.host])
            return await target.handle_async_request(request)

    async with FakeLiteFS(tmp_path / "litefs", "app.db", hostname="n2", primary="n1") as fake:
        engine = LiteFSEngine(tmp_path / "litefs", "app.db", api_url=fake.api_url)
        forwarder = Forwarder(
            engine=engine,
            topology=Topology("n2", "ams", Role.REPLICA, primary_url_template="http://{id}"),
            secret="s",
            transport=HostTransport(),
        )
        app = ForwarderMiddleware(Starlette(), forwarder=forwarder)
        async with forwarder:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
            async with client:
                with anyio.fail_after(10):
                    first = await client.post("/w")
                    fake.set_primary("n3")
                    while forwarder.topology.primary_id != "n3":
                        await anyio.sleep(0.001)
                    second = await client.post("/w")
                    old_pools = list(forwarder._retired)
                    assert len(old_pools) == 1, "the pool to the old primary is retired, not reused"
                    fake.set_primary(None)  # this node becomes the primary
                    while not forwarder.is_primary:
                        await anyio.sleep(0.001)
    assert all(pool.is_closed for pool in old_pools), "and closed with the forwarder"
    assert first.json() == {"served_by": "n1"}
    assert second.json() == {"served_by": "n3"}
    assert seen == ["n1", "n3"]
