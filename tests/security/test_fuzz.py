"""Property-based fuzzing of both nodes' middleware, in-process, under every mode and `on_lag`.

Each example is one raw ASGI request (method, raw target, decoded path, query, headers, cookies,
body chunks with framing, a disconnect or a stall, an RPC signature) sent to the primary or the
replica. Properties: no exception escapes; no 5xx but 503/504; nothing executed or committed for
an answer >= 400; nothing sent anywhere but the primary, and only at the classified path; no hang;
no waiter left. `FORWARDER_FUZZ_EXAMPLES` sets the budget (`scripts/fuzz` runs 20,000).
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.types import Message

from forwarder.policy import RoutingPolicy
from forwarder.rpc.signing import sign
from forwarder.security import SecurityPolicy

from .harness import PRIMARY_URL, SECRET, Nodes, nodes

EXAMPLES = int(os.environ.get("FORWARDER_FUZZ_EXAMPLES", "2000"))
MODES = ("proxy", "replay", "auto")
ON_LAG = ("forward", "error", "stale")
RPC_PATH = "/_forwarder/rpc/record"
RUN: dict[str, int] = {"examples": 0, "forwarded": 0, "executed": 0}

_GOOD_TARGETS = [
    "/api/write",
    "/api/read",
    "/api/call",
    RPC_PATH,
    "/_forwarder/health",
    "/_forwarder/metrics",
    "/_forwarder/rpc/nope",
    "/api/write%0Aforged",
    "/api/wr%69te",
    "/api/a%2Fb",
]
_HOSTILE_TARGETS = [
    "http://127.0.0.1:9/api/write",
    "@127.0.0.1:9/x",
    "//x/api/write",
    "//:x",
    "*",
    "127.0.0.1:80",
    "/api/../_forwarder/health",
    "/api/%2e%2e/write",
    "/%2Fx/api/write",
    "/%FF%FE",
    "",
]
_HEADER_NAMES = [
    "cookie",
    "forwarder-forwarded-by",
    "forwarder-txid",
    "forwarder-node-signature",
    "forwarder-signature",
    "forwarder-reason",
    "forwarder-x",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "keep-alive",
    "x-forwarded-for",
    "fly-client-ip",
    "fly-replay-src",
    "fly-replay-failed",
    "host",
    "content-type",
]
_VALUES = [
    "",
    "chunked",
    "0",
    "5",
    "-1",
    "3, 4",
    "ffffffffffffffff",
    "0000000000000001",
    "__txid=ffffffffffffffff",
    "__txid=0000000000000001",
    "__txid=zz",
    "state=method",
    "instance=node-r;state=lag",
    "t=1,v1=" + "0" * 64,
    "t=1,id=a,v1=" + "é" * 64,
    "x-forwarded-for, forwarder-forwarded-by",
    "node-p",
    "1.2.3.4",
    "application/json",
]

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
header_value = st.one_of(st.sampled_from(_VALUES), printable, st.binary(max_size=20).map(lambda b: b.decode("latin-1")))


@dataclass
class Example:
    node: str
    policy: tuple[str, str]
    method: str
    raw: bytes
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]
    ending: str  # "end" | "disconnect" | "stall"
    signed: bool


methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
RPC_BODY = b'{"args":["fuzz"],"kwargs":{}}'


@st.composite
def examples(draw: st.DrawFn) -> Example:
    kind = draw(st.integers(0, 9))  # mostly well-formed targets, so that requests get past the target rule
    if kind < 7:
        raw_text = draw(st.sampled_from(_GOOD_TARGETS))
    elif kind < 9:
        raw_text = draw(st.sampled_from(_HOSTILE_TARGETS))
    else:
        raw_text = draw(printable.map(lambda s: "/" + s))
    raw = raw_text.encode("latin-1")
    path = draw(st.text(max_size=20)) if draw(st.integers(0, 9)) == 0 else urllib.parse.unquote(raw_text)
    names = st.one_of(st.sampled_from(_HEADER_NAMES), printable.map(str.lower))
    headers = draw(st.lists(st.tuples(names, header_value), max_size=4))
    node = draw(st.sampled_from(["primary", "replica"]))
    rpc_body = st.just(RPC_BODY).flatmap(
        lambda b: st.integers(1, len(b)).map(lambda k: [b[i : i + k] for i in range(0, len(b), k)])
    )
    chunks = draw(st.one_of(rpc_body, st.lists(st.binary(max_size=64), max_size=4)))
    return Example(
        node=node,
        policy=(draw(st.sampled_from(MODES)), draw(st.sampled_from(ON_LAG))),
        method=draw(
            st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]), printable)
        ),
        raw=raw,
        path=path,
        query=draw(printable).encode(),  # what an HTTP/1.1 server can deliver (h11: visible ASCII)
        headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        chunks=chunks,
        ending=draw(st.sampled_from(["end", "end", "disconnect"] + (["stall"] if node == "replica" else []))),
        signed=draw(st.booleans()),
    )


@pytest.fixture(scope="module")
def fuzz_nodes() -> Iterator[tuple[BlockingPortal, dict[tuple[str, str], Nodes]]]:
    security = SecurityPolicy(body_timeout=0.05, buffer_body=100)
    with start_blocking_portal(backend="asyncio") as portal, ExitStack() as stack:
        by_policy = {
            (mode, on_lag): stack.enter_context(
                portal.wrap_async_context_manager(
                    nodes(
                        policy=RoutingPolicy(mode=mode, on_lag=on_lag),  # type: ignore[arg-type]
                        security=security,
                        replication_timeout=0.05,
                    )
                )
            )
            for mode in MODES
            for on_lag in ON_LAG
        }
        yield portal, by_policy
    print(f"\nfuzz: {RUN['examples']} examples run; {', '.join(f'{k}: {v}' for k, v in sorted(RUN.items()))}")


async def _run(n: Nodes, example: Example) -> list[Message]:
    app = n.primary_app if example.node == "primary" else n.replica_app
    body = b"".join(example.chunks)
    headers = list(example.headers)
    if example.signed:
        headers.append((b"forwarder-signature", sign(SECRET.encode(), example.method, example.path, body).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": example.method,
        "scheme": "http",
        "path": example.path,
        "raw_path": example.raw,
        "query_string": example.query,
        "headers": headers,
        "client": ("203.0.113.7", 5000),
        "server": ("testserver", 80),
    }
    pending = list(example.chunks) or [b""]
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            more = bool(pending) or example.ending != "end"
            return {"type": "http.request", "body": chunk, "more_body": more}
        if example.ending == "stall":
            await anyio.sleep_forever()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(5):  # no hang
        await app(scope, receive, send)
    return sent


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(example=examples())
@pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning")
def test_fuzz_both_nodes(fuzz_nodes: tuple[BlockingPortal, dict[tuple[str, str], Nodes]], example: Example) -> None:
    portal, by_policy = fuzz_nodes
    n = by_policy[example.policy]
    n.transport.sent.clear()
    before = (len(n.ledger.writes), len(n.ledger.calls), n.ledger.log.head)
    started = time.monotonic()
    sent = portal.call(_run, n, example)  # an exception here is a violation
    RUN["examples"] += 1
    RUN["forwarded"] += bool(n.transport.sent)
    RUN["executed"] += (len(n.ledger.writes), len(n.ledger.calls)) != before[:2]
    assert time.monotonic() - started < 5
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) <= 1
    if starts:
        key = f"status {starts[0]['status']}"
        RUN[key] = RUN.get(key, 0) + 1
    if starts:
        status = starts[0]["status"]
        answer = b"".join(m.get("body", b"") for m in sent)[:300]
        assert status < 500 or status in (503, 504), (status, answer)
        if status >= 400:
            assert (len(n.ledger.writes), len(n.ledger.calls), n.ledger.log.head) == before, (status, answer)
    for request in n.transport.sent:  # only ever the primary, at the classified path
        assert str(request.url).startswith(PRIMARY_URL + "/")
        assert urllib.parse.unquote(request.url.raw_path.decode().partition("?")[0]) in (example.path, RPC_PATH)
    assert n.primary.tracker.waiting == 0 and n.replica.tracker.waiting == 0
