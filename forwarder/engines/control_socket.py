"""A minimal HTTP/1.1 client for Litestream's control socket (a unix socket, loopback-local).

The primary asks the socket after writes, so its round trip is on the write path: through
`httpx.AsyncClient` it measured 1.0-1.4 ms p50, through asyncio's streams 0.17 ms wall and 75 us
of CPU per `sync-status` (on uvloop), through this client's own protocol 0.08-0.10 ms and 25-37
us. httpx's cost is its generality (pool bookkeeping, anyio, h11 events), the streams' their
buffering and waiters; this needs none of it: one trusted local server, small JSON bodies,
keep-alive connections reused last-in first-out, each reply parsed from the bytes as they arrive
(`_Connection`). `json()` is the one place where its errors become forwarder's
(`EngineUnavailable`, `EngineError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

from ..exceptions import EngineError, EngineUnavailable, PositionFormatError

__all__ = ["SYNC_TIMEOUT", "ControlSocket", "ControlSocketError"]

SYNC_TIMEOUT = 5.0
"""Seconds to wait for any reply: `POST /sync` has a p95 of 7 ms on loopback, so 5 s means Litestream is stuck."""

_MAX_HEAD = 16 * 1024
_MAX_BODY = 4 * 1024 * 1024
_MAX_KEPT_REQUESTS = 16  # encoded requests kept by (method, target): the primary asks the same few


class ControlSocketError(Exception):
    """The server's reply is not HTTP/1.1 this client understands (mapped to `EngineUnavailable` by `json()`)."""


Reply = tuple[int, bytes, bool]  # status, body, whether the connection may carry another request


class _Connection(asyncio.Protocol):
    """One connection to the socket: a request written whole, its reply parsed as its bytes arrive."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._reply: asyncio.Future[Reply] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not an `asyncio.Transport` subclass on uvloop.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._settle(eof=False)

    def eof_received(self) -> bool | None:
        self._settle(eof=True)
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._settle(eof=True)

    async def exchange(self, request: bytes) -> Reply:
        """Send `request`, return its reply. `asyncio.IncompleteReadError` when the server closes first."""
        if self.closed or self._transport is None:
            raise ConnectionResetError("the connection to the control socket is closed")
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._reply = reply
        self._transport.write(request)
        try:
            return await reply
        except BaseException:
            self.close()  # cancelled or failed half-way: its rest must never pass for the next reply
            raise
        finally:
            self._reply = None

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _settle(self, *, eof: bool) -> None:
        reply = self._reply
        if reply is None or reply.done():
            return
        try:
            parsed = _reply_in(self._buffer, eof=eof)
        except (ControlSocketError, asyncio.IncompleteReadError) as exc:
            reply.set_exception(exc)
            return
        if parsed is not None:
            reply.set_result(parsed)


def _reply_in(buffer: bytearray, *, eof: bool) -> Reply | None:
    """The whole reply at the start of `buffer` (removed from it), or None while it is incomplete."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buffer) > _MAX_HEAD:
            raise ControlSocketError("the reply's head is too long")
        return _incomplete(buffer, eof)
    status, length, chunked, keep = _parse_head(bytes(buffer[: head_end + 4]))
    start = head_end + 4
    if chunked:
        found = _chunked_body(buffer, start)
        if found is None:
            return _incomplete(buffer, eof)
        body, end = found
    elif length is not None:
        end = start + length
        if len(buffer) < end:
            return _incomplete(buffer, eof)
        body = bytes(buffer[start:end])
    else:  # neither: the body runs to the end of the connection
        if len(buffer) - start > _MAX_BODY:
            raise ControlSocketError("the reply's body is too large")
        if not eof:
            return None
        body, end, keep = bytes(buffer[start:]), len(buffer), False
    del buffer[:end]
    return status, body, keep


def _incomplete(buffer: bytearray, eof: bool) -> Reply | None:
    """Nothing yet (None), or `IncompleteReadError` when the connection ended before the reply did."""
    if eof:
        raise asyncio.IncompleteReadError(bytes(buffer), None)
    return None


