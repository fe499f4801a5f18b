"""The control-socket client against a scripted unix-socket server: framing, keep-alive, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from forwarder.engines.control_socket import ControlSocket, ControlSocketError, _parse_head
from forwarder.exceptions import EngineError, EngineUnavailable

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    # The nodes run uvloop, whose transports are not asyncio's classes.
    return "asyncio", {"use_uvloop": request.param == "uvloop"}


Answer = Callable[[int, bytes], list[bytes]]
"""The pieces to write back for the n-th request (counted from 0 over the server's life) of `head`."""


class Server:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.close_after: set[int] = set()  # close the connection after answering these requests
        self.ignore_after: set[int] = set()  # after these, read nothing more as a request, until the client closes
        self.ended: list[asyncio.Event] = []  # per connection: set once it is closed
        self.handlers: set[asyncio.Task[object]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        ended = asyncio.Event()
        self.ended.append(ended)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                number = len(self.requests)
                self.requests.append(head)
                for piece in self.answer(number, head):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.001)  # the reply arrives in pieces
                if number in self.close_after:
                    break
                if number in self.ignore_after:
                    while await reader.read(1024):
                        pass
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            ended.set()


@asynccontextmanager
async def serving(tmp_path: Path, answer: Answer) -> AsyncIterator[tuple[Server, ControlSocket]]:
    server = Server(answer)
    path = tmp_path / "ls.sock"
    listener = await asyncio.start_unix_server(server.serve, str(path))
    client = ControlSocket(path)
    try:
        yield server, client
    finally:
        await client.aclose()
        listener.close()
        await listener.wait_closed()
        if server.handlers:  # each ends once its connection is closed: none is left to be cancelled
            await asyncio.wait(server.handlers, timeout=5)


def sized(body: bytes, status: str = "200 OK", *, extra: bytes = b"") -> list[bytes]:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
    whole = head + extra + b"\r\n" + body
    return [whole[:10], whole[10:40], whole[40:]]


async def ask(client: ControlSocket) -> dict[str, object]:
    return await client.json("GET", "/txid", params={"path": "/data/app.db"}, database=Path("/data/app.db"))


async def test_replies_with_a_length_are_read_whole_and_the_connection_is_kept(tmp_path: Path) -> None:
    async with serving(tmp_path, lambda n, head: sized(b'{"txid": %d}' % n)) as (server, client):
        assert [await ask(client) for _ in range(3)] == [{"txid": 0}, {"txid": 1}, {"txid": 2}]
        assert server.connections == 1
        assert server.requests[0].startswith(b"GET /txid?path=%2Fdata%2Fapp.db HTTP/1.1\r\nHost: litestream\r\n")


async def test_a_chunked_reply_with_trailers_is_joined(tmp_path: Path) -> None:
    def chunked(n: int, head: bytes) -> list[bytes]:
        return [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b'5;ext=1\r\n{"txi\r\n',
            b'4\r\nd": \r\n',
            b"2\r\n7}\r\n0\r\nX-Trailer: 1\r\n",
            b"\r\n",
        ]

    async with serving(tmp_path, chunked) as (server, client):
        assert await ask(client) == {"txid": 7}
        assert await ask(client) == {"txid": 7}
        assert server.connections == 1


async def test_a_reply_without_a_length_runs_to_the_close_and_the_next_request_reconnects(tmp_path: Path) -> None:
    async with serving(tmp_path, lambda n, head: [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b'{"txid": 3}']) as (
        server,
        client,
    ):
        server.close_after = {0, 1}
        assert await ask(client) == {"txid": 3}
        assert await ask(client) == {"txid": 3}
        assert server.connections == 2


async def test_a_reply_that_says_connection_close_is_the_last_on_its_connection(tmp_path: Path) -> None:
    async with serving(tmp_path, lambda n, head: sized(b'{"txid": %d}' % n, extra=b"Connection: close\r\n")) as (
        server,
        client,
    ):
        server.ignore_after = {0}  # the server does not close at once: the client must not send another
        assert await ask(client) == {"txid": 0}
        assert await ask(client) == {"txid": 1}
        assert server.connections == 2
        await asyncio.wait_for(server.ended[0].wait(), 1)


async def test_a_kept_connection_the_server_closed_is_replaced_and_the_request_sent_again(tmp_path: Path) -> None:
    async with serving(tmp_path, lambda n, head: sized(b'{"txid": %d}' % n)) as (server, client):
        server.close_after = {0}  # Litestream restarted: the idle connection is gone
        assert await ask(client) == {"txid": 0}
        await asyncio.sleep(0.02)
        assert await ask(client) == {"txid": 1}
        assert server.connections == 2


async def test_a_request_given_up_half_way_never_leaves_its_reply_for_the_next(tmp_path: Path) -> None:
    def slow_first(n: int, head: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", b'{"txid": 1'] if n == 0 else sized(b'{"txid": 2}')

    async with serving(tmp_path, slow_first) as (server, client):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.request("GET", "/txid")
        assert await ask(client) == {"txid": 2}  # on a new connection, not the rest of the first reply
        assert server.connections == 2
        await asyncio.wait_for(server.ended[0].wait(), 1)  # and the first one was closed, not left open


@pytest.mark.parametrize(
    ("pieces", "says"),
    [
        ([b"SSH-2.0-OpenSSH\r\n\r\n"], "not an HTTP/1.x status line"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"], "bad Content-Length"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], "bad chunk size"),
        ([b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20_000], "head is too long"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"], "cannot reach"),  # then closed
    ],
)
async def test_a_reply_this_client_cannot_read_is_engine_unavailable_naming_the_socket(
    tmp_path: Path, pieces: list[bytes], says: str
) -> None:
    async with serving(tmp_path, lambda n, head: pieces) as (server, client):
        server.close_after = {0}
        with pytest.raises(EngineUnavailable) as raised:
            await ask(client)
        assert says in str(raised.value) and str(tmp_path / "ls.sock") in str(raised.value)


async def test_an_error_status_is_an_engine_error_with_litestreams_words(tmp_path: Path) -> None:
    async with serving(tmp_path, lambda n, head: sized(b"database not found\n", "404 Not Found")) as (_, client):
        with pytest.raises(EngineError, match="answered GET /txid with 404 'database not found'"):
            await ask(client)


async def test_no_socket_is_engine_unavailable_naming_it(tmp_path: Path) -> None:
    client = ControlSocket(tmp_path / "missing.sock")
    with pytest.raises(EngineUnavailable, match="missing.sock"):
        await ask(client)


async def test_a_post_carries_its_json_body(tmp_path: Path) -> None:
    async with serving(tmp_path, lambda n, head: sized(b'{"txid": 9}')) as (server, client):
        reply = await client.json("POST", "/sync", payload={"path": "/d", "wait": True}, database=Path("/d"))
        assert reply == {"txid": 9}
        assert b"Content-Type: application/json\r\nContent-Length: 28\r\n" in server.requests[0]


def _reference_head(raw: bytes) -> tuple[int, int | None, bool, bool]:
    """The reply-head rule, field by field: status code, Content-Length (the last; the first bad one
    refused), chunked (the last Transfer-Encoding), keep-alive (each Connection in turn)."""
    status, *lines = raw.decode("latin-1").split("\r\n")
    version, code = [*status.split(" "), "", ""][:2]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ControlSocketError(f"not an HTTP/1.x status line: {status[:100]!r}")
    fields = [(name.strip().lower(), value.strip().lower()) for name, _, value in (x.partition(":") for x in lines)]
    lengths = [value for name, value in fields if name == "content-length"]
    bad = next((v for v in lengths if not v.isdigit() or int(v) > 4 * 1024 * 1024), None)
    if bad is not None:
        raise ControlSocketError(f"bad Content-Length {bad[:40]!r}")
    codings = [value for name, value in fields if name == "transfer-encoding"]
    keep = version == "HTTP/1.1"
    for value in (value for name, value in fields if name == "connection"):
        keep = "close" not in value and (keep or "keep-alive" in value)
    return int(code), int(lengths[-1]) if lengths else None, bool(codings) and "chunked" in codings[-1], keep


_STATUS_LINES = st.sampled_from(
    ["HTTP/1.1 200 OK", "HTTP/1.0 200 OK", "HTTP/1.1 500 x", "HTTP/2 200", "HTTP/1.1 OK", ""]
)
_FIELDS = st.sampled_from(
    [
        "Content-Length: 12",
        "content-length:7",
        "Content-Length:  3 ",
        "CONTENT-LENGTH: x",
        "Content-Length: 99999999",
        "Transfer-Encoding: Chunked",
        "transfer-encoding: gzip",
        "Connection: close",
        "Connection: Keep-Alive",
        "connection: upgrade",
        " Content-Length : 5",
        "Content-Type: application/json",
        "Date: Thu, 03 Dec 2026 07:00:00 GMT",
        "",
    ]
) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=20)


@settings(max_examples=500, deadline=None)
@given(_STATUS_LINES, st.lists(_FIELDS, max_size=6))
def test_the_reply_head_is_read_as_the_line_by_line_rule_reads_it(status: str, fields: list[str]) -> None:
    raw = "\r\n".join([status, *fields]).encode("latin-1")
    try:
        expected: object = _reference_head(raw)
    except ControlSocketError as exc:
        expected = str(exc)
    try:
        got: object = _parse_head(raw)
    except ControlSocketError as exc:
        got = str(exc)
    assert got == expected
