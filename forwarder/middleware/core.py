"""`ForwarderMiddleware`: the pure-ASGI middleware that routes each request for its node's role."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import context
from ..channel.server import serve_channel
from ..channel.transport import CHANNEL_PATH
from ..engines.base import Role
from ..exceptions import ReplicationTimeout
from ..logsafe import clean
from ..policy import RoutingPolicy
from ..runtime import Forwarder
from ..txid import Txid
from . import headers as h
from .calls import CallTracking
from .classify import Kind, Route, classify
from .cookie import txid_in, txid_token
from .discovery import BodyRecorder, HeldErrorResponse, needs_primary, replica_unavailable
from .guard import Glance, Refusal, admit, refuse, sealed
from .hops import already_hopped, forwarded_as_write, header, later
from .internal import serve_internal
from .lifespan import run_lifespan
from .primary import serve_on_primary, stamped
from .proxy import forward_http, unavailable
from .replay import came_through_fly_proxy, replay_headers, replayable_size
from .websocket import deny_websocket, relay_websocket, supports_denial

__all__ = ["ForwarderMiddleware"]

logger = logging.getLogger("forwarder.middleware")


class ForwarderMiddleware:
    """Make a multi-node app behave as one node: reads local, writes on the primary.

    On the primary every request reaches the app; write responses carry `Forwarder-Txid` and
    the read-your-writes cookie. On a replica, reads are served locally (after waiting for the
    cookie's txid), and writes go to the primary by proxy or `fly-replay` (see `RoutingPolicy`).
    A read whose app raises SQLite's read-only error, hits a `@primary_endpoint`, or finds the
    copy unreadable (the follower's lock past the busy timeout) is forwarded before anything
    reaches the client. `/_forwarder/rpc/<name>` serves `@primary_only` calls,
    `/_forwarder/health` and `/_forwarder/metrics` report on the node.

    The middleware also starts and stops `forwarder` in the app's lifespan.

    ```python
    app = ForwarderMiddleware(Starlette(routes=routes), forwarder=Forwarder.from_settings())
    ```
    """

    def __init__(self, app: ASGIApp, *, forwarder: Forwarder, policy: RoutingPolicy | None = None) -> None:
        self.app = app
        self.forwarder = forwarder
        self.policy = policy or forwarder.policy
        # A node's id never changes (a failover changes its role): built once, not per response.
        self._node_header = [(h.NODE, forwarder.topology.node_id.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await (self._lifespan if kind == "lifespan" else self.app)(scope, receive, send)
            return
        admitted = admit(self.forwarder, scope)  # the target rule, framing, node headers
        if isinstance(admitted, Refusal):
            await refuse(scope, send, *admitted)
            return
        scope, glance = admitted
        token = context._current.set(self.forwarder)
        try:
            if kind == "websocket":
                await self._websocket(scope, receive, send)
                return
            route = classify(scope["method"], scope["path"], self.policy)
            kind = route.kind
            # The role itself, not `is_primary` (two properties deep), before every request.
            if self.forwarder.topology.role is Role.PRIMARY and (kind is Kind.READ or kind is Kind.WRITE):
                # A read that a replica sent here because its app tried to write (or hit a
                # @primary_endpoint) is a write here: it gets a txid, the cookie and the replica's wait.
                is_read = kind is Kind.READ and not forwarded_as_write(scope)
                policy = self.policy.cookie
                await serve_on_primary(
                    self.app, self.forwarder, policy, scope, receive, send, is_read=is_read, claimed=glance.claimed
                )
                return
            if kind is not Kind.READ:
                await self._http(scope, receive, send, route)
                return
            # A read on a replica, the hot path: served right here, not one coroutine further down
            # (each costs about 1.8 us a request, measured under load). The cookie's wait and a copy
            # that cannot serve are the exceptions, handled before.
            engine, stale = self.forwarder.engine, False
            wanted = self._wanted(scope, glance) if glance.cookies or glance.token is not None else None
            if (wanted is not None and wanted > self.forwarder.tracker.position) or engine.unreadable is not None:
                ready, stale = await self._before_read(scope, receive, send, wanted)
                if not ready:
                    return
            # HTTP/1 with neither Content-Length nor Transfer-Encoding has no body (RFC 9112 section
            # 6.3): nothing to keep for a second run on the primary. Others keep what the app reads.
            framed = glance.framed or scope.get("http_version") not in _HTTP1
            recorder = BodyRecorder(receive, self.policy.max_buffered_body) if framed else None
            calls = CallTracking(scope, self.policy.cookie)
            tracking = context.track_writes(calls)  # not `with calls`: two frames fewer on every read
            try:
                # The writes as of the last look: one not yet seen is then put down to this request,
                # which runs again on the primary (harmless for a read); one look fewer on the way.
                held = HeldErrorResponse(
                    send,
                    [*self._node_header, (h.STALE, b"1")] if stale else self._node_header,
                    calls,
                    engine.write_counter,
                    engine.local_writes(look=False),
                )
                try:
                    await self.app(scope, receive if recorder is None else recorder, held)
                except Exception as exc:
                    await self._read_failed(exc, scope, receive, send, recorder, held, calls)
                    return
            finally:
                context.stop_tracking(tracking)
            if held.wrote:
                held.discard()
                await self._rerun_on_primary(scope, receive, send, await _whole(recorder))
            elif held.holding:
                await held.release()
        finally:
            context._current.reset(token)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        """Internal paths, passthrough, and writes on a replica (the primary's reads and writes are
        served in `__call__`, with no coroutine of ours around the app's)."""
        if route.kind is Kind.INTERNAL:
            await serve_internal(self.forwarder, scope, receive, send)
        elif route.kind is Kind.PASSTHROUGH:
            if self.forwarder.is_primary:
                await self.app(scope, receive, stamped(send, self.forwarder.topology.node_id))
            else:
                await self._passthrough_on_replica(scope, receive, send)
        else:
            await self._forward(scope, receive, send, route.reason)

    def _wanted(self, scope: Scope, glance: Glance) -> Txid | None:
        """The txid a read must wait for: its cookie's, or its `Forwarder-Txid` (the header form of the
        cookie, for API clients that keep no cookies), the later of the two; None after a hop."""
        # A node header or a replay source this node sealed means the request made its hop already.
        if (glance.claimed or glance.replayed) and already_hopped(scope):
            return None
        wanted = txid_in(glance.cookies, self.policy.cookie.name) if glance.cookies else None
        return wanted if glance.token is None else later(wanted, txid_token(glance.token))

    async def _before_read(self, scope: Scope, receive: Receive, send: Send, wanted: Txid | None) -> tuple[bool, bool]:
        """Wait until this replica holds `wanted`; (True, stale) when the read is then served here,
        (False, _) when it was forwarded or answered instead (`on_lag`, or a copy that cannot serve)."""
        forwarder = self.forwarder
        stale = False
        if wanted is not None and wanted > forwarder.tracker.position:
            try:
                await forwarder.wait_for(wanted, cause="cookie")
            except ReplicationTimeout as exc:
                if self.policy.on_lag == "forward":
                    await self._forward(scope, receive, send, "lag")
                    return False, stale
                if self.policy.on_lag == "error":
                    await unavailable(f"{exc}", status=504, retry_after=None)(scope, receive, send)
                    return False, stale
                stale = True
        # Nothing local to read yet (first restore), or a copy the app wrote to.
        unreadable = forwarder.engine.unreadable
        if unreadable is not None:
            await self._forward(scope, receive, send, unreadable)
            return False, stale
        return True, stale

    async def _read_failed(
        self,
        exc: Exception,
        scope: Scope,
        receive: Receive,
        send: Send,
        recorder: BodyRecorder | None,
        held: HeldErrorResponse,
        calls: CallTracking,
    ) -> None:
        """The app raised `exc` serving a read here. A write (read-only error), a @primary_endpoint, or
        a copy not readable right now (the follower's lock past the busy timeout, a restore): the
        primary answers instead, if nothing was sent yet. Anything else goes out as the app's error."""
        reason = needs_primary(exc) or replica_unavailable(exc, restoring=not self.forwarder.engine.restored)
        body = None if reason is None or held.started else await _whole(recorder)
        if reason is None or body is None:
            await self._failed(exc, held, calls, scope, receive)
            return
        held.discard()
        method, path = scope["method"], clean(scope["path"])
        logger.info("%s %s needs the primary (%s); forwarding it", method, path, reason)
        await self._forward(scope, receive, send, reason, body=body)

    async def _passthrough_on_replica(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Served here, never forwarded; only a `@primary_only` call inside it shows in the response."""
        with CallTracking(scope, self.policy.cookie) as calls:
            held = HeldErrorResponse(send, self._node_header, calls)
            try:
                await self.app(scope, receive, held)
            except Exception as exc:
                await self._failed(exc, held, calls, scope, receive)
                return
        await held.release()

    async def _failed(
        self, exc: Exception, held: HeldErrorResponse, calls: CallTracking, scope: Scope, receive: Receive
    ) -> None:
        """The app raised `exc` serving a request on this replica: a `@primary_only` call that did not
        get through answers 503/504 (if nothing was sent yet); anything else goes out as the app's error."""
        answer = None if held.started else calls.failure(exc)
        if answer is None:
            await held.release()
            raise exc
        held.discard()
        await answer(scope, receive, held.passed)

    async def _rerun_on_primary(self, scope: Scope, receive: Receive, send: Send, body: bytes | None) -> None:
        """The replica's file was written while this request ran: its response is not sent; the
        request runs on the primary (with `body`, None when too large), where the write counts, and
        the local one is restored over."""
        if body is None:
            message = (
                f"the app wrote to replica {self.forwarder.topology.node_id}'s own database file, where writes are "
                "lost; the request body is too large to run it again on the primary. Open the database read-only "
                "on replicas (forwarder.sqlalchemy.create_engine or forwarder.database)"
            )
            await unavailable(message, retry_after=1)(scope, receive, send)
            return
        logger.warning(
            "%s %s: the replica's database file was written while it ran; running it on the primary instead",
            scope["method"],
            scope["path"],
        )
        await self._forward(scope, receive, send, "modified", body=body)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, reason: str, *, body: bytes | None = None
    ) -> None:
        """Send a request that must run on the primary there, by replay or by proxy."""
        forwarder = self.forwarder
        if already_hopped(scope):
            # Forwarded once and still not on the primary: the primary is changing. Another hop
            # could loop; the client retries once things settle.
            await unavailable(
                f"node {forwarder.topology.node_id} received a forwarded request but is not the primary "
                "(the primary is changing); retry shortly"
            )(scope, receive, send)
            return
        replay_failed = header(scope, b"fly-replay-failed")
        if self._replays(scope, body) and replay_failed is None:
            replay = sealed(forwarder, scope, replay_headers(forwarder.topology, self.policy, reason))
            if replay is not None:
                forwarder.metrics.forwarded("replay", reason)
                logger.info(
                    "replaying %s %s to the primary with fly-replay: %s (%s)",
                    scope["method"],
                    clean(scope["path"]),
                    replay[0][1].decode(),
                    reason,
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 409,
                        "headers": [
                            *replay,
                            (b"content-length", b"0"),
                            (h.NODE, forwarder.topology.node_id.encode()),
                            (h.FORWARDED_VIA, b"replay"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        if replay_failed is not None:
            # The Fly proxy could not reach the primary and delivered the request back here
            # (fallback); a fallback cannot replay again, so try the private network directly.
            logger.warning("fly-replay to the primary failed (%s); proxying instead", replay_failed)
        forwarder.metrics.forwarded("proxy", reason)
        await forward_http(forwarder, scope, receive, send, reason=reason, body=body)

    def _replays(self, scope: Scope, body: bytes | None) -> bool:
        mode = self.policy.mode
        if mode == "replay":
            return True
        return mode == "auto" and came_through_fly_proxy(scope) and replayable_size(scope, body)

    # -- websockets ----------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == CHANNEL_PATH:  # a replica's requests, each run through this middleware again
            await serve_channel(self, scope, receive, send, secret=self.forwarder.node_secret)
            return
        route = classify("GET", scope["path"], self.policy)
        if self.forwarder.is_primary or route.kind in (Kind.PASSTHROUGH, Kind.INTERNAL):
            await self.app(scope, receive, send)
            return
        if route.kind is Kind.WRITE:
            await self._forward_websocket(scope, receive, send, route.reason)
            return
        # Let the app run; if it turns out to be a @primary_endpoint (it raises before accepting),
        # forward the handshake instead.
        first: list[Message] = []
        sent = False

        async def recording_receive() -> Message:
            message = await receive()
            if not first:
                first.append(message)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal sent
            sent = True
            await send(message)

        try:
            await self.app(scope, recording_receive, tracking_send)
        except Exception as exc:
            reason = needs_primary(exc)
            if reason is None or sent:
                raise
            replayed = list(first)

            async def replaying_receive() -> Message:
                return replayed.pop(0) if replayed else await receive()

            await self._forward_websocket(scope, replaying_receive, send, reason)

    async def _forward_websocket(self, scope: Scope, receive: Receive, send: Send, reason: str) -> None:
        forwarder = self.forwarder
        if already_hopped(scope):
            if supports_denial(scope):
                await deny_websocket(send, 503, [(b"retry-after", b"1")], b"the primary is changing; retry shortly")
            else:
                await send({"type": "websocket.close", "code": 1013, "reason": "the primary is changing"})
            return
        wants_replay = self.policy.mode == "replay" or (self.policy.mode == "auto" and came_through_fly_proxy(scope))
        wants_replay = wants_replay and header(scope, b"fly-replay-failed") is None  # a fallback cannot replay
        replay = (
            sealed(forwarder, scope, replay_headers(forwarder.topology, self.policy, reason)) if wants_replay else None
        )
        if replay is not None and supports_denial(scope):
            # Never accept (101) on the replica: the Fly proxy replays the handshake itself.
            forwarder.metrics.forwarded("replay", reason)
            logger.info("replaying websocket %s to the primary (%s)", clean(scope["path"]), reason)
            await deny_websocket(
                send, 409, [*replay, (h.NODE, forwarder.topology.node_id.encode()), (h.FORWARDED_VIA, b"replay")]
            )
            return
        await relay_websocket(forwarder, scope, receive, send)

    # -- lifespan ------------------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        await run_lifespan(self.app, self.forwarder, scope, receive, send)


_HTTP1 = ("1.1", "1.0")


async def _whole(recorder: BodyRecorder | None) -> bytes | None:
    """The request's whole body (None when too large to keep); a request with no body has b""."""
    return b"" if recorder is None else await recorder.rest()
