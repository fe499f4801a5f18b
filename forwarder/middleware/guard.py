"""The middleware's entry checks, before anything is classified, served or forwarded.

1. the target rule (`target.py`): 400 for anything but an origin-form target;
2. framing: 400 for Transfer-Encoding with Content-Length, or a bad or conflicting Content-Length;
3. node headers (`node_headers.py`): unsigned `forwarder-*` claims are dropped from the scope, and
   a `fly-replay-src` state no node sealed is removed (the `fly-replay` states this node answers
   with are sealed where they are made: `sealed`);
4. `/_forwarder/*` is private: 403 through the public proxy (`Fly-Client-IP`), except
   `/_forwarder/health` when `FORWARDER_PUBLIC_HEALTH=true`.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from starlette.types import Scope, Send

from ..logsafe import clean
from ..node_headers import CLIENT_HEADERS, NODE_SIGNATURE, PREFIX, opened_replay_source, seal_replay, verified_headers
from ..runtime import Forwarder
from . import headers as h
from .classify import INTERNAL_PREFIX
from .replay import came_through_fly_proxy
from .target import target_problem
from .websocket import deny_websocket, supports_denial

__all__ = ["Glance", "Refusal", "admit", "framing_problem", "refuse", "sealed"]

logger = logging.getLogger("forwarder.middleware")

HEALTH_PATH = INTERNAL_PREFIX + "health"


def framing_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why the request's body framing is refused (RFC 9112 section 6.3), or None."""
    lengths: set[bytes] = set()
    chunked = False
    for key, value in headers:
        name = key.lower()
        if name == b"content-length":
            lengths.update(part.strip() for part in value.split(b","))
        elif name == b"transfer-encoding":
            chunked = True
    if chunked and lengths:
        return "the request has both Transfer-Encoding and Content-Length; send one of them"
    if len(lengths) > 1:
        return "the request has conflicting Content-Length values"
    if lengths and not next(iter(lengths)).isdigit():
        return "the request's Content-Length is not a number"
    return None


