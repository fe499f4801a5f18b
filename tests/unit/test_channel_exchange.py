"""The proxy's own use of the node channel (`ChannelTransport.exchange`): the primary gets the same
request as over HTTP through httpx, headers included."""

from __future__ import annotations

import asyncio

import anyio
import httpx
import pytest
from hypothesis import given, strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from forwarder.channel.transport import wire_headers

from .nodes import Nodes, two_nodes

pytestmark = pytest.mark.anyio

NETLOC = b"primary.internal:8080"

_names = st.sampled_from([b"host", b"content-type", b"cookie", b"x-custom", b"content-length", b"transfer-encoding"])
_headers = st.lists(st.tuples(_names, st.binary(min_size=1, max_size=8).map(lambda v: v.hex().encode())), max_size=6)


@given(
    headers=_headers,
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    body=st.binary(max_size=40),
)
def test_wire_headers_are_what_httpx_would_send(headers: list[tuple[bytes, bytes]], method: str, body: bytes) -> None:
    sent = httpx.Request(method, f"http://{NETLOC.decode()}/x", headers=headers, content=body)
    assert wire_headers(headers, method, body, NETLOC) == sent.headers.raw


def _capturing(ref: list[Nodes], seen: list[Scope]) -> Starlette:
    async def write(request: Request) -> Response:
        seen.append(dict(request.scope))
        ref[0].log.commit()
        return JSONResponse({"body": (await request.body()).decode()}, 201, headers={"x-answer": "kept"})

    return Starlette(routes=[Route("/things", write, methods=["POST", "PUT", "DELETE"])])


async def _forwarded(channel: bool, method: str, body: bytes) -> tuple[Scope, httpx.Response]:
    ref: list[Nodes] = []
    seen: list[Scope] = []
    async with two_nodes(lambda: _capturing(ref, seen), channel=channel) as nodes:
        ref.append(nodes)
        async with nodes.client(nodes.replica_app) as client:
            task = asyncio.create_task(
                client.request(method, "/things?q=1", content=body, headers={"x-custom": "v", "cookie": "a=b"})
            )
            with anyio.fail_after(5):
                while nodes.log.head < 1:
                    await asyncio.sleep(0.001)
                nodes.replica_engine.apply()
                response = await task
        if channel:
            assert len(nodes.links) == 1, "the request went on the node channel"
        else:
            assert nodes.links == []
    (scope,) = seen
    return scope, response


@pytest.mark.parametrize(
    ("method", "body"), [("POST", b"a body"), ("POST", b""), ("PUT", b"x" * 5000), ("DELETE", b"")]
)
async def test_the_primary_sees_the_same_request_on_the_channel_as_over_http(method: str, body: bytes) -> None:
    over_channel, answered = await _forwarded(True, method, body)
    over_http, answered_http = await _forwarded(False, method, body)

    def request_of(scope: Scope) -> tuple[object, ...]:
        # The signature carries the time it was made: compared by name only.
        headers = [(k, b"<signed>" if k == b"forwarder-node-signature" else v) for k, v in scope["headers"]]
        return scope["method"], scope["path"], scope["query_string"], headers

    assert request_of(over_channel) == request_of(over_http)
    assert answered.status_code == answered_http.status_code == 201
    assert answered.json() == answered_http.json() == {"body": body.decode()}
    assert answered.headers["x-answer"] == "kept" and answered.headers["forwarder-forwarded"] == "proxy"