def _chunked_body(buffer: bytearray, offset: int) -> tuple[bytes, int] | None:
    """(body, end) of a chunked body starting at `offset`, trailers included; None while incomplete."""
    parts: list[bytes] = []
    total = 0
    while True:
        line_end = buffer.find(b"\r\n", offset)
        if line_end < 0:
            return None
        try:
            size = int(bytes(buffer[offset:line_end]).split(b";")[0].strip(), 16)
        except ValueError:
            raise ControlSocketError(f"bad chunk size {bytes(buffer[offset:line_end])[:40]!r}") from None
        offset = line_end + 2
        if size == 0:
            while True:  # trailers, up to the empty line
                line_end = buffer.find(b"\r\n", offset)
                if line_end < 0:
                    return None
                empty, offset = line_end == offset, line_end + 2
                if empty:
                    return b"".join(parts), offset
        total += size
        if total > _MAX_BODY:
            raise ControlSocketError("the reply's body is too large")
        if len(buffer) < offset + size + 2:
            return None
        parts.append(bytes(buffer[offset : offset + size]))
        offset += size + 2


class ControlSocket:
    """`await socket.request("GET", "/txid?path=...")` -> (status, body), over `path`; `json()` on top.

    `request()` raises `OSError` (cannot connect), `asyncio.IncompleteReadError` (the server closed the
    connection) or `ControlSocketError`; the caller bounds the time. A request that finds its
    reused keep-alive connection closed (Litestream restarted) is sent once more on a new one:
    every control-socket call forwarder makes is safe to repeat.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: list[_Connection] = []
        self._requests: dict[tuple[str, str], bytes] = {}
        self._targets: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        encoded = self._encode(method, target, body)
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(connection, encoded)
            except (asyncio.IncompleteReadError, ConnectionError):
                continue  # closed while idle: try the next one, then a new one
        _, connection = await asyncio.get_running_loop().create_unix_connection(_Connection, str(self.path))
        return await self._exchange(connection, encoded)

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
        target = path if not params else self._target(path, params)
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

    def _target(self, path: str, params: dict[str, str]) -> str:
        # The primary asks the same few (sync-status of its database on every quiet write): the
        # query is encoded once, not by urllib on every request.
        key = (path, tuple(params.items()))
        target = self._targets.get(key)
        if target is None:
            target = path + "?" + urlencode(params)
            if len(self._targets) < _MAX_KEPT_REQUESTS:
                self._targets[key] = target
        return target

    def _encode(self, method: str, target: str, body: bytes | None) -> bytes:
        if body is None and (kept := self._requests.get((method, target))) is not None:
            return kept
        head = f"{method} {target} HTTP/1.1\r\nHost: litestream\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        encoded = head.encode("ascii") + b"\r\n" + (body or b"")
        if body is None and len(self._requests) < _MAX_KEPT_REQUESTS:
            self._requests[(method, target)] = encoded
        return encoded

    async def _exchange(self, connection: _Connection, request: bytes) -> tuple[int, bytes]:
        status, data, keep = await connection.exchange(request)
        if keep:
            self._idle.append(connection)
        else:
            connection.close()
        return status, data

    async def aclose(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _parse_head(raw: bytes) -> tuple[int, int | None, bool, bool]:
    if len(raw) > _MAX_HEAD:
        raise ControlSocketError("the reply's head is too long")
    status_line, _, fields = raw.decode("latin-1").partition("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ControlSocketError(f"not an HTTP/1.x status line: {status_line[:100]!r}")
    length: int | None = None
    chunked = False
    keep = version == "HTTP/1.1"
    # One lowercase copy of the fields, not two per line: this runs for every quiet write's sync-status.
    for line in fields.lower().split("\r\n"):
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "content-length":
            value = value.strip()
            if not value.isdigit() or int(value) > _MAX_BODY:
                raise ControlSocketError(f"bad Content-Length {value[:40]!r}")
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            keep = "close" not in value and (keep or "keep-alive" in value)
    return int(code), length, chunked, keep
