"""Finding 5: RPC refuses unsigned calls before reading a byte of the body, and caps bodies."""

from __future__ import annotations

import json
import time

import anyio
import pytest
from starlette.types import ASGIApp, Message, Scope

from forwarder import Forwarder, MemoryLog
from forwarder.dev import Cluster
from forwarder.rpc.signing import sign
from forwarder.security import SecurityPolicy

from ..unit.asgi import body_of, http_scope, status_of
from .harness import SECRET, Ledger, ledger_registry, nodes, primary_node

pytestmark = pytest.mark.anyio

PATH = "/_forwarder/rpc/record"


async def _run(app: ASGIApp, scope: Scope, chunks: list[bytes]) -> tuple[list[Message], int]:
    """Run one request whose body arrives in `chunks`; return what was sent and how many chunks were read."""
    read = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await app(scope, receive, send)
    return sent, read


def _primary(security: SecurityPolicy | None = None, secret: str | None = SECRET) -> tuple[Ledger, Forwarder, ASGIApp]:
    ledger = Ledger(MemoryLog(auto_apply=True))
    primary, app = primary_node(ledger, ledger_registry(ledger), security=security, secret=secret)
    return ledger, primary, app


@pytest.mark.parametrize(
    "header",
    [None, "", "garbage", "t=1,id=a,v1=zz", f"t={int(time.time())},id=a,v1=" + "é" * 64, "t=٣٣٣,id=a,v1=" + "0" * 64],
)
async def test_an_unsigned_or_malformed_call_is_refused_before_its_body_is_read(header: str | None) -> None:
    ledger, primary, app = _primary()
    headers = [(b"content-length", b"8388608")]
    if header is not None:
        headers.append((b"forwarder-signature", header.encode()))
    async with primary:
        sent, read = await _run(app, http_scope("POST", PATH, headers), [b"x" * 65536] * 128)
    assert status_of(sent) == 401 and read == 0
    assert json.loads(body_of(sent))["error"]["type"] == "RPCAuthError"
    assert ledger.calls == []


async def test_an_expired_signature_is_refused_before_the_body() -> None:
    ledger, primary, app = _primary()
    header = sign(SECRET.encode(), "POST", PATH, b"{}", now=time.time() - 3600)
    async with primary:
        sent, read = await _run(app, http_scope("POST", PATH, [(b"forwarder-signature", header.encode())]), [b"{}"])
    assert status_of(sent) == 401 and read == 0 and b"expired" in body_of(sent)


async def test_a_body_over_the_limit_is_413_counted_while_reading() -> None:
    ledger, primary, app = _primary(SecurityPolicy(rpc_max_body=1000))
    body = json.dumps({"args": ["x" * 2000], "kwargs": {}}).encode()
    header = sign(SECRET.encode(), "POST", PATH, body)
    async with primary:
        # No Content-Length (chunked): refused once the count passes the limit, not after the whole body.
        chunks = [body[i : i + 400] for i in range(0, len(body), 400)]
        sent, read = await _run(app, http_scope("POST", PATH, [(b"forwarder-signature", header.encode())]), chunks)
        assert status_of(sent) == 413 and read == 3 and b"FORWARDER_RPC_MAX_BODY" in body_of(sent)
        # A Content-Length over the limit is refused without reading at all.
        scope = http_scope("POST", PATH, [(b"forwarder-signature", header.encode()), (b"content-length", b"5000")])
        sent, read = await _run(app, scope, chunks)
        assert status_of(sent) == 413 and read == 0
    assert ledger.calls == []


async def test_a_primary_without_a_secret_answers_503_naming_the_setting() -> None:
    ledger, primary, app = _primary(secret=None)
    header = sign(b"anything", "POST", PATH, b"{}")
    async with primary:
        sent, _ = await _run(app, http_scope("POST", PATH, [(b"forwarder-signature", header.encode())]), [b"{}"])
    assert status_of(sent) == 503 and b"FORWARDER_SECRET" in body_of(sent)
    assert ledger.calls == []


@pytest.mark.e2e
async def test_a_real_primary_answers_an_unsigned_8mb_call_without_reading_it(real_cluster: Cluster) -> None:
    from .wire import raw_exchange, request

    head = request(
        "POST",
        "/_forwarder/rpc/example_app.board.post_message",
        "x",
        "Content-Length: 8388608",
        "Content-Type: application/json",
    )
    # Only the head is sent: an answer proves the server did not wait for the 8 MB.
    reply = await raw_exchange(real_cluster.primary.url, head, timeout=5)
    assert reply.status == 401 and b"missing Forwarder-Signature" in reply.body


async def test_a_stalled_rpc_body_is_408_and_a_replica_refuses_before_reading() -> None:
    ledger, primary, app = _primary(SecurityPolicy(body_timeout=0.1))
    header = sign(SECRET.encode(), "POST", PATH, b"{}")
    stalled: list[Message] = []

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        stalled.append(message)

    async with primary:
        with anyio.fail_after(5):
            await app(http_scope("POST", PATH, [(b"forwarder-signature", header.encode())]), receive, send)
    assert status_of(stalled) == 408 and b"FORWARDER_BODY_TIMEOUT" in body_of(stalled)
    assert ledger.calls == []


async def test_a_replica_refuses_rpc_before_reading_the_body() -> None:
    async with nodes() as n:
        header = sign(SECRET.encode(), "POST", PATH, b"{}")
        sent, read = await _run(
            n.replica_app, http_scope("POST", PATH, [(b"forwarder-signature", header.encode())]), [b"{}"]
        )
    assert status_of(sent) == 503 and read == 0 and b"not the primary" in body_of(sent)
    assert n.nothing_happened()
