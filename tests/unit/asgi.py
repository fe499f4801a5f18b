"""Drive an ASGI app with hand-built messages and record what it sends."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Scope


def http_scope(
    method: str = "GET", path: str = "/", headers: list[tuple[bytes, bytes]] | None = None, **extra: Any
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers or [],
        "client": ("203.0.113.7", 5000),
        "server": ("testserver", 80),
        **extra,
    }


async def call(app: ASGIApp, scope: Scope, body: bytes = b"") -> list[Message]:
    """Run one request through `app`; return every message it sent.

    Like an HTTP/1.1 server, the scope says how long a body is: a body with neither Content-Length
    nor Transfer-Encoding in `scope` gets a Content-Length (on HTTP/1 a request without them has none).
    """
    framed = any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
    if body and not framed and scope.get("http_version", "1.1") in ("1.0", "1.1"):
        scope = {**scope, "headers": [*scope["headers"], (b"content-length", str(len(body)).encode())]}
    incoming: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def headers_of(messages: list[Message]) -> dict[str, list[str]]:
    start = next(m for m in messages if m["type"].endswith("response.start"))
    out: dict[str, list[str]] = {}
    for key, value in start["headers"]:
        out.setdefault(key.decode().lower(), []).append(value.decode())
    return out


def status_of(messages: list[Message]) -> int:
    start = next(m for m in messages if m["type"].endswith("response.start"))
    return int(start["status"])


def body_of(messages: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"].endswith("response.body"))
