"""A minimal HTTP/1.1 client for Litestream's control socket (a unix socket, loopback-local).

The primary asks the socket after writes, so its round trip is on the write path: through
`httpx.AsyncClient` it measured 1.0-1.4 ms p50, through this client 0.06-0.11 ms (same socket,
same machine, alternating; `bench/commit_position.py` has the in-context figures). httpx's cost is
its generality (pool bookkeeping, anyio, h11 events); this needs none of it: one trusted local
server, small JSON bodies, keep-alive connections reused last-in first-out. `json()` is the one
place where its errors become forwarder's (`EngineUnavailable`, `EngineError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ..exceptions import EngineError, EngineUnavailable, PositionFormatError

__all__ = ["SYNC_TIMEOUT", "ControlSocket", "ControlSocketError"]

SYNC_TIMEOUT = 5.0
"""Seconds to wait for any reply: `POST /sync` has a p95 of 7 ms on loopback, so 5 s means Litestream is stuck."""

_MAX_HEAD = 16 * 1024
_MAX_BODY = 4 * 1024 * 1024


class ControlSocketError(Exception):
    """The server's reply is not HTTP/1.1 this client understands (mapped to `EngineUnavailable` by `json()`)."""


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ControlSocket:
    """`await socket.request("GET", "/txid?path=...")` -> (status, body), over `path`; `json()` on top.

    `request()` raises `OSError` (cannot connect), `asyncio.IncompleteReadError` (the server closed the
    connection) or `ControlSocketError`; the caller bounds the time. A request that finds its
    reused keep-alive connection closed (Litestream restarted) is sent once more on a new one:
    every control-socket call forwarder makes is safe to repeat.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: list[Connection] = []

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        while self._idle:
            connection = self._idle.pop()
            try:
                return await self._exchange(connection, method, target, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                continue  # closed while idle: try the next one, then a new one
        return await self._exchange(await asyncio.open_unix_connection(str(self.path)), method, target, body)

    async def json(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        payload: Any = None,
        database: Path,
    ) -> dict[str, Any]:
        """The JSON object Litestream answers about `database`, within `SYNC_TIMEOUT`; errors are forwarder's."""
        target = path + ("?" + urlencode(params) if params else "")
        body = None if payload is None else json.dumps(payload).encode()
        with self._map_errors():
            async with asyncio.timeout(SYNC_TIMEOUT):
                status, raw = await self.request(method, target, body)
        text = raw.decode("utf-8", errors="replace")
        if status != 200:
            raise EngineError(
                f"Litestream answered {method} {path} with {status} {text.strip()!r}; "
                f"check that its config replicates {database} (`dbs: - path:` must be this absolute path)"
            )
        try:
            reply = json.loads(raw)
        except ValueError:
            raise PositionFormatError(f"Litestream's reply to {method} {path} is not JSON: {text[:200]!r}") from None
        if not isinstance(reply, dict):
            raise PositionFormatError(f"Litestream's reply to {method} {path} is not a JSON object: {reply!r}")
        return reply

    @contextlib.contextmanager
    def _map_errors(self) -> Iterator[None]:
        try:
            yield
        except TimeoutError as exc:
            raise EngineUnavailable(
                f"Litestream's control socket {self.path} did not answer within {SYNC_TIMEOUT:g}s "
                f"({type(exc).__name__}); check that `litestream replicate` is healthy (see its log)"
            ) from exc
        except (OSError, asyncio.IncompleteReadError, ControlSocketError) as exc:
            raise EngineUnavailable(
                f"cannot reach Litestream's control socket {self.path} ({exc}): "
                "is `litestream replicate` running with `socket: enabled: true`?"
            ) from exc

    async def _exchange(
        self, connection: Connection, method: str, target: str, body: bytes | None
    ) -> tuple[int, bytes]:
        reader, writer = connection
        keep = complete = False
        try:
            head = f"{method} {target} HTTP/1.1\r\nHost: litestream\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode("ascii") + b"\r\n" + (body or b""))
            status, length, chunked, keep = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            if chunked:
                data = await _read_chunked(reader)
            elif length is not None:
                data = await reader.readexactly(length)
            else:
                data, keep = await reader.read(_MAX_BODY), False
            complete = True
            return status, data
        except asyncio.LimitOverrunError:
            raise ControlSocketError("the reply's head is too long") from None
        finally:
            if keep and complete:  # never reuse a connection left half-read (cancelled, failed)
                self._idle.append(connection)
            else:
                writer.close()

    async def aclose(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _parse_head(raw: bytes) -> tuple[int, int | None, bool, bool]:
    if len(raw) > _MAX_HEAD:
        raise ControlSocketError("the reply's head is too long")
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ControlSocketError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
    length: int | None = None
    chunked = False
    keep = version == "HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            if not value.isdigit() or int(value) > _MAX_BODY:
                raise ControlSocketError(f"bad Content-Length {value[:40]!r}")
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            keep = "close" not in value and (keep or "keep-alive" in value)
    return int(code), length, chunked, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise ControlSocketError(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        total += size
        if total > _MAX_BODY:
            raise ControlSocketError("the reply's body is too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
