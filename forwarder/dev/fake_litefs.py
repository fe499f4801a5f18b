"""A fake LiteFS node: a mount directory with its files and the node API (`/info`, `/events`) on loopback.

LiteFS needs FUSE and its own binary, so neither tests nor a laptop can run it. This fake writes
the files and speaks the API exactly as `shared/reference/fly-platform.md` (section 4) describes
them, so `LiteFSEngine` (and anything else that reads LiteFS) can be tried against it:

- `<mount>/<db>-pos`: `%016x/%016x\\n` (txid / post-apply checksum), replaced atomically at each commit;
- `<mount>/.primary`: the primary's hostname and a newline, only while this node is a replica;
- `<mount>/.lag`: `+0000000000\\n`;
- `GET /info`: `{"clusterID", "isPrimary", "candidate", "path", "primary": {"hostname"}}`, indented;
- `GET /events`: NDJSON (`Content-Type: application/json`), `init` first, then `tx` and
  `primaryChange`, one JSON object per line, each flushed as it happens.

The server is plain asyncio speaking minimal HTTP/1.1, so a test can cut connections
(`drop_stream()`) and stop and restart the API on the same port (`stop_api()`, `start_api()`).

```python
async with FakeLiteFS(tmp_path / "litefs", hostname="n2", primary="n1") as litefs:
    engine = LiteFSEngine(litefs.mount, api_url=litefs.api_url)
    litefs.commit()           # a replicated transaction: `db-pos` rewritten, then a `tx` event
    litefs.set_primary("n3")  # a failover: `.primary` rewritten, then a `primaryChange` event
    litefs.set_primary(None)  # this node becomes the primary: `.primary` removed
```
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from ..txid import Txid

__all__ = ["FakeLiteFS"]

logger = logging.getLogger("forwarder.dev.fake_litefs")

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_MASK64 = (1 << 64) - 1


class FakeLiteFS:
    """One fake LiteFS node: its mount directory and its node API on `host`, port `port` (0 picks one).

    `hostname` is this node's `lease.hostname`. `primary` is the primary's hostname when this node
    starts as a replica, or None when it starts as the primary. `txid` is the position it starts
    at (0: no database yet, so no `-pos` file). The constructor does no I/O; `start()` (or
    `async with`) writes the files and starts the API.

    Each method changes the files first and then sends the event, in that order, as LiteFS does:
    whoever reads a file after seeing an event finds the state the event announced.

    Attributes a test may read: `txid` (the position), `is_primary`, `primary_hostname` (this
    node's own hostname when it is the primary, None when no primary is known), `api_url`.
    """

    def __init__(
        self,
        mount: Path,
        database: str = "db",
        *,
        hostname: str = "localhost",
        primary: str | None = None,
        txid: int = 0,
        candidate: bool = True,
        page_size: int = 4096,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.mount = Path(mount)
        self.database = database
        self.hostname = hostname
        self.is_primary = primary is None
        self.primary_hostname: str | None = hostname if primary is None else primary
        self.txid = Txid(txid)
        self.candidate = candidate
        self.page_size = page_size
        self.host = host
        self.port = port
        self.node_id = secrets.token_hex(8).upper()
        self.cluster_id = "LFSC" + secrets.token_hex(8).upper()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._streams: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def api_url(self) -> str:
        """The node API's base URL, as `LiteFSEngine(api_url=...)` takes it (the port is known after start)."""
        return f"http://{self.host}:{self.port}"

    @property
    def pos_path(self) -> Path:
        return self.mount / f"{self.database}-pos"

    @property
    def primary_path(self) -> Path:
        return self.mount / ".primary"

    @property
    def streams(self) -> int:
        """How many `/events` connections are open right now."""
        return len(self._streams)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the mount directory and its files, and start the API."""
        self.mount.mkdir(parents=True, exist_ok=True)
        self.write_raw(".lag", "+0000000000\n")
        if self.txid:
            self._write_pos()
        self._write_primary()
        await self.start_api()

    async def aclose(self) -> None:
        """Stop the API and close every connection (the files stay)."""
        await self.stop_api()

    async def __aenter__(self) -> FakeLiteFS:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start_api(self) -> None:
        """Start answering `/info` and `/events` (on the same port as before, after `stop_api()`)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.debug("fake LiteFS API listening on %s", self.api_url)

    async def stop_api(self) -> None:
        """Stop the API: refuse new connections and cut the open ones, as when LiteFS exits."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._streams.clear()
        for writer in list(self._connections):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        await server.wait_closed()

    # -- what LiteFS does --------------------------------------------------------------------

    def commit(self, n: int = 1) -> Txid:
        """Commit (on the primary) or apply (on a replica) `n` transactions; returns the last txid.

        Each one rewrites `-pos` (tmp file + rename) and then sends a `tx` event.
        """
        for _ in range(n):
            self.txid = Txid(self.txid + 1)
            self._write_pos()
            data = {
                "txID": str(self.txid),
                "postApplyChecksum": f"{_checksum(self.txid):016x}",
                "pageSize": self.page_size,
                "commit": 2 + int(self.txid),  # database size in pages: grows with each transaction
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
            self.emit({"type": "tx", "db": self.database, "data": data})
        return self.txid

    def set_primary(self, hostname: str | None) -> None:
        """A change of primary: `hostname` becomes it, or this node does (None).

        None removes `.primary`; a hostname writes `<hostname>\\n` (an empty one writes just the
        newline, like LiteFS with a static lease and no `lease.hostname`). Then a `primaryChange`
        event is sent.
        """
        self.is_primary = hostname is None
        self.primary_hostname = self.hostname if hostname is None else hostname
        self._write_primary()
        self.emit({"type": "primaryChange", "data": self._primary_data()})

    def lose_primary(self) -> None:
        """This replica loses its primary (lease expired, primary gone): `.primary` removed, no hostname sent."""
        self.is_primary = False
        self.primary_hostname = None
        self._write_primary()
        self.emit({"type": "primaryChange", "data": self._primary_data()})

    def drop_stream(self) -> int:
        """Cut every open `/events` connection (the API keeps running); returns how many were cut."""
        streams = list(self._streams)
        # Forget them now, not when their handlers notice: nothing emitted from here on reaches them.
        self._streams.clear()
        for writer in streams:
            writer.transport.abort()
        return len(streams)

    def emit(self, event: dict[str, Any] | str) -> None:
        """Send one event to every `/events` connection: a dict as compact JSON, a str as it is (for garbage)."""
        line = json.dumps(event, separators=(",", ":")) if isinstance(event, dict) else event
        for writer in list(self._streams):
            self._send(writer, line)

    def write_raw(self, name: str, content: str | bytes) -> None:
        """Replace `<mount>/<name>` with `content` atomically (tmp file + rename): for garbage and odd states."""
        data = content.encode() if isinstance(content, str) else content
        target = self.mount / name
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    # -- files -------------------------------------------------------------------------------

    def _write_pos(self) -> None:
        self.write_raw(self.pos_path.name, f"{int(self.txid):016x}/{_checksum(self.txid):016x}\n")

    def _write_primary(self) -> None:
        if self.is_primary or self.primary_hostname is None:
            with suppress(FileNotFoundError):
                self.primary_path.unlink()
        else:
            self.write_raw(self.primary_path.name, f"{self.primary_hostname}\n")

    def _primary_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"isPrimary": self.is_primary}
        if self.primary_hostname:  # Go's omitempty
            data["hostname"] = self.primary_hostname
        return data

    # -- HTTP --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._connections.add(writer)
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) != 3:
                self._respond(writer, 400, "text/plain", b"bad request\n")
                return
            method, target = parts[0], parts[1].split("?", 1)[0]
            if method != "GET":
                self._respond(writer, 405, "text/plain", b"method not allowed\n")
            elif target == "/info":
                self._respond(writer, 200, "application/json", self._info_body())
            elif target == "/events":
                await self._stream_events(reader, writer)
            else:
                self._respond(writer, 404, "text/plain", b"not found\n")
            with suppress(ConnectionError):
                await writer.drain()
        finally:
            self._streams.discard(writer)
            self._connections.discard(writer)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)

    def _info_body(self) -> bytes:
        info = {
            "clusterID": self.cluster_id,
            "isPrimary": self.is_primary,
            "candidate": self.candidate,
            "path": str(self.mount),
            "primary": {"hostname": self.primary_hostname or ""},
        }
        return (json.dumps(info, indent=2) + "\n").encode()

    def _respond(self, writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nLitefs-Id: {self.node_id}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)

    async def _stream_events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            f"Litefs-Id: {self.node_id}\r\n\r\n"
        )
        writer.write(head.encode())
        # Subscribe and send `init` with no await in between, as LiteFS does: no event is lost.
        self._streams.add(writer)
        self._send(writer, json.dumps({"type": "init", "data": self._primary_data()}, separators=(",", ":")))
        # The client sends nothing more; EOF means it went away (or the connection was cut).
        with suppress(ConnectionError):
            while await reader.read(4096):
                pass

    @staticmethod
    def _send(writer: asyncio.StreamWriter, line: str) -> None:
        if writer.is_closing():
            return
        data = (line + "\n").encode()
        # One chunk per event: that is Go's Flush() after each one on an HTTP/1.1 connection.
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))


def _checksum(txid: int) -> int:
    # Not a real LTX checksum, but shaped like one: deterministic, with the top bit (ltx.ChecksumFlag) set.
    return (1 << 63) | ((txid * 0x9E3779B97F4A7C15) & (_MASK64 >> 1))