async def refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    """Answer with `status` and a plain-text message (a websocket handshake is denied or closed)."""
    body = (message + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    if scope["type"] == "websocket":
        if supports_denial(scope):
            await deny_websocket(send, status, headers, body)
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Glance:
    """What one pass over a request's headers found: all the entry checks and a replica read look at.

    Most requests carry no body framing headers, no node headers and no `fly-replay-src`; then no
    check has anything more to do, and a replica read takes its cookie and txid token from here.

    A browser sends a dozen headers or more, so the look is made in C where it can be: the names
    are taken and searched as one list and one joined string, and only the headers of a kind that
    is present (a `forwarder-*` name, more than one `Cookie`) are walked in Python. Names an ASGI
    server did not lowercase, as the spec asks, take the walk for every header (`_walk`).
    """

    __slots__ = ("claimed", "cookies", "framed", "plain_length", "replayed", "token")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.framed = False
        """Content-Length or Transfer-Encoding present: the request may have a body."""
        self.plain_length = False
        """One Content-Length of digits and no Transfer-Encoding: `framing_problem` has nothing to find."""
        self.claimed = False
        """Node headers present (`forwarder-*` other than the client's own): checked, unsigned ones dropped."""
        self.replayed = False
        """`fly-replay-src` present: opened, an unsealed state removed."""
        self.cookies: list[bytes] = []
        """Every `Cookie` header value."""
        self.token: bytes | None = None
        """The `Forwarder-Txid` header (the read-your-writes cookie's header form), if any."""
        names = list(map(h.NAME, headers))
        joined = b"\n".join(names)
        if not joined.islower():  # a name in capitals (or no letter at all): the walk decides
            self._walk(headers)
            return
        if b"content-length" in names or b"transfer-encoding" in names:
            self.framed = True
            # Nearly every request with a body: then the framing check need not walk the headers.
            if b"transfer-encoding" not in names and names.count(b"content-length") == 1:
                self.plain_length = headers[names.index(b"content-length")][1].isdigit()
        if b"fly-replay-src" in names:
            self.replayed = True
        cookies = names.count(b"cookie")
        if cookies == 1:
            self.cookies.append(headers[names.index(b"cookie")][1])
        elif cookies:
            self.cookies.extend(value for name, value in headers if name == b"cookie")
        # The names starting with it, if any, are among those containing it. `find`, not `in`: bytes'
        # `in` first tries its operand as an int and formats the TypeError (half its cost here).
        if joined.find(PREFIX) >= 0:
            for name, value in headers:
                if name.startswith(PREFIX):
                    self._node_header(name, value)

    def _walk(self, headers: list[tuple[bytes, bytes]]) -> None:
        for key, value in headers:
            name = key.lower()
            if name == b"cookie":
                self.cookies.append(value)
            elif name.startswith(PREFIX):
                self._node_header(name, value)
            elif name == b"content-length" or name == b"transfer-encoding":
                self.framed = True
            elif name == b"fly-replay-src":
                self.replayed = True

    def _node_header(self, name: bytes, value: bytes) -> None:
        if name == h.TXID:
            self.token = value
        elif name not in CLIENT_HEADERS:
            self.claimed = True


class Refusal(NamedTuple):
    """The answer to a request refused at the entry: `refuse(scope, send, *refusal)`."""

    status: int
    message: str


def admit(forwarder: Forwarder, scope: Scope) -> tuple[Scope, Glance] | Refusal:
    """The scope to serve the request with (node headers checked) and what its headers hold, or the
    refusal to answer with. No await: this runs before every request."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    glance = Glance(headers)
    problem = target_problem(scope)
    if problem is None and glance.framed and not glance.plain_length and scope["type"] == "http":
        problem = framing_problem(headers)
    if problem is not None:
        logger.info("refused %s %s: %s", clean(scope.get("method", "GET")), clean(scope.get("raw_path", "")), problem)
        return Refusal(400, problem)
    method = scope.get("method", "GET")
    if glance.claimed:
        scope = _checked_node_headers(forwarder, scope, method)
    if glance.replayed:
        secret = forwarder.node_secret
        opened = [
            (k, opened_replay_source(secret, v, method, scope["path"], max_age=forwarder.signature_max_age))
            if k.lower() == b"fly-replay-src"
            else (k, v)
            for k, v in scope["headers"]
        ]
        scope = {**scope, "headers": opened}
    path: str = scope["path"]
    if path.startswith(INTERNAL_PREFIX) and came_through_fly_proxy(scope):
        if not (path == HEALTH_PATH and forwarder.security.public_health):
            return Refusal(
                403,
                f"{INTERNAL_PREFIX}* is served on the private network only, not through the public proxy "
                "(Fly-Client-IP present); set FORWARDER_PUBLIC_HEALTH=true to expose /_forwarder/health",
            )
    return scope, glance


def _checked_node_headers(forwarder: Forwarder, scope: Scope, method: str) -> Scope:
    """The scope without the `forwarder-*` request headers no node signed (logged)."""
    headers, dropped = verified_headers(
        forwarder.node_secret, method, scope["path"], scope["headers"], max_age=forwarder.signature_max_age
    )
    if not dropped:
        return scope
    if forwarder.node_secret is None and any(k.lower() == NODE_SIGNATURE for k, _ in scope["headers"]):
        # A replica signed them, but this node cannot check: forwarded reads lose their reason.
        logger.warning(
            "a forwarded request arrived signed, but this node has no FORWARDER_SECRET to check it; "
            "set the same FORWARDER_SECRET on every node"
        )
    logger.info(
        "ignored node headers no node signed (%s) on %s %s",
        clean(b", ".join(dropped)),
        clean(method),
        clean(scope["path"]),
    )
    return {**scope, "headers": headers}


def sealed(
    forwarder: Forwarder, scope: Scope, replay: list[tuple[bytes, bytes]] | None
) -> list[tuple[bytes, bytes]] | None:
    """The `fly-replay` headers this node answers with, their `state=<reason>` sealed for this request
    (a state no node sealed is removed on arrival; see `opened_replay_source`)."""
    secret = forwarder.node_secret
    if replay is None or secret is None:
        return replay
    method, path = scope.get("method", "GET"), scope["path"]
    return [(k, seal_replay(secret, v, method, path)) if k == b"fly-replay" else (k, v) for k, v in replay]
