"""The live side of the board: one websocket session per page and one broadcaster per process.

The server holds the state and renders it; the browser only sends events (`post`) and swaps in
the HTML it is sent. Each node renders from its own replica and pushes a fresh render to all
its sessions whenever its replica advances, so a message written anywhere shows up on a page as
soon as the node that serves the page holds it.

Protocol of `/live` (JSON text frames):

- server → client `{"type": "render", "html": ..., "txid": ..., "node": ..., "lag": ...}` on
  connect and whenever the node's position advances (coalesced: at most one per `MIN_INTERVAL`);
- client → server `{"type": "post", "author": ..., "text": ...}`;
- server → client `{"type": "ack", "message": {...}, "txid": ...}` once this node's replica holds
  the message, or `{"type": "error", "message": ...}`; the socket stays open after an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from forwarder import Forwarder, ForwarderError, ReplicationTimeout, Txid

from .board import Message, MessageIn, post_message

__all__ = ["MIN_INTERVAL", "POLL_INTERVAL", "Broadcaster", "Frame", "LiveSession", "serve_session"]

logger = logging.getLogger("example_app.live")

MIN_INTERVAL = 0.05
"""Seconds between two renders of one node: changes arriving faster are coalesced into the next one."""

POLL_INTERVAL = 0.25
"""Seconds between checks of the position and lag, a fallback for changes no listener reported."""

MAX_EVENT_SIZE = 16 * 1024
"""Bytes of one client event; a post is at most 540 characters of content."""


def lag_for_json(lag: float) -> float:
    """Lag in seconds rounded to milliseconds; 0 for anything that is not a finite number."""
    return round(lag, 3) if math.isfinite(lag) else 0.0


@dataclass(frozen=True)
class Frame:
    """One render of the board, serialized once and sent to every session."""

    txid: Txid
    html: str
    lag: float
    node: str
    text: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        payload = {
            "type": "render",
            "html": self.html,
            "txid": str(self.txid),
            "node": self.node,
            "lag": lag_for_json(self.lag),
        }
        object.__setattr__(self, "text", json.dumps(payload))


class LiveSession:
    """One connected page: direct replies (ack, error) and coalesced renders over one websocket.

    Replies are sent by the event handler itself; renders by a writer task that always sends the
    newest one pending, so a slow browser gets fewer renders, never a growing queue. A lock keeps
    the two from interleaving frames.
    """

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._lock = anyio.Lock()
        self._pending: Frame | None = None
        self._sent: Frame | None = None
        self._wake = asyncio.Event()

    def push(self, frame: Frame) -> None:
        """Queue `frame`, replacing an older pending one. Never blocks, never sends backwards."""
        if self._pending is not None and frame.txid < self._pending.txid:
            return
        self._pending = frame
        self._wake.set()

    async def send(self, message: dict[str, Any]) -> None:
        """Send a reply now (after any frame being written)."""
        async with self._lock:
            await self.websocket.send_text(json.dumps(message))

    async def write_renders(self) -> None:
        """Send pending renders until the socket closes."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            frame, sent = self._pending, self._sent
            self._pending = None
            if frame is None:
                continue
            if sent is not None and (frame.txid < sent.txid or (frame.txid, frame.html) == (sent.txid, sent.html)):
                # Older than what the page shows (the first render raced a broadcast), which would
                # take messages away, or the same board again.
                continue
            async with self._lock:
                await self.websocket.send_text(frame.text)
            self._sent = frame


class Broadcaster:
    """Re-renders the board when this node's replica advances and pushes it to every session.

    `notify` is the engine's position listener (and is called after local writes, which on the
    primary may not move the engine by themselves). `run` renders at most once per
    `MIN_INTERVAL`, always ending with the latest state, and polls the position every
    `POLL_INTERVAL` in case a change was not reported.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        render: Callable[[], Awaitable[Frame]],
        *,
        min_interval: float = MIN_INTERVAL,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.forwarder = forwarder
        self.render = render
        self.min_interval = min_interval
        self.poll_interval = poll_interval
        self.sessions: set[LiveSession] = set()
        self.last: Frame | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self, txid: Txid | None = None) -> None:
        """Ask for a new render soon. Safe from any thread; cheap enough for every position change."""
        loop = self._loop
        if loop is None:
            return  # not running yet: the first render of each session is fresh anyway
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
            return
        try:
            loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass  # the loop closed (shutting down): nobody is left to render for

    def add(self, session: LiveSession) -> None:
        """Start pushing renders to `session`."""
        self.sessions.add(session)

    def discard(self, session: LiveSession) -> None:
        """Stop pushing renders to `session`."""
        self.sessions.discard(session)

    async def run(self) -> None:
        """Render and push on every change until cancelled (run it in the app's lifespan)."""
        self._loop = asyncio.get_running_loop()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._poll)
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    if not self.sessions:
                        # Nobody to render for: a node under write load would spend its CPU on
                        # boards no one sees. A session that joins gets a fresh render of its own.
                        continue
                    await self._render_and_push()
                    await anyio.sleep(self.min_interval)
        finally:
            self._loop = None

    async def _render_and_push(self) -> None:
        try:
            frame = await self.render()
        except Exception:
            # A failed read (the replica being restored, say) must not end live updates for good:
            # the next change or poll renders again.
            logger.exception("could not render the board")
            return
        last = self.last
        if last is not None and (frame.txid, frame.html) == (last.txid, last.html):
            return
        self.last = frame
        for session in list(self.sessions):
            session.push(frame)

    async def _poll(self) -> None:
        while True:
            await anyio.sleep(self.poll_interval)
            if not self.sessions:
                continue
            last = self.last
            if last is None:
                if self.sessions:
                    self.notify()
                continue
            lag = self.forwarder.lag()
            # A lagging replica re-renders each poll so its lag counts up; one more when it is back to 0.
            if self.forwarder.tracker.position != last.txid or lag > 0 or last.lag > 0:
                self.notify()


