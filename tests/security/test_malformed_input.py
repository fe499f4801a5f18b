"""Finding 9: malformed input gets a 4xx that says what was wrong, never a 500."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette.types import Message
from websockets.exceptions import ConnectionClosedError

from forwarder.dev import Cluster
from forwarder.dev.edge import Edge, EdgeNode
from forwarder.middleware import websocket as relay

from ..unit.asgi import body_of, call, http_scope, status_of
from .harness import nodes
from .wire import raw_exchange, request

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], b"both Transfer-Encoding and Content-Length"),
        ([(b"content-length", b"3"), (b"content-length", b"4")], b"conflicting Content-Length"),
        ([(b"content-length", b"3, 4")], b"conflicting Content-Length"),
        ([(b"content-length", b"-1")], b"not a number"),
    ],
)
@pytest.mark.parametrize("node", ["primary", "replica"])
async def test_bad_framing_is_400(headers: list[tuple[bytes, bytes]], says: bytes, node: str) -> None:
    async with nodes() as n:
        with anyio.fail_after(5):
            sent = await call(
                n.primary_app if node == "primary" else n.replica_app, http_scope("POST", "/api/write", headers), b"abc"
            )
    assert status_of(sent) == 400 and says in body_of(sent)
    assert n.nothing_happened()


async def test_an_absolute_form_target_at_the_edge_is_400_without_contacting_a_node() -> None:
    edge = Edge([EdgeNode("n1", "fra", "http://127.0.0.1:9")])
    try:
        for raw in (b"http://127.0.0.1:1/x", b"@127.0.0.1:1/x", b"//:x"):
            scope = http_scope("POST", raw.decode())
            scope["raw_path"] = raw
            with anyio.fail_after(5):
                sent = await call(edge, scope, b"x")
            assert status_of(sent) == 400 and body_of(sent).startswith(b"edge: ")
    finally:
        await edge.aclose()


class _Upstream:
    """Stands in for the websocket to the primary."""

    def __init__(self, *, fail: BaseException | None = None) -> None:
        self.closed_with: list[int] = []
        self.fail = fail
        self.close_code: int | None = 1006
        self.close_reason = ""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not 1000 <= code < 5000 or code in (1005, 1006):
            raise ValueError(f"invalid close code {code}")  # what websockets does
        self.closed_with.append(code)

    async def send(self, data: Any) -> None:
        if self.fail is not None:
            raise self.fail

    def __aiter__(self) -> _Upstream:
        return self

    async def __anext__(self) -> str:
        raise ConnectionClosedError(None, None)  # the primary reset the connection


@pytest.mark.parametrize("code", [1005, 1006, None, 999, 5000, "x"])
async def test_a_client_closing_without_a_status_code_closes_the_primary_side_cleanly(code: object) -> None:
    upstream = _Upstream()

    async def receive() -> Message:
        return {"type": "websocket.disconnect", "code": code}

    with anyio.fail_after(5):
        await relay._client_to_primary(receive, upstream)  # type: ignore[arg-type]
    assert upstream.closed_with == [1000]


async def test_a_reset_mid_relay_ends_the_relay_without_an_error() -> None:
    upstream = _Upstream(fail=ConnectionResetError("reset by peer"))
    messages = iter([{"type": "websocket.receive", "text": "hi"}])

    async def receive() -> Message:
        return next(messages)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        raise OSError("client gone")

    with anyio.fail_after(5):
        await relay._client_to_primary(receive, upstream)  # type: ignore[arg-type]
        await relay._primary_to_client(upstream, send)  # type: ignore[arg-type]
    assert upstream.closed_with == [1000]
    assert sent == [{"type": "websocket.close", "code": 1000, "reason": ""}]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/api/messages", ("Transfer-Encoding: chunked", "Content-Length: 4")),
        ("//:x", ()),
        ("http://127.0.0.1:1/api/messages", ()),
    ],
)
async def test_a_real_cluster_answers_malformed_requests_with_400(
    real_cluster: Cluster, target: str, headers: tuple[str, ...]
) -> None:
    assert real_cluster.edge_url is not None
    for url in (real_cluster.replicas[0].url, real_cluster.primary.url, real_cluster.edge_url):
        reply = await raw_exchange(url, request("POST", target, "x", *headers, body=b"0\r\n\r\n"))
        assert reply.status == 400, (url, reply)
