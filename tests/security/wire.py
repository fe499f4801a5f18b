"""Raw sockets and a decoy server on loopback, for the security tests against real servers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import anyio.abc


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def raw_exchange(url: str, data: bytes, *, timeout: float = 10.0) -> Reply:
    """Send `data` as is on a new connection to `url`'s host and port; read the first response.

    The request should say `Connection: close`; the reply is read until the server closes, or
    until its Content-Length is complete.
    """
    host, port = address(url)
    with anyio.fail_after(timeout):
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(data)
            buffer = b""
            while True:
                reply = _parse(buffer)
                if reply is not None:
                    return reply
                try:
                    buffer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                    reply = _parse(buffer, final=True)
                    assert reply is not None, f"no HTTP response, got {buffer!r}"
                    return reply


def _parse(buffer: bytes, *, final: bool = False) -> Reply | None:
    head, sep, body = buffer.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None and len(body) >= int(length):
        return Reply(status, headers, body[: int(length)])
    return Reply(status, headers, body) if final else None


def request(method: str, target: str, host: str, *headers: str, body: bytes = b"") -> bytes:
    """A raw HTTP/1.1 request with `Connection: close` (and Content-Length when there is a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close", *headers]
    if body and not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Decoy:
    """A server on another loopback port that records every connection it gets."""

    url: str
    hits: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def decoy_server(answer_txid: str = "ffffffffffffffff") -> AsyncIterator[Decoy]:
    """A loopback TCP server answering any request with 200, `Forwarder-Txid: <answer_txid>` and "DECOY"."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    decoy = Decoy(f"http://127.0.0.1:{port}")
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(5):
                    data = await stream.receive()
                decoy.hits.append(data)
                await stream.send(
                    f"HTTP/1.1 200 OK\r\nForwarder-Txid: {answer_txid}\r\nContent-Length: 5\r\n"
                    "Connection: close\r\n\r\nDECOY".encode()
                )
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
                decoy.hits.append(b"")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve)
            try:
                yield decoy
            finally:
                tg.cancel_scope.cancel()
    finally:
        await listener.aclose()
