"""Finding 9: malformed input gets a 4xx that says what was wrong, never a 500."""

from __future__ import annotations

import logging
import re
import socket
import struct
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest

from forwarder.dev import Cluster
from forwarder.dev.edge import Edge, EdgeNode

from ..unit.asgi import body_of, call, http_scope, status_of
from .harness import nodes
from .wire import address, raw_exchange, request

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


# The relay's close and reset paths, one by one and through both of its users, are in
# tests/unit/test_websocket_relay.py; here a real cluster shows them end to end.


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/api/messages", ("Transfer-Encoding: chunked", "Content-Length: 4")),
        ("//:x", ()),
    ],
)
async def test_a_real_cluster_answers_malformed_requests_with_400(
    on_stack: Cluster, target: str, headers: tuple[str, ...]
) -> None:
    assert on_stack.edge_url is not None
    for url in (on_stack.replicas[0].url, on_stack.primary.url, on_stack.edge_url):
        reply = await raw_exchange(url, request("POST", target, "x", *headers, body=b"0\r\n\r\n"))
        assert reply.status == 400, (url, reply)


@pytest.mark.e2e
async def test_h11_nodes_and_the_edge_refuse_an_absolute_form_target(h11_cluster: Cluster) -> None:
    # httptools (the nodes' default) reduces such a target to its path: test_target_ssrf.py.
    assert h11_cluster.edge_url is not None
    for url in (h11_cluster.replicas[0].url, h11_cluster.primary.url, h11_cluster.edge_url):
        reply = await raw_exchange(url, request("POST", "http://127.0.0.1:1/api/messages", "x", body=b"{}"))
        assert reply.status == 400, (url, reply)


_HANDSHAKE = (
    b"GET /live HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _relayed_websocket(url: str) -> anyio.abc.SocketStream:
    host, port = address(url)
    stream = await anyio.connect_tcp(host, port)
    await stream.send(_HANDSHAKE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive()
    assert head.startswith(b"HTTP/1.1 101"), head  # accepted only once the primary accepted it
    return stream


async def _close_without_status(url: str, primary_port: int = 0) -> set[str]:
    """A close frame without a status code (masked, empty payload): the relay must not send 1005 on.

    Returns the connections to `primary_port` that appeared while the websocket was open: the relay's."""
    before = _connections_to(primary_port)
    stream = await _relayed_websocket(url)
    relay = _connections_to(primary_port) - before
    await stream.send(b"\x88\x80\x00\x00\x00\x00")
    try:
        while await stream.receive():
            pass
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        pass
    await stream.aclose()
    return relay


async def _reset(url: str, primary_port: int = 0) -> set[str]:
    """A reset mid-relay: the TCP connection dies without any close frame (returns the relay's connections)."""
    before = _connections_to(primary_port)
    stream = await _relayed_websocket(url)
    relay = _connections_to(primary_port) - before
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()
    return relay


def _log_text(cluster: Cluster, node_id: str) -> str:
    return (cluster.logs_dir / f"{node_id}.log").read_text(errors="replace")


def _connections_to(port: int) -> set[str]:
    """The local ends of established loopback TCP connections to `port` (from /proc/net/tcp)."""
    local = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
            local.add(fields[1])
    return local


def _node_channels(cluster: Cluster) -> set[int]:
    """The client ports of the node channels the primary accepted (from its log)."""
    return {
        int(p) for p in re.findall(r"node channel opened by 127\.0\.0\.1:(\d+)", _log_text(cluster, cluster.primary.id))
    }


async def _relay_gone(cluster: Cluster, port: int, relay: set[str]) -> None:
    """Wait until the relay's own connections to the primary are closed again.

    Only those: the replica's keep-alive pool to the primary (its health and lag probes) opens and
    expires connections of its own meanwhile, and its node channel, opened by the first probe or
    forward, stays open for good."""
    assert relay, "no new connection to the primary while the websocket was open: nothing was relayed"
    while True:
        channels = _node_channels(cluster)
        left = {c for c in relay if int(c.split(":")[1], 16) not in channels} & _connections_to(port)
        if not left:
            return
        await anyio.sleep(0.05)


@pytest.mark.e2e
async def test_the_edge_relay_survives_a_close_without_status_and_a_reset(
    real_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The same through the edge, which runs in this process: its errors would be logged here."""
    assert real_cluster.edge_url is not None
    with anyio.fail_after(20), caplog.at_level(logging.WARNING):
        await _close_without_status(real_cluster.edge_url)
        await _reset(real_cluster.edge_url)
        await anyio.sleep(0.5)  # the edge notices the reset and closes its side
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]
    async with httpx.AsyncClient() as client:
        assert (await client.get(real_cluster.edge_url + "/")).status_code == 200  # the edge still serves


@pytest.mark.e2e
async def test_the_websocket_relay_survives_a_close_without_status_and_a_reset(real_cluster: Cluster) -> None:
    replica = real_cluster.replicas[0]
    primary_port = address(real_cluster.primary.url)[1]
    with anyio.fail_after(20):
        await _relay_gone(real_cluster, primary_port, await _close_without_status(replica.url, primary_port))
        await _relay_gone(real_cluster, primary_port, await _reset(replica.url, primary_port))
    log = _log_text(real_cluster, replica.id)
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    async with httpx.AsyncClient() as client:
        assert (await client.get(replica.url + "/_forwarder/health")).status_code == 200