class _Refused(Exception):
    """A client event that cannot be handled; the message goes back to the client."""


def parse_event(message: Mapping[str, Any]) -> MessageIn:
    """The post in a websocket message, or `_Refused` saying what is wrong with it and what is expected."""
    raw = message.get("text")
    if raw is None:
        raise _Refused(
            'events are JSON text frames, not binary ones: send {"type": "post", "author": ..., "text": ...}'
        )
    if len(raw) > MAX_EVENT_SIZE:
        raise _Refused(f"event too large ({len(raw)} characters; the limit is {MAX_EVENT_SIZE})")
    try:
        event = json.loads(raw)
    except ValueError as exc:
        raise _Refused(f"event is not valid JSON ({exc})") from None
    if not isinstance(event, dict) or "type" not in event:
        raise _Refused('an event is a JSON object with a "type": send {"type": "post", "author": ..., "text": ...}')
    if event["type"] != "post":
        raise _Refused(f'unknown event type {event["type"]!r}; the only event is "post"')
    try:
        return MessageIn.model_validate(event)
    except ValidationError as exc:
        raise _Refused(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """A pydantic error as `field: reason; field: reason`."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors())


async def post_and_wait(forwarder: Forwarder, message: MessageIn) -> tuple[Message, Txid]:
    """Store `message` on the primary; return it with a txid this node's replica already holds.

    On a replica, `@primary_only` returns only once the local replica holds the write. On the
    primary the write is local; `commit_position()` ships it at once and names its txid.
    """
    try:
        stored = await post_message(message)
    except ReplicationTimeout as exc:
        stored_id = f" (id {exc.result.id})" if isinstance(exc.result, Message) else ""
        raise _Refused(
            f"your message was stored{stored_id}, but node {forwarder.topology.node_id} has not caught up with "
            f"the primary within {exc.timeout:g}s; it will appear here once it does (do not post it again)"
        ) from None
    except ForwarderError as exc:
        raise _Refused(f"could not post the message: {exc}") from None
    if forwarder.is_primary:
        try:
            return stored, await forwarder.commit_position()
        except ForwarderError:
            logger.exception("could not read the commit position after a post")
    return stored, forwarder.tracker.position


async def serve_session(websocket: WebSocket, forwarder: Forwarder, broadcaster: Broadcaster) -> None:
    """Run one `/live` session: a render on connect, then events until the browser leaves."""
    await websocket.accept()
    session = LiveSession(websocket)
    # Joined before the first render, so a change during it still reaches the page (the session
    # keeps whichever render is newer).
    broadcaster.add(session)
    try:
        session.push(await broadcaster.render())
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(session.write_renders)
            await _handle_events(session, forwarder, broadcaster)
            tasks.cancel_scope.cancel()
    except* (WebSocketDisconnect, OSError):
        # The browser left (closed the tab, lost the network) while we were sending: nothing to do.
        pass
    finally:
        broadcaster.discard(session)
        await _close(websocket)


async def _close(websocket: WebSocket) -> None:
    if websocket.application_state is not WebSocketState.CONNECTED:
        return
    if websocket.client_state is WebSocketState.DISCONNECTED:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
        try:
            await websocket.close()
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # already gone


async def _handle_events(session: LiveSession, forwarder: Forwarder, broadcaster: Broadcaster) -> None:
    websocket = session.websocket
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            event = parse_event(message)
            stored, txid = await post_and_wait(forwarder, event)
        except _Refused as refused:
            await session.send({"type": "error", "message": str(refused)})
            continue
        await session.send({"type": "ack", "message": stored.model_dump(), "txid": str(txid)})
        # This node holds the message now: re-render for everyone (the position listener may
        # already have, which makes this a no-op).
        broadcaster.notify(txid)
